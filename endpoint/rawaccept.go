package endpoint

import (
	"net"
	"syscall"
	"time"
)

// RawListener returns the listening socket of a listener Listen opened,
// for accepting connections as bare descriptors (see package rawconn),
// with what those need to know: whether it is a unix socket, and the local
// address every connection shares (nil when the listener is bound to a
// wildcard address, where each connection has its own). ok is false for a
// listener passed by the service manager (its accepted connections get
// their options one by one; see AdoptTCP).
//
// Listen sets the options of accepted connections (TCP_NODELAY and
// keepalive) on the listening socket itself, from which the kernel copies
// them to every connection it accepts, so a bare descriptor needs no
// system call of its own to get them.
func RawListener(ln net.Listener) (sc syscall.Conn, isUnix bool, laddr net.Addr, ok bool) {
	switch l := ln.(type) {
	case *net.TCPListener:
		sc = l
	case nagleListener:
		sc = l.TCPListener
	case *UnixListener:
		sc, isUnix = l.UnixListener, true
	case *net.UnixListener:
		sc, isUnix = l, true
	default:
		return nil, false, nil, false
	}
	laddr = ln.Addr()
	if ta, isTCP := laddr.(*net.TCPAddr); isTCP && ta.IP.IsUnspecified() {
		laddr = nil
	}
	return sc, isUnix, laddr, true
}

// setAcceptedOptions puts on a listening socket the options every
// connection it accepts should have, as net.ListenConfig sets them on each
// after accept: TCP_NODELAY unless nagle, and keepalive.
func setAcceptedOptions(ln *net.TCPListener, nagle bool, ka net.KeepAliveConfig) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	set := func(fd uintptr, level, opt, v int) {
		if serr == nil {
			serr = syscall.SetsockoptInt(int(fd), level, opt, v)
		}
	}
	secs := func(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }
	if err := rc.Control(func(fd uintptr) {
		nodelay := 1
		if nagle {
			nodelay = 0
		}
		set(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, nodelay)
		if !ka.Enable {
			return
		}
		set(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1)
		if ka.Idle > 0 {
			set(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, secs(ka.Idle))
		}
		if ka.Interval > 0 {
			set(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, secs(ka.Interval))
		}
		if ka.Count > 0 {
			set(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, ka.Count)
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &net.OpError{Op: "set", Net: NetworkTCP, Addr: ln.Addr(), Err: serr}
	}
	return nil
}
