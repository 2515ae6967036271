package endpoint

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// setsockoptInt is syscall.SetsockoptInt, which a test replaces.
var setsockoptInt = syscall.SetsockoptInt

// setAcceptedOptions puts on a listening socket the options every
// connection it accepts should have, as net.ListenConfig sets them on each
// after accept: TCP_NODELAY unless nagle, and keepalive. An option the
// socket refuses as not supported is left out, as net ignores it on each
// connection.
func setAcceptedOptions(ln *net.TCPListener, nagle bool, ka net.KeepAliveConfig) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	set := func(fd uintptr, level, opt, v int) {
		err := setsockoptInt(int(fd), level, opt, v)
		if err == syscall.EOPNOTSUPP || err == syscall.ENOPROTOOPT {
			// The socket does not have the option (a Multipath TCP
			// one on an older kernel): nor do the connections it
			// accepts, through net or not.
			err = nil
		}
		if serr == nil {
			serr = err
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
			set(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 0) // a retuned listener's may be on
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

// explicitKeepalive replaces a keepalive interval or count left to the
// kernel (-1) by the kernel's value, so that setting ka on a socket that
// had others (a connection net accepted with a listener's first options)
// leaves none of them behind.
func explicitKeepalive(ka net.KeepAliveConfig) (net.KeepAliveConfig, error) {
	if !ka.Enable {
		return ka, nil
	}
	if ka.Interval < 0 {
		secs, err := kernelInt("/proc/sys/net/ipv4/tcp_keepalive_intvl")
		if err != nil {
			return ka, err
		}
		ka.Interval = time.Duration(secs) * time.Second
	}
	if ka.Count < 0 {
		n, err := kernelInt("/proc/sys/net/ipv4/tcp_keepalive_probes")
		if err != nil {
			return ka, err
		}
		ka.Count = n
	}
	return ka, nil
}

// kernelInt reads a sysctl holding one integer.
func kernelInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
