package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "junk.pem"), []byte("not a certificate\n"), 0o600)
	tests := []struct {
		name    string
		body    string
		wantErr []string // substrings of the diagnostics; nil: valid
		check   func(t *testing.T, f *Factory)
	}{
		{name: "one upstream as a string", body: `  upstream = "127.0.0.1:7007"`,
			check: func(t *testing.T, f *Factory) {
				if len(f.upstreams) != 1 || f.upstreams[0].addr != "127.0.0.1:7007" || f.upstreams[0].tls != nil {
					t.Errorf("upstreams %+v", f.upstreams)
				}
				if f.timeout != DefaultConnectTimeout || f.version != 0 {
					t.Errorf("timeout %v version %d", f.timeout, f.version)
				}
			}},
		{name: "a list, in order", body: `  upstream = ["10.0.0.1:80", "[::1]:8080", "localhost:81"]
  connect_timeout = "250ms"
  send_proxy_protocol = "v2"`,
			check: func(t *testing.T, f *Factory) {
				var got []string
				for _, u := range f.upstreams {
					got = append(got, u.addr)
				}
				if strings.Join(got, " ") != "10.0.0.1:80 [::1]:8080 localhost:81" {
					t.Errorf("upstreams %v", got)
				}
				if f.timeout != 250*time.Millisecond || f.version != 2 {
					t.Errorf("timeout %v version %d", f.timeout, f.version)
				}
			}},
		{name: "upstream_tls", body: `  upstream = ["127.0.0.1:443", "db.internal:5432"]
  send_proxy_protocol = "v1"
  upstream_tls {
    ca_file = "` + filepath.Base(caFile) + `"
  }`,
			check: func(t *testing.T, f *Factory) {
				if f.version != 1 {
					t.Errorf("version %d", f.version)
				}
				for i, want := range []string{"127.0.0.1", "db.internal"} {
					c := f.upstreams[i].tls
					if c == nil || c.ServerName != want || c.RootCAs == nil || c.InsecureSkipVerify {
						t.Errorf("upstream %d: tls %+v, want ServerName %q and the CA", i, c, want)
					}
				}
			}},
		{name: "upstream_tls with server_name", body: `  upstream = "127.0.0.1:443"
  upstream_tls {
    server_name = "web.internal"
    insecure_skip_verify = true
  }`,
			check: func(t *testing.T, f *Factory) {
				c := f.upstreams[0].tls
				if c == nil || c.ServerName != "web.internal" || !c.InsecureSkipVerify || c.RootCAs != nil {
					t.Errorf("tls %+v", c)
				}
			}},
		{name: "upstream missing", body: `  connect_timeout = "1s"`,
			wantErr: []string{`Missing required argument`, `"upstream"`}},
		{name: "empty list", body: `  upstream = []`,
			wantErr: []string{"superd.hcl:2,3-16:", `at least one "host:port"`}},
		{name: "no port", body: `  upstream = "127.0.0.1"`,
			wantErr: []string{"superd.hcl:2,3-25:", `"127.0.0.1" is not "host:port"`}},
		{name: "no host", body: `  upstream = ":7007"`,
			wantErr: []string{`":7007" is not "host:port"`}},
		{name: "port out of range", body: `  upstream = ["127.0.0.1:7007", "127.0.0.1:70000"]`,
			wantErr: []string{`"127.0.0.1:70000": the port must be a number from 1 to 65535`}},
		{name: "port by name", body: `  upstream = "127.0.0.1:http"`,
			wantErr: []string{`the port must be a number`}},
		{name: "a number", body: `  upstream = 7007`,
			wantErr: []string{`upstream must be "host:port" or a list of them, not a number`}},
		{name: "an object", body: `  upstream = { host = "127.0.0.1", port = 7007 }`,
			wantErr: []string{`upstream must be "host:port" or a list of them, not an object.`}},
		{name: "an object in the list", body: `  upstream = ["127.0.0.1:1", { host = "127.0.0.1" }]`,
			wantErr: []string{`element 2 of upstream is an object, not a "host:port" string`}},
		{name: "a number in the list", body: `  upstream = ["127.0.0.1:1", 7007]`,
			wantErr: []string{`element 2 of upstream is a number`}},
		{name: "null in the list", body: `  upstream = ["127.0.0.1:1", null]`,
			wantErr: []string{`must not contain null`}},
		{name: "bad connect_timeout", body: `  upstream = "127.0.0.1:1"
  connect_timeout = "soon"`,
			wantErr: []string{"superd.hcl:3,", `"soon" is not a duration`}},
		{name: "zero connect_timeout", body: `  upstream = "127.0.0.1:1"
  connect_timeout = "0s"`,
			wantErr: []string{"superd.hcl:3,", `more than zero`}},
		{name: "bad send_proxy_protocol", body: `  upstream = "127.0.0.1:1"
  send_proxy_protocol = "v3"`,
			wantErr: []string{"superd.hcl:3,", `"v3" is not "v1" or "v2"`}},
		{name: "ca_file missing", body: `  upstream = "127.0.0.1:1"
  upstream_tls {
    server_name = "x"
    ca_file     = "nope.pem"
  }`,
			wantErr: []string{"superd.hcl:5,5-29:", `Invalid value for "upstream_tls.ca_file"`, "cannot read the CA file", "no such file"}},
		{name: "ca_file without a certificate", body: `  upstream = "127.0.0.1:1"
  upstream_tls { ca_file = "junk.pem" }`,
			wantErr: []string{"superd.hcl:3,", "junk.pem holds no PEM certificate"}},
		{name: "unknown attribute in upstream_tls", body: `  upstream = "127.0.0.1:1"
  upstream_tls { server_nmae = "x" }`,
			wantErr: []string{"superd.hcl:3,", `Did you mean "server_name"?`}},
		{name: "insecure_skip_verify not a bool", body: `  upstream = "127.0.0.1:1"
  upstream_tls { insecure_skip_verify = "sure" }`,
			wantErr: []string{"superd.hcl:3,", "a bool is required"}},
		{name: "unknown attribute", body: `  upstream = "127.0.0.1:1"
  conect_timeout = "1s"`,
			wantErr: []string{"superd.hcl:3,", `Did you mean "connect_timeout"?`}},
		{name: "every bad upstream", body: `  upstream = ["127.0.0.1:70000", "nohostport", "127.0.0.1:1", 7]`,
			wantErr: []string{`"127.0.0.1:70000": the port must be`, `"nohostport" is not "host:port"`, "element 4 of upstream is a number"}},
		{name: "every mistake at once", body: `  upstream = "127.0.0.1:70000"
  connect_timeout = "0s"
  send_proxy_protocol = "v3"
  upstream_tls { ca_file = "junk.pem" }`,
			wantErr: []string{"superd.hcl:2,", "the port must be a number", "superd.hcl:3,", "more than zero",
				"superd.hcl:4,", `"v3" is not "v1" or "v2"`, "superd.hcl:5,", "junk.pem holds no PEM certificate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseService(t, dir, tt.body)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error:\n%s", err)
				}
				fac, err := New(testEnv(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				tt.check(t, fac.(*Factory))
				return
			}
			var de *config.DiagnosticsError
			if !errors.As(err, &de) {
				t.Fatalf("error %v (%T); want a *config.DiagnosticsError", err, err)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error text lacks %q:\n%s", s, err)
				}
			}
		})
	}
}

