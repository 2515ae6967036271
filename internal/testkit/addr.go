package testkit

import (
	"net"
	"sync"
	"testing"
)

// handedOut holds the addresses FreeAddr and FreeAddrOn have returned, by
// network.
var handedOut sync.Map

// FreeAddr returns a loopback address, 127.0.0.1:PORT, whose port was
// free on network ("tcp" or "udp") a moment ago, for a configuration to
// listen on. The kernel may offer a port again once it is free, so an
// address is never handed out twice in one test binary: two endpoints (or
// an endpoint and a metrics address) of one test once got the same port.
func FreeAddr(t testing.TB, network string) string {
	t.Helper()
	return freeAddr(t, network, "127.0.0.1", false)
}

// FreeAddrOn is FreeAddr on host (such as "::1"), as host:port. When
// nothing can listen on host, such as ::1 on a machine without IPv6, the
// test is skipped.
func FreeAddrOn(t testing.TB, network, host string) string {
	t.Helper()
	return freeAddr(t, network, host, true)
}

func freeAddr(t testing.TB, network, host string, skip bool) string {
	t.Helper()
	fail := t.Fatalf
	if skip {
		fail = t.Skipf
	}
	for range 1000 {
		var addr string
		switch network {
		case "tcp":
			ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
			if err != nil {
				fail("no tcp on %s: %v", host, err)
			}
			addr = ln.Addr().String()
			ln.Close()
		case "udp":
			pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
			if err != nil {
				fail("no udp on %s: %v", host, err)
			}
			addr = pc.LocalAddr().String()
			pc.Close()
		default:
			t.Fatalf("FreeAddr: network %q, want tcp or udp", network)
		}
		if _, dup := handedOut.LoadOrStore(network+"/"+addr, true); !dup {
			return addr
		}
	}
	t.Fatalf("no free %s port on %s that was not handed out already", network, host)
	return ""
}
