package rawconn

import (
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
)

// Supported reports whether Accept works here.
const Supported = true

// Listener accepts connections from a listening socket as bare
// descriptors. It waits on a duplicate of the listener's descriptor,
// which the runtime's poller watches as a file (a listener's own RawConn
// cannot wait), so its deadline and Close are its own: the listener's do
// not reach it.
type Listener struct {
	f      *os.File
	rc     syscall.RawConn
	isUnix bool
	laddr  net.Addr
}

// NewListener makes a Listener of ln's socket. laddr is every
// connection's local address, or nil to ask the kernel for each (a
// listener bound to a wildcard address).
func NewListener(ln syscall.Conn, isUnix bool, laddr net.Addr) (*Listener, error) {
	lrc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	dfd, derr := -1, error(nil)
	if err := lrc.Control(func(fd uintptr) {
		dfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("dup", derr)
	}
	// The duplicate shares the listener's non-blocking mode, so NewFile
	// puts it in the runtime's poller.
	f := os.NewFile(uintptr(dfd), "listener")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Listener{f: f, rc: rc, isUnix: isUnix, laddr: laddr}, nil
}

// SetDeadline bounds Accept's wait; a zero time clears it.
func (l *Listener) SetDeadline(t time.Time) error { return l.f.SetReadDeadline(t) }

// Close closes the duplicate descriptor (the listener stays open), ending
// an Accept in progress with an error.
func (l *Listener) Close() error { return l.f.Close() }

// Accept accepts one connection, waiting in the runtime's poller until
// one is queued.
func (l *Listener) Accept() (*Conn, error) {
	var (
		nfd  int
		sa   syscall.Sockaddr
		aerr error
	)
	err := l.rc.Read(func(fd uintptr) bool {
		for {
			nfd, sa, aerr = syscall.Accept4(int(fd), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
			switch aerr {
			case syscall.EINTR, syscall.ECONNABORTED:
				continue // as net does: the next one
			case syscall.EAGAIN:
				return false
			}
			return true
		}
	})
	if err == nil && aerr != nil {
		err = os.NewSyscallError("accept4", aerr)
	}
	if err != nil {
		if errors.Is(err, os.ErrClosed) || err.Error() == errFileClosing {
			err = net.ErrClosed
		}
		return nil, &net.OpError{Op: "accept", Net: network(l.isUnix), Addr: l.laddr, Err: err}
	}
	c := &Conn{fd: int32(nfd), isUnix: l.isUnix, laddr: l.laddr}
	if l.isUnix {
		c.raddr = unixAddr(sa)
		if l.laddr == nil {
			if lsa, err := syscall.Getsockname(nfd); err == nil {
				c.laddr = unixAddr(lsa)
			}
		}
	} else {
		c.raddr = tcpAddr(sa)
		if l.laddr == nil {
			if lsa, err := syscall.Getsockname(nfd); err == nil {
				c.laddr = tcpAddr(lsa)
			}
		}
	}
	return c, nil
}

func dupCloexec(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }

// errFileClosing is the text of the error a closed *os.File's RawConn
// returns (internal/poll's ErrFileClosing, which os does not export).
const errFileClosing = "use of closed file"

func network(isUnix bool) string {
	if isUnix {
		return "unix"
	}
	return "tcp"
}

// tcpPeer is a *net.TCPAddr and its IP's bytes in one allocation.
type tcpPeer struct {
	addr net.TCPAddr
	ip   [16]byte
}

// tcpAddr is the address net gives a TCP connection for sa.
func tcpAddr(sa syscall.Sockaddr) net.Addr {
	p := &tcpPeer{}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		p.addr.IP = p.ip[:copy(p.ip[:], sa.Addr[:])]
		p.addr.Port = sa.Port
	case *syscall.SockaddrInet6:
		p.addr.IP = p.ip[:copy(p.ip[:], sa.Addr[:])]
		p.addr.Port = sa.Port
		if sa.ZoneId != 0 {
			p.addr.Zone = zoneName(int(sa.ZoneId))
		}
	default:
		return nil
	}
	return &p.addr
}

// zoneName is the interface name of a link-local address's zone, or its
// index where the interface is gone, as net names it.
func zoneName(index int) string {
	if ifi, err := net.InterfaceByIndex(index); err == nil {
		return ifi.Name
	}
	return strconv.Itoa(index)
}

// unixAddr is the address net gives a unix connection for sa.
func unixAddr(sa syscall.Sockaddr) net.Addr {
	if s, ok := sa.(*syscall.SockaddrUnix); ok {
		return &net.UnixAddr{Name: s.Name, Net: "unix"}
	}
	return nil
}

func peerCred(c *Conn) (framework.PeerCred, bool) {
	var (
		u    *unix.Ucred
		uerr error
	)
	if err := c.control(func(fd uintptr) {
		u, uerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || uerr != nil {
		return framework.PeerCred{}, false
	}
	return framework.PeerCred{UID: u.Uid, GID: u.Gid, PID: u.Pid}, true
}