// TestUDPEndpointRefused: the proxy serves streams only.
func TestUDPEndpointRefused(t *testing.T) {
	src := `service "proxy" "p" {
  upstream = "127.0.0.1:1"
  endpoint "udp" { address = "127.0.0.1:1" }
}
`
	_, err := config.Parse([]byte(src), filepath.Join(t.TempDir(), "superd.hcl"))
	if err == nil || !strings.Contains(err.Error(), "serves streams only") {
		t.Fatalf("error %v, want the udp endpoint refused", err)
	}
}

// TestProxyToEcho: several clients at once, each sending megabytes through
// the proxy to superd's own echo and reading them back while sending; the
// client's end of stream comes back as the echo's, and every connection
// ends cleanly.
func TestProxyToEcho(t *testing.T) {
	for _, network := range []string{"tcp", "tcp6", "unix"} {
		t.Run(network, func(t *testing.T) {
			up := echoUpstream(t, nil)
			f := newFactory(t, fmt.Sprintf("  upstream = %q", up))
			addr, conns := serveProxy(t, f, network, nil)
			const clients = 4
			var wg sync.WaitGroup
			for i := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := net.Dial(addr.Network(), addr.String())
					if err != nil {
						t.Error(err)
						return
					}
					defer c.Close()
					data := payload(8<<20+i, uint64(i))
					back, werr := exchange(t, c, data)
					if werr != nil {
						t.Errorf("client %d: write: %v", i, werr)
					}
					if digest(back) != digest(data) {
						t.Errorf("client %d: %d bytes came back, not the %d sent", i, len(back), len(data))
					}
				}()
			}
			wg.Wait()
			for range clients {
				s := <-conns
				if r := s.wait(t); !framework.IsClean(r) {
					t.Errorf("reason %v, want clean", r)
				}
			}
		})
	}
}

