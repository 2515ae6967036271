package endpoint

import (
	"net"
	"syscall"
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
	case *tcpListener:
		if l.adopted {
			return nil, false, nil, false
		}
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
