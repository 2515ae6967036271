//go:build !unix

package endpoint

import (
	"io/fs"
	"net"
	"os"
)

// bindUnix, where the socket cannot be bound, chmod-ed and then put to
// listen step by step, binds and listens in one call and sets the mode
// right after: a client could connect in between, under the mode the
// system gave the file.
func bindUnix(path string, mode fs.FileMode) (net.Listener, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