// TestUpstreamListInOrder: the first upstream refuses, the second answers.
func TestUpstreamListInOrder(t *testing.T) {
	up := echoUpstream(t, nil)
	f := newFactory(t, fmt.Sprintf("  upstream = [%q, %q]", refusedAddr(t), up))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	back, werr := exchange(t, c, []byte("through the second"))
	if werr != nil || string(back) != "through the second" {
		t.Fatalf("got %q (%v)", back, werr)
	}
	if r := (<-conns).wait(t); !framework.IsClean(r) {
		t.Errorf("reason %v, want clean", r)
	}
}

// TestUnreachable: no upstream answers: the client's connection is aborted
// with ErrUpstream, and nothing it sent was read.
func TestUnreachable(t *testing.T) {
	f := newFactory(t, fmt.Sprintf("  upstream = [%q, %q]", refusedAddr(t), refusedAddr(t)))
	addr, conns := serveProxy(t, f, "tcp", nil)
	expectReset(t, addr, conns)
}

// expectReset connects to the proxy at addr and expects the connection to
// be reset, with nothing read from it, and ended with ErrUpstream.
func expectReset(t *testing.T, addr net.Addr, conns <-chan *served) {
	t.Helper()
	c, err := net.Dial(addr.Network(), addr.String())
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		// Reset before connect returned: loopback is quick.
	case err != nil:
		t.Fatal(err)
	default:
		defer c.Close()
		c.Write([]byte("anyone?"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if back, err := io.ReadAll(c); len(back) != 0 || !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read %q, %v; want nothing and a reset", back, err)
		}
	}
	if r := (<-conns).wait(t); !errors.Is(r, framework.ErrUpstream) {
		t.Errorf("reason %v, want ErrUpstream", r)
	}
}

