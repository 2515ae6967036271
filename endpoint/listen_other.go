//go:build !unix

package endpoint

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"syscall"
)

// bindUnix, where the socket cannot be bound, chmod-ed and then put to
// listen step by step, binds and listens in one call and sets the mode
// right after: a client could connect in between, under the mode the
// system gave the file. These systems have no file owners to give.
func bindUnix(path string, attrs fileAttrs) (net.Listener, error) {
	if attrs.chown() {
		return nil, errors.New("owner and group of a socket file need a unix system")
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, attrs.mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// removeIfSame removes the stale socket file at path (these systems give
// no identity to compare fi with).
func removeIfSame(path string, fi fs.FileInfo) error { return os.Remove(path) }

// reusePort: SO_REUSEPORT is a unix socket option.
func reusePort(network, address string, c syscall.RawConn) error {
	return errors.New("reuse_port is not supported on this system")
}

func setListenerOptions(c syscall.RawConn, reuse, v6only bool) error {
	if reuse || v6only {
		return errors.New("reuse_port and v6only are not supported on this system")
	}
	return nil
}

func setBacklog(ln *net.TCPListener, backlog int) error { return nil }
