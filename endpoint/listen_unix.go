//go:build unix

package endpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenBacklog is the backlog asked of listen(2); the kernel caps it at
// its own limit (net.core.somaxconn on Linux, kern.ipc.somaxconn on the
// BSDs), so asking for much gets the system's maximum. It fits in 16 bits,
// which older kernels truncated the value to.
const listenBacklog = 65535

// testHookBound, when set (by tests), runs between bind and the setting of
// the socket file's owner and mode: it may swap the path for something
// else.
var testHookBound func(path string)

// UnixListener is the listener of a unix endpoint: a *net.UnixListener
// that remembers which file it created (device and inode), so it changes
// the owner and mode of, and removes, that file and nothing else.
//
// The path is only a name, and whoever can write to its folder can replace
// what it names at any moment: with a symbolic link to a file superd must
// not touch, or with someone else's socket. So owner and mode are never
// set through a symbolic link, and the socket file is removed at Close
// only if the path still names the socket bound here.
type UnixListener struct {
	*net.UnixListener
	path       string
	id         fileID
	unlinkOnce sync.Once
}

// Close closes the listener, then removes its socket file if the path
// still names it (a file put in its place since is left alone). A socket
// file it cannot remove (superd dropped root since it made it, and may
// not write to its folder) is reported, wrapping ErrSocketFileLeft.
func (l *UnixListener) Close() error {
	err := l.UnixListener.Close()
	l.unlinkOnce.Do(func() {
		rerr := removeIfSocket(l.path, l.id)
		if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && !errors.Is(rerr, ErrReplaced) {
			err = errors.Join(err, fmt.Errorf("%w: %w", ErrSocketFileLeft, rerr))
		}
	})
	return err
}

// SetFileAttrs gives the socket file cfg's owner, group and mode as Listen
// did: never through a symbolic link, and only if the path still names
// this listener's socket. A reload that keeps the socket and changes them
// calls it (an owner or group left out keeps the file's). Only what
// differs is changed, so attributes the file has already need no
// permission (superd may have dropped root since it bound the socket).
//
// restore puts back what it changed (nil when it changed nothing), for a
// reload undone after it.
func (l *UnixListener) SetFileAttrs(cfg Config) (restore func() error, err error) {
	prev, changed, err := setSocketAttrs(l.path, cfg.fileAttrs(), l.id)
	if err != nil || !changed {
		return nil, err
	}
	return func() error {
		_, _, err := setSocketAttrs(l.path, prev, l.id)
		return err
	}, nil
}

// bindUnix creates the unix socket at path with the given owner and mode
// and returns its listener.
//
// net.ListenUnix binds and listens in one call, leaving a window where the
// socket exists, accepts connections (which would be queued for us to
// accept later) and has the owner and mode the process and its umask gave
// it. Changing the umask is no cure: it is process-wide and other
// goroutines create files. So the socket is made by hand in three steps:
// bind (creates the file), set its owner and mode (see setSocketAttrs),
// listen. Until listen(2) nobody can connect, whatever the file's owner and
// mode; a client trying then gets "connection refused", as if the server
// had not started.
func bindUnix(path string, attrs fileAttrs) (_ net.Listener, err error) {
	// Create the descriptor close-on-exec, as package net does, with the
	// fork lock held so a concurrent fork cannot inherit it.
	syscall.ForkLock.RLock()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), path) // owns fd from now on
	defer f.Close()                    // net.FileListener works on a duplicate

	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, os.NewSyscallError("bind", err)
	}
	if testHookBound != nil {
		testHookBound(path)
	}
	// The socket file is the one found at path now: its identity, taken
	// here, is what later changes and the removal check against. (Nothing
	// tells which file a unix socket is bound to: fstat of the socket
	// describes the socket, not the file.)
	id, err := setSocketAttrsID(path, attrs)
	if id != (fileID{}) {
		defer func() {
			if err != nil {
				removeSocketFile(path, id)
			}
		}()
	}
	if err != nil {
		return nil, err
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		return nil, os.NewSyscallError("listen", err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok { // cannot happen for an AF_UNIX stream socket
		ln.Close()
		return nil, errors.New("not a unix listener")
	}
	// A listener made from a file does not remove its socket file at
	// Close; UnixListener does, after checking it is still this one.
	return &UnixListener{UnixListener: ul, path: path, id: id}, nil
}

// fileID identifies a file: its device and inode.
type fileID struct{ dev, ino uint64 }

// checkSocket returns the identity of the file st describes, which must
// be a socket, and when want is not zero the very socket want identifies.
func checkSocket(st *unix.Stat_t, want fileID) (fileID, error) {
	id := fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}
	if uint32(st.Mode)&unix.S_IFMT != unix.S_IFSOCK || want != (fileID{}) && id != want {
		return fileID{}, ErrReplaced
	}
	return id, nil
}

