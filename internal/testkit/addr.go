package testkit

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
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
	if network != "tcp" && network != "udp" {
		t.Fatalf("FreeAddr: network %q, want tcp or udp", network)
	}
	// The kernel's own choice (port 0) is a port of the ephemeral range,
	// which every outgoing connection on the machine draws from too: a
	// client socket of another test could take it before the
	// configuration listens on it (seen: a NATS route port "already in
	// use"). Ports below that range are only ever taken by listeners.
	lo, hi := portsBelowEphemeral()
	for i := range 1000 {
		port := "0"
		if hi > lo && i < 900 {
			port = strconv.Itoa(lo + rand.IntN(hi-lo))
		}
		var addr string
		switch network {
		case "tcp":
			ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
			if err != nil {
				if port != "0" {
					continue // taken: another
				}
				fail("no tcp on %s: %v", host, err)
			}
			addr = ln.Addr().String()
			ln.Close()
		case "udp":
			pc, err := net.ListenPacket("udp", net.JoinHostPort(host, port))
			if err != nil {
				if port != "0" {
					continue
				}
				fail("no udp on %s: %v", host, err)
			}
			addr = pc.LocalAddr().String()
			pc.Close()
		}
		if _, dup := handedOut.LoadOrStore(network+"/"+addr, true); !dup {
			return addr
		}
	}
	t.Fatalf("no free %s port on %s that was not handed out already", network, host)
	return ""
}

// portsBelowEphemeral is the range [lo, hi) of ports FreeAddr picks from:
// from 20000 up to the start of the kernel's ephemeral range (Linux:
// net.ipv4.ip_local_port_range). lo == hi where that range is unknown or
// starts too low, and FreeAddr then takes the kernel's choice.
var portsBelowEphemeral = sync.OnceValues(func() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0
	}
	first, err := strconv.Atoi(f[0])
	if err != nil || first < 21000 {
		return 0, 0
	}
	return 20000, first
})
