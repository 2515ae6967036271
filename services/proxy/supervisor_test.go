package proxy

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/metrics"
	"github.com/superd-dev/superd/supervisor"
)

// TestUnderSupervisor: the proxy as superd runs it, in front of superd's
// echo on loopback: the client's bytes are counted both ways, and a proxy
// whose upstream cannot be reached has its connections counted as
// dropped{reason="upstream"}.
func TestUnderSupervisor(t *testing.T) {
	echoAddr, proxyAddr, deadAddr := testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp")
	src := fmt.Sprintf(`service "echo" "echo" {
  endpoint "tcp" { address = %q }
}
service "proxy" "front" {
  upstream = %q
  endpoint "tcp" { address = %q }
}
service "proxy" "dead" {
  upstream        = %q
  connect_timeout = "2s"
  endpoint "tcp" { address = %q }
}
`, echoAddr, echoAddr, proxyAddr, refusedAddr(t), deadAddr)
	cfg, err := config.Parse([]byte(src), filepath.Join(t.TempDir(), "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(discard) // the factories log through it
	m := metrics.New("test")
	s := supervisor.New(discard, m)
	if err := s.Start(cfg); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)

	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	data := payload(3<<20, 11)
	back, werr := exchange(t, c, data)
	c.Close()
	if werr != nil || digest(back) != digest(data) {
		t.Fatalf("echoed %d of %d bytes (%v)", len(back), len(data), werr)
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(m.ConnectionsActive.WithLabelValues("front", "proxy")) == 0
	}, "the proxied connection to end")
	for _, fam := range []struct {
		name string
		v    float64
	}{
		{"received", testutil.ToFloat64(m.ReceivedBytes.WithLabelValues("front", "proxy"))},
		{"sent", testutil.ToFloat64(m.SentBytes.WithLabelValues("front", "proxy"))},
		{"echo received", testutil.ToFloat64(m.ReceivedBytes.WithLabelValues("echo", "echo"))},
	} {
		if fam.v != float64(len(data)) {
			t.Errorf("%s bytes: %v, want %d", fam.name, fam.v, len(data))
		}
	}
	if v := testutil.ToFloat64(m.ConnectionsDropped.WithLabelValues("front", "proxy", metrics.DropUpstream)); v != 0 {
		t.Errorf("front: dropped{upstream} = %v, want 0", v)
	}

	for range 3 {
		c, err := net.Dial("tcp", deadAddr)
		if err != nil {
			continue // reset before connect returned
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, _ := io.ReadAll(c); len(b) != 0 {
			t.Errorf("read %q from a proxy without upstream", b)
		}
		c.Close()
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(m.ConnectionsDropped.WithLabelValues("dead", "proxy", metrics.DropUpstream)) == 3
	}, "dropped{service=dead, reason=upstream} to reach 3")
}

// waitFor polls cond until it holds, or fails after 10 s.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestForwardedHeaderKeepsTheClientsFamily: a client a PROXY header names
// by its IPv4 address, reaching superd on an IPv6 endpoint, is sent
// upstream as IPv4 (TCP4), not as ::ffff:a.b.c.d; the destination, of the
// other family, is the unspecified IPv4 address with superd's port.
func TestForwardedHeaderKeepsTheClientsFamily(t *testing.T) {
	front := testkit.FreeAddrOn(t, "tcp", "::1") // skips without IPv6
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		got <- line
	})
	src := fmt.Sprintf(`service "proxy" "front" {
  upstream            = %q
  send_proxy_protocol = "v1"
  endpoint "tcp" {
    address = %q
    proxy_protocol { trusted = ["::1/128"] }
  }
}
`, ln.Addr().String(), front)
	cfg, err := config.Parse([]byte(src), filepath.Join(t.TempDir(), "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	s := supervisor.New(slog.New(slog.DiscardHandler), metrics.New("test"))
	if err := s.Start(cfg); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "PROXY TCP4 192.0.2.10 192.0.2.1 40000 443\r\n")
	_, port, _ := net.SplitHostPort(front)
	if h, want := <-got, "PROXY TCP4 192.0.2.10 0.0.0.0 40000 "+port+"\r\n"; h != want {
		t.Errorf("header sent upstream %q, want %q", h, want)
	}
}
