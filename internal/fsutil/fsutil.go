// Package fsutil reads the files a configuration names, for the packages
// that check them at validate and use them at start (config, endpoint), so
// both read them alike.
package fsutil

import (
	"errors"
	"io"
	"io/fs"
	"os"
)

// ReadRegularFile reads a regular file of at most limit bytes. Anything
// else (a folder, a device, a FIFO) is an error, so a configuration can
// never make superd block or read without end. Errors read "PATH: cause",
// "PATH is not a regular file" or "PATH is too large".
func ReadRegularFile(path string, limit int64) ([]byte, error) {
	// Look before opening: opening a FIFO blocks until a writer comes.
	if fi, err := os.Stat(path); err != nil {
		return nil, describeError(path, err)
	} else if !fi.Mode().IsRegular() {
		return nil, errors.New(path + " is not a regular file")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, describeError(path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, describeError(path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New(path + " is not a regular file")
	}
	if fi.Size() > limit {
		return nil, errors.New(path + " is too large")
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, describeError(path, err)
	}
	if int64(len(data)) > limit {
		return nil, errors.New(path + " is too large")
	}
	return data, nil
}

// describeError turns an *fs.PathError into "PATH: cause" without the name
// of the system call.
func describeError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return errors.New(path + ": " + pe.Err.Error())
	}
	return err
}
