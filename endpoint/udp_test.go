//go:build unix

package endpoint

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

func listenUDP(t *testing.T, cfg Config) *net.UDPConn {
	t.Helper()
	uc, err := ListenUDP(cfg)
	if err != nil {
		t.Fatalf("ListenUDP(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { uc.Close() })
	return uc
}

// udpRoundTrip checks that a datagram goes each way between a client and
// the socket.
func udpRoundTrip(t *testing.T, uc *net.UDPConn) {
	t.Helper()
	c, err := net.Dial("udp", uc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(ioTimeout)
	c.SetDeadline(deadline)
	uc.SetDeadline(deadline)
	defer uc.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, from, err := uc.ReadFromUDP(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("server read: %q, %v", buf[:n], err)
	}
	if _, err := uc.WriteToUDP([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("client read: %q, %v", buf[:n], err)
	}
}

func TestListenUDP(t *testing.T) {
	addrs := []string{"127.0.0.1:0"}
	if hasIPv6Loopback() {
		addrs = append(addrs, "[::1]:0")
	}
	for _, addr := range addrs {
		t.Run(addr, func(t *testing.T) {
			uc := listenUDP(t, Config{Kind: KindUDP, Addr: mustParse(KindUDP, addr), Label: "udp:" + addr})
			udpRoundTrip(t, uc)
		})
	}
}

// With reuse_port two sockets share a port (both must ask for it);
// without, the second bind fails with an error naming the endpoint.
func TestListenUDPReusePort(t *testing.T) {
	first := listenUDP(t, Config{Kind: KindUDP, Addr: mustParse(KindUDP, "127.0.0.1:0"), ReusePort: true})
	addr := first.LocalAddr().String()
	second := listenUDP(t, Config{Kind: KindUDP, Addr: mustParse(KindUDP, addr), ReusePort: true})
	if got := second.LocalAddr().String(); got != addr {
		t.Errorf("second socket on %s, want %s", got, addr)
	}

	plain := listenUDP(t, Config{Kind: KindUDP, Addr: mustParse(KindUDP, "127.0.0.1:0")})
	paddr := plain.LocalAddr().String()
	_, err := ListenUDP(Config{Kind: KindUDP, Addr: mustParse(KindUDP, paddr), Label: "udp:" + paddr})
	var le *ListenError
	if !errors.As(err, &le) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second bind without reuse_port: %v", err)
	}
	if want := "listen udp:" + paddr + ": address already in use"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

func TestListenUDPErrors(t *testing.T) {
	for _, cfg := range []Config{
		{Kind: KindUDP, Label: "udp:127.0.0.1"},                                            // no address
		{Kind: KindUDP, Addr: mustParse(KindTCP, "127.0.0.1:7"), Label: "tcp:127.0.0.1:7"}, // not a udp address
		{Kind: KindUDP, Addr: mustParse(KindUDP, "192.0.2.1:7"), Label: "udp:192.0.2.1:7"}, // not a local address
	} {
		uc, err := ListenUDP(cfg)
		if err == nil {
			uc.Close()
			t.Errorf("ListenUDP(%q) succeeded", cfg.Label)
			continue
		}
		var le *ListenError
		if !errors.As(err, &le) || le.Label != cfg.Label || !strings.HasPrefix(err.Error(), "listen "+cfg.Label+": ") {
			t.Errorf("ListenUDP(%q): %v", cfg.Label, err)
		}
	}
	// The label is made up when the configuration gave none.
	if _, err := ListenUDP(Config{Kind: KindUDP, Addr: mustParse(KindUDP, "192.0.2.1:7")}); err == nil ||
		!strings.HasPrefix(err.Error(), "listen udp:192.0.2.1:7: ") {
		t.Errorf("error without a label: %v", err)
	}
}
