//go:build unix

package endpoint

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenBacklog is the backlog asked of listen(2); the kernel caps it at
// its own limit (net.core.somaxconn on Linux, kern.ipc.somaxconn on the
// BSDs), so asking for much gets the system's maximum. It fits in 16 bits,
// which older kernels truncated the value to.
const listenBacklog = 65535

// bindUnix creates the unix socket at path with the given mode and returns
// its listener.
//
// net.ListenUnix binds and listens in one call, leaving a window where the
// socket exists, accepts connections (which would be queued for us to
// accept later) and has the mode the umask gave it. Changing the umask is no
// cure: it is process-wide and other goroutines create files. So the socket
// is made by hand in three steps: bind (creates the file), chmod, listen.
// Until listen(2) nobody can connect, whatever the file's mode; a client
// trying then gets "connection refused", as if the server had not started.
func bindUnix(path string, mode fs.FileMode) (_ net.Listener, err error) {
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
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := os.Chmod(path, mode); err != nil {
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
	// Listeners made from a file do not remove their socket file at Close;
	// this one created it, so it does.
	ul.SetUnlinkOnClose(true)
	return ul, nil
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
