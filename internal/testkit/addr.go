package testkit

import (
	"net"
	"sync"
	"testing"
)

// handedOut holds the addresses FreeAddr has returned, by network.
var handedOut sync.Map

// FreeAddr returns a loopback address (127.0.0.1:PORT) whose port was free
// on network ("tcp" or "udp") a moment ago, for a configuration to listen
// on. The kernel may offer a port again once it is free, so an address is
// never handed out twice in one test binary: two endpoints (or an
// endpoint and a metrics address) of one test once got the same port.
func FreeAddr(t testing.TB, network string) string {
	t.Helper()
	for range 1000 {
		var addr string
		switch network {
		case "tcp":
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr = ln.Addr().String()
			ln.Close()
		case "udp":
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
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
	t.Fatalf("no free loopback %s port that was not handed out already", network)
	return ""
}