// openDir opens the folder of path for the *at system calls, and returns
// it with the file's name in it. Checking and acting relative to one open
// folder means both act on the same folder, even if a component of the
// path is swapped in between.
func openDir(path string) (dirfd int, name string, err error) {
	dirfd, err = unix.Open(filepath.Dir(path), dirOpenFlags|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", &fs.PathError{Op: "open", Path: filepath.Dir(path), Err: err}
	}
	return dirfd, filepath.Base(path), nil
}

// setSocketAttrs sets the owner and group (those attrs changes) and the
// mode of the socket file at path without ever following a symbolic link.
// The file must be the socket want identifies. It returns the owner,
// group and mode the file had, and whether any of them changed.
func setSocketAttrs(path string, attrs fileAttrs, want fileID) (prev fileAttrs, changed bool, err error) {
	_, prev, err = setSocketAttrsPath(path, attrs, want)
	if err != nil {
		return fileAttrs{}, false, err
	}
	chown, chmod := attrs.changes(prev)
	return prev, chown || chmod, nil
}

// setSocketAttrsID sets the owner, group and mode of the socket file just
// bound at path (any socket will do) and returns its identity.
func setSocketAttrsID(path string, attrs fileAttrs) (fileID, error) {
	id, _, err := setSocketAttrsPath(path, attrs, fileID{})
	return id, err
}

// setSocketAttrsPath sets the owner and group (those attrs changes) and
// the mode of the socket file at path without ever following a symbolic
// link, and returns the file's identity and the attributes it had. When
// want is not zero, the file must be the socket it identifies; otherwise
// any socket will do (the one just bound). When the file is that socket
// but a change fails, the error comes with its identity.
func setSocketAttrsPath(path string, attrs fileAttrs, want fileID) (fileID, fileAttrs, error) {
	dirfd, name, err := openDir(path)
	if err != nil {
		return fileID{}, fileAttrs{}, err
	}
	defer unix.Close(dirfd)
	id, prev, op, err := setSocketAttrsAt(dirfd, name, attrs, want)
	switch {
	case errors.Is(err, ErrReplaced):
		what := "its mode"
		if attrs.chown() {
			what = "its owner or mode"
		}
		return fileID{}, fileAttrs{}, fmt.Errorf("%s %w; not changing %s", path, err, what)
	case err != nil:
		return id, prev, &fs.PathError{Op: op, Path: path, Err: err}
	}
	return id, prev, nil
}

// attrsOf is the owner, group and mode of the file st describes.
func attrsOf(st *unix.Stat_t) fileAttrs {
	return fileAttrs{mode: fs.FileMode(st.Mode & 0o777), uid: int(st.Uid), gid: int(st.Gid)}
}

// changes reports whether giving a file with the attributes cur those of
// a needs a chown (an owner or group a sets that cur has not) and a chmod
// (another mode). A chown is followed by a chmod in any case (it may clear
// mode bits).
func (a fileAttrs) changes(cur fileAttrs) (chown, chmod bool) {
	chown = a.uid >= 0 && a.uid != cur.uid || a.gid >= 0 && a.gid != cur.gid
	return chown, a.mode.Perm() != cur.mode.Perm()
}

// removeSocketFile removes the socket file at path if it is still the one
// want identifies, and reports whether it did. Anything else there (a file
// or another socket put in its place) is left alone.
func removeSocketFile(path string, want fileID) bool {
	return removeIfSocket(path, want) == nil
}

// removeIfSocket removes path if it is the socket file want identifies;
// ErrReplaced (wrapped) if it is something else.
func removeIfSocket(path string, want fileID) error {
	dirfd, name, err := openDir(path)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if _, err := checkSocket(&st, want); err != nil {
		return fmt.Errorf("%s %w", path, err)
	}
	// Between the check and here, only someone who may write to the folder
	// can swap the entry, and they could remove it themselves.
	if err := unix.Unlinkat(dirfd, name, 0); err != nil {
		return &fs.PathError{Op: "remove", Path: path, Err: err}
	}
	return nil
}

// removeIfSame removes the socket file at path if it is still the file fi
// (from Lstat) describes.
func removeIfSame(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("no file identity")
	}
	return removeIfSocket(path, fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)})
}

// reusePort sets SO_REUSEPORT on a socket before it binds.
func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_REUSEPORT", serr)
}

// setListenerOptions sets what must be set before bind.
func setListenerOptions(c syscall.RawConn, reuse, v6only bool) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if reuse {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				serr = os.NewSyscallError("setsockopt SO_REUSEPORT", serr)
				return
			}
		}
		if v6only {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); serr != nil {
				serr = os.NewSyscallError("setsockopt IPV6_V6ONLY", serr)
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// setBacklog calls listen(2) again with the backlog asked for: on a
// listening socket that only changes its queue length.
func setBacklog(ln *net.TCPListener, backlog int) error {
	raw, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := raw.Control(func(fd uintptr) { lerr = unix.Listen(int(fd), backlog) }); err != nil {
		return err
	}
	return os.NewSyscallError("listen", lerr)
}
