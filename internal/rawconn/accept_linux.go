package rawconn

import (
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"

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
	laddr  net.Addr // every connection's, or nil (a wildcard address)
	addr   net.Addr // the listener's own

	// What one accept4 gives, filled by acceptFn (made once, so an accept
	// allocates nothing but the connection and its address). Accept is
	// called by one goroutine at a time.
	acceptFn func(fd uintptr) bool
	nfd      int
	rsa      syscall.RawSockaddrAny
	aerr     error
}

// NewListener makes a Listener of ln's socket. laddr is every
// connection's local address, or nil to ask the kernel for each (a
// listener bound to a wildcard address).
func NewListener(ln syscall.Conn, isUnix bool, laddr net.Addr) (*Listener, error) {
	var addr net.Addr
	if a, ok := ln.(interface{ Addr() net.Addr }); ok {
		addr = a.Addr()
	}
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
	l := &Listener{f: f, rc: rc, isUnix: isUnix, laddr: laddr, addr: addr}
	l.acceptFn = l.accept4
	return l, nil
}

// SetDeadline bounds Accept's wait; a zero time clears it.
func (l *Listener) SetDeadline(t time.Time) error { return l.f.SetReadDeadline(t) }

// Close closes the duplicate descriptor (the listener stays open), ending
// an Accept in progress with an error.
func (l *Listener) Close() error { return l.f.Close() }

// Accept accepts one connection, waiting in the runtime's poller until
// one is queued. One goroutine at a time may call it.
func (l *Listener) Accept() (*Conn, error) {
	l.nfd, l.aerr = -1, nil
	l.rsa = syscall.RawSockaddrAny{} // what the kernel does not fill reads as zeros, as for net
	err := l.rc.Read(l.acceptFn)
	if err == nil && l.aerr != nil {
		err = os.NewSyscallError("accept4", l.aerr)
	}
	if err != nil {
		if errors.Is(err, os.ErrClosed) || err.Error() == errFileClosing {
			err = net.ErrClosed
		}
		return nil, &net.OpError{Op: "accept", Net: network(l.isUnix), Addr: l.laddr, Err: err}
	}
	c := &Conn{fd: int32(l.nfd), ln: l}
	if l.isUnix {
		c.raddr = unixAddr(&l.rsa)
	} else {
		c.raddr = tcpAddr(&l.rsa)
	}
	return c, nil
}

// localAddr asks the kernel for a connection's local address; nil if it
// cannot tell.
func localAddr(fd int, isUnix bool) net.Addr {
	var lsa syscall.RawSockaddrAny
	n := uint32(syscall.SizeofSockaddrAny)
	if _, _, e := syscall.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&lsa)), uintptr(unsafe.Pointer(&n))); e != 0 {
		return nil
	}
	if isUnix {
		return unixAddr(&lsa)
	}
	return tcpAddr(&lsa)
}

// accept4 is the Listener's acceptFn: false to wait for a connection.
func (l *Listener) accept4(fd uintptr) bool {
	for {
		n := uint32(syscall.SizeofSockaddrAny)
		r, _, e := syscall.Syscall6(unix.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&l.rsa)), uintptr(unsafe.Pointer(&n)),
			syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			l.nfd = int(r)
			return true
		case syscall.EINTR, syscall.ECONNABORTED:
			continue // as net does: the next one
		case syscall.EAGAIN:
			return false
		}
		l.aerr = e
		return true
	}
}

// tcpOptions are a TCP socket's options that net sets on what it makes
// of a descriptor (see Conn.Standard), in tcpOptionNames' order; -1: one
// the socket does not have (a Multipath TCP socket on an older kernel).
type tcpOptions [5]int

var tcpOptionNames = [5][2]int{
	{syscall.IPPROTO_TCP, syscall.TCP_NODELAY},
	{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT},
}

func getTCPOptions(fd int) (o tcpOptions) {
	for i, n := range tcpOptionNames {
		v, err := syscall.GetsockoptInt(fd, n[0], n[1])
		if err != nil {
			v = -1
		}
		o[i] = v
	}
	return o
}

// setTCPOptions gives sc the options o, as far as it has them (net
// ignores what the kernel refuses too).
func setTCPOptions(sc syscall.Conn, o tcpOptions) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		for i, n := range tcpOptionNames {
			if o[i] >= 0 {
				syscall.SetsockoptInt(int(fd), n[0], n[1], o[i])
			}
		}
	})
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

// tcpAddr is the address net gives a TCP connection for rsa.
func tcpAddr(rsa *syscall.RawSockaddrAny) net.Addr {
	p := &tcpPeer{}
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(rsa))
		p.addr.IP = p.ip[:copy(p.ip[:], sa.Addr[:])]
		p.addr.Port = port(sa.Port)
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(rsa))
		p.addr.IP = p.ip[:copy(p.ip[:], sa.Addr[:])]
		p.addr.Port = port(sa.Port)
		if sa.Scope_id != 0 {
			p.addr.Zone = zoneName(int(sa.Scope_id))
		}
	default:
		return nil
	}
	return &p.addr
}

// port turns a port in network byte order into a number.
func port(p uint16) int {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return int(b[0])<<8 | int(b[1])
}

// zoneName is the interface name of a link-local address's zone, or its
// index where the interface is gone, as net names it.
func zoneName(index int) string {
	if ifi, err := net.InterfaceByIndex(index); err == nil {
		return ifi.Name
	}
	return strconv.Itoa(index)
}

// unixAddr is the address net gives a unix connection for rsa (read as
// syscall reads it: a leading NUL, an abstract name or an unnamed
// socket's empty one, shows as "@", and the name runs to the first NUL).
func unixAddr(rsa *syscall.RawSockaddrAny) net.Addr {
	if rsa.Addr.Family != syscall.AF_UNIX {
		return nil
	}
	path := (*syscall.RawSockaddrUnix)(unsafe.Pointer(rsa)).Path[:]
	b := make([]byte, 0, 16)
	for i, c := range path {
		if c == 0 {
			if i > 0 {
				break
			}
			c = '@'
		}
		b = append(b, byte(c))
	}
	return &net.UnixAddr{Name: string(b), Net: "unix"}
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
