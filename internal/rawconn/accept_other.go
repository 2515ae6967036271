//go:build !linux

package rawconn

import (
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/superd-dev/superd/framework"
)

// Supported reports whether Accept works here.
const Supported = false

// Listener is not available here: connections come from
// net.Listener.Accept.
type Listener struct {
	isUnix      bool
	laddr, addr net.Addr
}

// NewListener fails here: see Supported.
func NewListener(ln syscall.Conn, isUnix bool, laddr net.Addr) (*Listener, error) {
	return nil, errors.ErrUnsupported
}

func (l *Listener) SetDeadline(t time.Time) error { return errors.ErrUnsupported }
func (l *Listener) Close() error                  { return errors.ErrUnsupported }
func (l *Listener) Accept() (*Conn, error)        { return nil, errors.ErrUnsupported }

func peerCred(c *Conn) (framework.PeerCred, bool) { return framework.PeerCred{}, false }

type tcpOptions struct{}

func getTCPOptions(fd int) tcpOptions             { return tcpOptions{} }
func setTCPOptions(sc syscall.Conn, o tcpOptions) {}

func dupCloexec(fd int) (int, error) { return -1, errors.ErrUnsupported }

func localAddr(fd int, isUnix bool) net.Addr { return nil }