// blackhole returns a loopback address whose listener never accepts and
// whose backlog is full, so a new connection to it is never completed:
// the kernel drops its SYNs.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := cloexecSocket()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the backlog: connections complete until it is full; the first
	// that does not proves the hole.
	for i := 0; ; i++ {
		if i == 64 {
			t.Fatal("the backlog never filled")
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr
}

// TestConnectTimeout: an upstream that never completes the connection is
// given connect_timeout, then the next is tried; when the last also times
// out the client is dropped. Either way the wait is bounded.
func TestConnectTimeout(t *testing.T) {
	hole := blackhole(t)
	const timeout = 300 * time.Millisecond
	t.Run("then the next", func(t *testing.T) {
		up := echoUpstream(t, nil)
		f := newFactory(t, fmt.Sprintf("  upstream = [%q, %q]\n  connect_timeout = %q", hole, up, timeout))
		addr, conns := serveProxy(t, f, "tcp", nil)
		start := time.Now()
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		back, werr := exchange(t, c, []byte("late but here"))
		if werr != nil || string(back) != "late but here" {
			t.Fatalf("got %q (%v)", back, werr)
		}
		if el := time.Since(start); el < timeout {
			t.Errorf("answered after %v, before the blackhole's timeout", el)
		}
		(<-conns).wait(t)
	})
	t.Run("dropped", func(t *testing.T) {
		f := newFactory(t, fmt.Sprintf("  upstream = %q\n  connect_timeout = %q", hole, timeout))
		addr, conns := serveProxy(t, f, "tcp", nil)
		start := time.Now()
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := (<-conns).wait(t)
		el := time.Since(start)
		if !errors.Is(r, framework.ErrUpstream) {
			t.Errorf("reason %v, want ErrUpstream", r)
		}
		if el < timeout || el > 20*time.Second {
			t.Errorf("dropped after %v; connect_timeout is %v", el, timeout)
		}
	})
}

// TestHalfCloseClientFirst: the client sends a request and its end of
// stream; the upstream sees both, then answers at length and closes; the
// client reads it all, then EOF.
func TestHalfCloseClientFirst(t *testing.T) {
	ln := listen(t, "tcp")
	answer := payload(4<<20, 1)
	got := make(chan []byte, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		req, err := io.ReadAll(c) // until the client's EOF, passed on
		if err != nil {
			t.Errorf("upstream read: %v", err)
		}
		got <- req
		c.Write(answer)
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	back, werr := exchange(t, c, []byte("request"))
	if werr != nil {
		t.Fatal(werr)
	}
	if r := <-got; string(r) != "request" {
		t.Errorf("upstream got %q", r)
	}
	if digest(back) != digest(answer) {
		t.Errorf("client got %d bytes, want the %d-byte answer", len(back), len(answer))
	}
	if r := (<-conns).wait(t); !framework.IsClean(r) {
		t.Errorf("reason %v, want clean", r)
	}
}

// TestHalfCloseUpstreamFirst: the upstream greets and ends its output at
// once, but reads on; the client sees the greeting and EOF, then sends
// megabytes and its own end of stream, all of which reach the upstream.
func TestHalfCloseUpstreamFirst(t *testing.T) {
	ln := listen(t, "tcp")
	data := payload(4<<20, 2)
	got := make(chan []byte, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte("hello, then EOF"))
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		if err != nil {
			t.Errorf("upstream read: %v", err)
		}
		got <- b
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	greeting, err := io.ReadAll(c)
	if err != nil || string(greeting) != "hello, then EOF" {
		t.Fatalf("client read %q, %v; want the greeting, then EOF", greeting, err)
	}
	if _, err := c.Write(data); err != nil {
		t.Fatalf("client write after the upstream's EOF: %v", err)
	}
	c.(*net.TCPConn).CloseWrite()
	if b := <-got; digest(b) != digest(data) {
		t.Errorf("upstream got %d bytes, want %d", len(b), len(data))
	}
	if r := (<-conns).wait(t); !framework.IsClean(r) {
		t.Errorf("reason %v, want clean", r)
	}
}

// TestUpstreamResetResetsClient: an upstream that resets the connection
// has the client's reset too, counted as an upstream drop.
func TestUpstreamResetResetsClient(t *testing.T) {
	ln := listen(t, "tcp")
	serveUpstream(t, ln, func(c net.Conn) {
		b := make([]byte, 5)
		io.ReadFull(c, b)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("reset"))
	if r := (<-conns).wait(t); !errors.Is(r, framework.ErrUpstream) {
		t.Errorf("reason %v, want ErrUpstream", r)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read ended with %v, want a reset", err)
	}
}

// TestClientResetResetsUpstream: a client that resets has the upstream's
// connection reset.
func TestClientResetResetsUpstream(t *testing.T) {
	ln := listen(t, "tcp")
	upErr := make(chan error, 1)
	arrived := make(chan struct{})
	serveUpstream(t, ln, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err := io.ReadFull(c, make([]byte, 3))
		close(arrived)
		if err == nil {
			_, err = io.ReadAll(c)
		}
		upErr <- err
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("bye"))
	s := <-conns
	<-arrived
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	if r := s.wait(t); framework.IsClean(r) {
		t.Errorf("reason %v, want an error", r)
	}
	if err := <-upErr; !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("upstream read ended with %v, want a reset", err)
	}
}

// TestNonReadingUpstreamBounded: the upstream accepts and never reads; the
// client's writes stall, and what the proxy holds of them stays below its
// bound the whole time. Once the upstream reads, everything arrives.
func TestNonReadingUpstreamBounded(t *testing.T) {
	ln := listen(t, "tcp")
	startReading := make(chan struct{})
	got := make(chan [32]byte, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		<-startReading
		b, _ := io.ReadAll(c)
		got <- digest(b)
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	s := <-conns
	sampler := sampleMax(s.p.buffered)
	const size = 64 << 20
	data := payload(size, 3)
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	n, _ := c.Write(data) // stalls: nobody reads
	if n == size {
		t.Fatalf("all %d bytes were taken though the upstream reads nothing", size)
	}
	bound := queueHigh + 32<<10 // the mark, plus one read from the client
	if b := s.p.buffered(); b > bound {
		t.Errorf("the proxy holds %d bytes for a non-reading upstream; bound %d", b, bound)
	}
	m := sampler.max()
	if m > bound {
		t.Errorf("the proxy held up to %d bytes for a non-reading upstream; bound %d", m, bound)
	}
	t.Logf("the client wrote %d bytes before stalling; the proxy held at most %d", n, m)
	close(startReading)
	c.SetWriteDeadline(time.Time{})
	if _, err := c.Write(data[n:]); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	if d := <-got; d != digest(data) {
		t.Error("the upstream did not get the payload intact")
	}
	s.wait(t)
}

// TestNonReadingClientBounded: the client never reads; the upstream's
// writes stall, and the client's pending output stays below its bound the
// whole time. Once the client reads, everything arrives.
func TestNonReadingClientBounded(t *testing.T) {
	ln := listen(t, "tcp")
	const size = 64 << 20
	data := payload(size, 4)
	written := make(chan int, 1)
	resume := make(chan struct{})
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		c.(*net.TCPConn).SetWriteBuffer(64 << 10)
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		n, _ := c.Write(data) // stalls: the client reads nothing
		written <- n
		<-resume
		c.SetWriteDeadline(time.Time{})
		c.Write(data[n:])
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", func(nc net.Conn) {
		nc.(*net.TCPConn).SetWriteBuffer(64 << 10)
	})
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	s := <-conns
	sampler := sampleMax(s.c.Pending)
	n := <-written
	if n == size {
		t.Fatalf("all %d bytes were taken though the client reads nothing", size)
	}
	// The reader writes from its own goroutine, so its pause lands a
	// read or a few late: when the goroutine holding the connection's
	// turn (a flusher that has just resumed it) ends that turn, which a
	// busy machine may put off for several reads. Usually it holds the
	// mark plus one read; the bound is the framework's for a producer
	// (four times the mark; beyond it the connection is dropped as a slow
	// consumer), still a thousandth of the payload.
	bound := 4 * framework.HighWaterMark
	if p := s.c.Pending(); p > bound {
		t.Errorf("the proxy holds %d bytes for a non-reading client; bound %d", p, bound)
	}
	m := sampler.max()
	if m > bound {
		t.Errorf("the proxy held up to %d bytes for a non-reading client; bound %d", m, bound)
	}
	t.Logf("the upstream wrote %d bytes before stalling; the proxy held at most %d", n, m)
	close(resume)
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	back, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if digest(back) != digest(data) {
		t.Errorf("client got %d bytes, want %d", len(back), size)
	}
	c.Close()
	s.wait(t)
}

// TestClientGoneWhileConnecting: a client connection that ends while the
// upstream is still being reached leaves nothing behind (goleak checks the
// dialer; the upstream's connection is closed).
func TestClientGoneWhileConnecting(t *testing.T) {
	hole := blackhole(t)
	f := newFactory(t, fmt.Sprintf("  upstream = %q\n  connect_timeout = \"1m\"", hole))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-conns
	s.c.Abort(errCleanup)
	if r := s.wait(t); !errors.Is(r, errCleanup) {
		t.Errorf("reason %v", r)
	}
	done := make(chan struct{})
	go func() { f.StopFactory(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the dialer outlived its connection")
	}
}

// TestCAFileContentsInFingerprint: the proxy reads ca_file when it is
// built, so a reload that finds other contents in it (a CA renewed in
// place) replaces the service, as a change of value would; the same
// contents keep it.
func TestCAFileContentsInFingerprint(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	writeCA := func() {
		t.Helper()
		ca, err := testkit.NewCA()
		if err != nil {
			t.Fatal(err)
		}
		f, err := ca.WriteCAFile(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		pem, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(caFile, pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fingerprint := func() string {
		t.Helper()
		svc, err := servicetest.Block{Factory: "proxy", Dir: dir, Body: `  upstream = "127.0.0.1:1"
  upstream_tls { ca_file = "ca.pem" }`}.Service(t)
		if err != nil {
			t.Fatal(err)
		}
		return svc.Fingerprint
	}
	writeCA()
	first := fingerprint()
	if fingerprint() != first {
		t.Error("the fingerprint changed with nothing changed")
	}
	writeCA()
	if fingerprint() == first {
		t.Error("the fingerprint did not change with the contents of ca_file: a reload would keep the old CA")
	}
}

// TestCAFileNotRegular: a ca_file that is not a regular file (a FIFO,
// which no one writes) is refused at once, as a tls endpoint's
// client_ca_file is, rather than hanging validate and reload on its read.
func TestCAFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "ca.pem"), 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := parseService(t, dir, `  upstream = "127.0.0.1:1"
  upstream_tls { ca_file = "ca.pem" }`)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "is not a regular file") {
			t.Errorf("error %v; want ca.pem refused as not a regular file", err)
		}
	case <-time.After(10 * time.Second):
		// Unblock the read so that the goroutine ends.
		if f, err := os.OpenFile(filepath.Join(dir, "ca.pem"), os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-done
		t.Fatal("reading ca_file, a FIFO, did not return within 10 s")
	}
}

// TestTLSHandshakeTimeoutWarning: an upstream that accepts the connection
// but never answers the TLS handshake is given connect_timeout; the
// warning says that it was the handshake that timed out, and after what,
// rather than a bare "context deadline exceeded".
func TestTLSHandshakeTimeoutWarning(t *testing.T) {
	ln := listen(t, "tcp")
	serveUpstream(t, ln, func(c net.Conn) { io.Copy(io.Discard, c) }) // reads, never answers
	f := newFactory(t, fmt.Sprintf("  upstream = %q\n  connect_timeout = \"300ms\"\n  upstream_tls { insecure_skip_verify = true }", ln.Addr()))
	var logs testkit.Buffer
	f.log = slog.New(slog.NewTextHandler(&logs, nil))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := (<-conns).wait(t); !errors.Is(r, framework.ErrUpstream) {
		t.Errorf("reason %v, want ErrUpstream", r)
	}
	want := ln.Addr().String() + ": TLS handshake: no answer within connect_timeout (300ms)"
	if out := logs.String(); !strings.Contains(out, want) {
		t.Errorf("warning:\n%s\nwant it to say %q", out, want)
	}
}
