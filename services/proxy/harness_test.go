package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/engine"
	"github.com/superd-dev/superd/services/echo"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

// TestMain fails the package if a test leaves a goroutine behind (a
// connection's reader, writer or dialer included).
func TestMain(m *testing.M) {
	servicetest.VerifyTestMain(m)
}

// errCleanup aborts what a test left open.
var errCleanup = errors.New("test cleanup")

// parseService parses one proxy service with body as its attributes and
// returns its factory configuration, or the error.
func parseService(t testing.TB, dir, body string) (*Config, error) {
	t.Helper()
	svc, err := servicetest.Block{Factory: "proxy", Name: "p", Dir: dir, Body: body}.Service(t)
	if err != nil {
		return nil, err
	}
	return svc.FactoryConfig.(*Config), nil
}

// testEnv is what superd hands the factory, for tests: logs go nowhere.
func testEnv() *framework.Env {
	return &framework.Env{Service: "p", Log: slog.New(slog.DiscardHandler), Metrics: prometheus.NewRegistry()}
}

// newFactory builds the proxy factory of body, started.
func newFactory(t testing.TB, body string) *Factory {
	t.Helper()
	cfg, err := parseService(t, t.TempDir(), body)
	if err != nil {
		t.Fatalf("configuration:\n%s", err)
	}
	fac, err := New(testEnv(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := fac.(*Factory)
	return f
}

// served is one client connection served by the proxy.
type served struct {
	c      *engine.Conn
	p      *Proxy
	done   chan struct{}
	reason error
}

func (s *served) wait(t testing.TB) error {
	t.Helper()
	select {
	case <-s.done:
		return s.reason
	case <-time.After(30 * time.Second):
		t.Fatal("the proxied connection did not end")
		return nil
	}
}

// listen listens on loopback: "tcp", "tcp6" or "unix".
func listen(t testing.TB, network string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	switch network {
	case "tcp":
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	case "tcp6":
		ln, err = net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
	case "unix":
		dir, derr := os.MkdirTemp("", "sdp")
		if derr != nil {
			t.Fatal(derr)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		ln, err = net.Listen("unix", filepath.Join(dir, "s.sock"))
	}
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serveProxy serves f's protocol on a loopback listener of network; each
// accepted connection is sent on the channel. prep, when set, runs on each
// accepted socket first. Cleanup aborts what is left, waits for it, and
// stops the factory (which waits for every goroutine of the proxy).
func serveProxy(t testing.TB, f *Factory, network string, prep func(net.Conn)) (net.Addr, <-chan *served) {
	t.Helper()
	ln := listen(t, network)
	ch := make(chan *served, 64)
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all []*served
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, s := range all {
			s.c.Abort(errCleanup)
		}
		mu.Unlock()
		wg.Wait()
		f.StopFactory()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			if prep != nil {
				prep(nc)
			}
			s := &served{c: engine.NewConn(nc, nil), done: make(chan struct{})}
			s.p = f.BuildProtocol(nc.RemoteAddr()).(*Proxy)
			mu.Lock()
			all = append(all, s)
			mu.Unlock()
			select {
			case ch <- s:
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(s.done)
				s.reason = s.c.Serve(s.p)
			}()
		}
	}()
	return ln.Addr(), ch
}

// serveUpstream accepts on ln and hands each connection to handle in its
// own goroutine; cleanup closes the listener and every connection and
// waits for the handlers.
func serveUpstream(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
}

// echoUpstream serves superd's own echo protocol, through the framework,
// on a loopback listener (TLS with cert when given) and returns its
// address.
func echoUpstream(t testing.TB, cert *tls.Certificate) string {
	t.Helper()
	ln := listen(t, "tcp")
	addr := ln.Addr().String()
	if cert != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
	}
	var mu sync.Mutex
	var conns []*engine.Conn
	serveUpstream(t, ln, func(nc net.Conn) {
		if tc, ok := nc.(*tls.Conn); ok {
			if err := tc.Handshake(); err != nil {
				nc.Close()
				return
			}
		}
		c := engine.NewConn(nc, nil)
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		c.Serve(new(echo.Echo))
	})
	t.Cleanup(func() { // runs before serveUpstream's
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Abort(errCleanup)
		}
	})
	return addr
}

// refusedAddr is a loopback address that refuses connections: its port is
// held by a socket that is bound but does not listen, so no other test
// listener can be given it meanwhile.
func refusedAddr(t testing.TB) string {
	t.Helper()
	fd, err := cloexecSocket()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// payload returns n pseudo-random bytes.
func payload(n int, seed uint64) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	return b
}

// exchange writes data to c (then half-closes it) while reading everything
// back until EOF, and returns what came back and the write's error.
func exchange(t testing.TB, c net.Conn, data []byte) (back []byte, werr error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	back, err := io.ReadAll(c)
	if err != nil {
		t.Errorf("read back: %v", err)
	}
	return back, <-errc
}

func digest(b []byte) [32]byte { return sha256.Sum256(b) }

// maxSampler records the largest value of f, sampled as fast as it goes,
// until stopped.
type maxSampler struct {
	stop chan struct{}
	done chan int
}

func sampleMax(f func() int) *maxSampler {
	s := &maxSampler{stop: make(chan struct{}), done: make(chan int)}
	go func() {
		m := 0
		for {
			if v := f(); v > m {
				m = v
			}
			select {
			case <-s.stop:
				s.done <- m
				return
			case <-time.After(50 * time.Microsecond):
			}
		}
	}()
	return s
}

func (s *maxSampler) max() int {
	close(s.stop)
	return <-s.done
}

// buffered is what the proxy holds of the client's bytes.
func (p *Proxy) buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.inflight
	if p.queue != nil {
		n += len(*p.queue)
	}
	return n
}

// cloexecSocket opens an IPv4 TCP socket that no child process inherits
// (SOCK_CLOEXEC is Linux's; elsewhere the flag is set under ForkLock, as
// package syscall does).
func cloexecSocket() (int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return -1, err
	}
	syscall.CloseOnExec(fd)
	return fd, nil
}
