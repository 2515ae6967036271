package endpoint

import (
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sockopt reads an integer socket option of c.
func sockopt(t *testing.T, c interface {
	SyscallConn() (syscall.RawConn, error)
}, level, opt int) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

func tcpConfig(t *testing.T, addr string, o TCPOptions, reuse bool) Config {
	t.Helper()
	a, err := ParseAddress(KindTCP, addr)
	if err != nil {
		t.Fatal(err)
	}
	return Config{Kind: KindTCP, Label: "tcp:" + addr, Addr: a, TCP: o, ReusePort: reuse}
}

// acceptOne listens with cfg, connects once and returns both ends.
func acceptOne(t *testing.T, cfg Config) (net.Listener, *net.TCPConn) {
	t.Helper()
	ln, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return ln, s.(*net.TCPConn)
}

// Each option is read back from the kernel, not trusted from the config.
func TestTCPSocketOptions(t *testing.T) {
	// Defaults: nodelay, keepalive after 15 s.
	_, s := acceptOne(t, tcpConfig(t, "127.0.0.1:0", TCPOptions{}, false))
	if v := sockopt(t, s, unix.IPPROTO_TCP, unix.TCP_NODELAY); v != 1 {
		t.Errorf("default TCP_NODELAY = %d", v)
	}
	if v := sockopt(t, s, unix.SOL_SOCKET, unix.SO_KEEPALIVE); v != 1 {
		t.Errorf("default SO_KEEPALIVE = %d", v)
	}
	if v := sockopt(t, s, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); v != 15 {
		t.Errorf("default TCP_KEEPIDLE = %d", v)
	}

	// Everything set.
	o := TCPOptions{Backlog: 17, Nagle: true, Keepalive: 42 * time.Second, KeepaliveInterval: 7 * time.Second, KeepaliveCount: 5}
	ln, s := acceptOne(t, tcpConfig(t, "127.0.0.1:0", o, true))
	for _, c := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 0},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 42},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 7},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 5},
	} {
		if v := sockopt(t, s, c.level, c.opt); v != c.want {
			t.Errorf("%s = %d, want %d", c.name, v, c.want)
		}
	}
	tl := tcpListenerOf(ln)
	if v := sockopt(t, tl, unix.SOL_SOCKET, unix.SO_REUSEPORT); v != 1 {
		t.Errorf("SO_REUSEPORT = %d", v)
	}
	// A listening socket's TCP_INFO holds its backlog in tcpi_sacked.
	raw, _ := tl.SyscallConn()
	var backlog uint32
	raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			backlog = info.Sacked
		}
	})
	if backlog != 17 {
		t.Errorf("backlog = %d, want 17", backlog)
	}
	// reuse_port: a second listener on the same port.
	second, err := Listen(tcpConfig(t, ln.Addr().String(), o, true))
	if err != nil {
		t.Fatalf("reuse_port: a second listener on %s: %v", ln.Addr(), err)
	}
	second.Close()

	// keepalive_interval and keepalive_count without keepalive: after
	// the default 15 s.
	_, s = acceptOne(t, tcpConfig(t, "127.0.0.1:0", TCPOptions{KeepaliveInterval: 7 * time.Second, KeepaliveCount: 5}, false))
	for opt, want := range map[int]int{unix.TCP_KEEPIDLE: 15, unix.TCP_KEEPINTVL: 7, unix.TCP_KEEPCNT: 5} {
		if v := sockopt(t, s, unix.IPPROTO_TCP, opt); v != want {
			t.Errorf("keepalive_interval and keepalive_count alone: option %d = %d, want %d", opt, v, want)
		}
	}

	// keepalive = "0s": off.
	_, s = acceptOne(t, tcpConfig(t, "127.0.0.1:0", TCPOptions{Keepalive: -1}, false))
	if v := sockopt(t, s, unix.SOL_SOCKET, unix.SO_KEEPALIVE); v != 0 {
		t.Errorf("SO_KEEPALIVE with keepalive off = %d", v)
	}
}

// v6only on [::]: IPv6 only; without it, dual stack.
func TestV6Only(t *testing.T) {
	for _, v6only := range []bool{false, true} {
		ln, err := Listen(tcpConfig(t, "[::]:0", TCPOptions{V6Only: v6only}, false))
		if err != nil {
			t.Skipf("no IPv6: %v", err)
		}
		if v := sockopt(t, tcpListenerOf(ln), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); (v == 1) != v6only {
			t.Errorf("v6only=%v: IPV6_V6ONLY = %d", v6only, v)
		}
		ln.Close()
	}
}

func tcpListenerOf(ln net.Listener) *net.TCPListener {
	if l, ok := ln.(*tcpListener); ok {
		return l.TCPListener
	}
	return ln.(*net.TCPListener)
}
