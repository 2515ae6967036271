package supervisor

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// slowSink is a factory whose protocol keeps what it receives, and whose
// first DataReceived waits for release (a busy protocol: meanwhile the
// peer's bytes pile up in the kernel).
type slowSink struct {
	first, release chan struct{}
	once           sync.Once
	mu             sync.Mutex
	got            []byte
}

func (f *slowSink) BuildProtocol(net.Addr) framework.Protocol { return &sinkProto{f: f} }

func (f *slowSink) received() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.got...)
}

type sinkProto struct {
	framework.BaseProtocol
	f *slowSink
}

func (p *sinkProto) DataReceived(b []byte) {
	p.f.mu.Lock()
	p.f.got = append(p.f.got, b...)
	p.f.mu.Unlock()
	p.f.once.Do(func() {
		close(p.f.first)
		<-p.f.release
	})
}

// unacked is how many bytes c has sent that its peer has not acknowledged
// (TIOCOUTQ): 0 once they are all in the peer's kernel.
func unacked(t *testing.T, c net.Conn) int {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := -1
	raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCOUTQ) })
	return n
}

// A shutdown delivers what a proxied client sent before it, as it does for
// any client: the bytes that had reached superd's kernel are read and
// given to the protocol before the connection closes, not discarded; over
// tcp, and over tls after the header.
func TestProxyProtocolDrainDeliversArrivedInput(t *testing.T) {
	for _, kind := range []string{endpoint.KindTCP, endpoint.KindTLS} {
		t.Run(kind, func(t *testing.T) { testProxiedDrain(t, kind) })
	}
}

func testProxiedDrain(t *testing.T, kind string) {
	addr := testkit.FreeAddr(t, "tcp")
	ep := makeEndpoint(kind, addr)
	var pool *x509.CertPool
	if kind == endpoint.KindTLS {
		dir := t.TempDir()
		ep.CertFile, ep.KeyFile = filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key")
		pool = x509.NewCertPool()
		pool.AddCert(writePair(t, ep.CertFile, ep.KeyFile, time.Now(), "s.example"))
	}
	ep.Proxy = &endpoint.ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Required: true, Timeout: 2 * time.Second}
	f := &slowSink{first: make(chan struct{}), release: make(chan struct{})}
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 10 * time.Second, Services: []*config.Service{serviceConfig("d", f, config.Limits{}, ep)}}); err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	io.WriteString(raw, "PROXY TCP4 192.0.2.10 127.0.0.1 40000 7\r\n")
	var c net.Conn = raw
	if pool != nil {
		c = tls.Client(raw, &tls.Config{ServerName: "s.example", RootCAs: pool})
	}
	io.WriteString(c, "first\n")
	select {
	case <-f.first:
	case <-time.After(10 * time.Second):
		t.Fatal("the protocol got nothing")
	}
	rest := bytes.Repeat([]byte("a line the client sent before the shutdown\n"), 500)
	if _, err := c.Write(rest); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return unacked(t, raw) == 0 })

	// The service is looked up before the shutdown starts: Shutdown holds
	// s.mu while it waits for the drain, which waits for the protocol.
	s.mu.Lock()
	svc := s.services["d"]
	s.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(10 * time.Second) }()
	waitFor(t, func() bool { svc.mu.Lock(); defer svc.mu.Unlock(); return svc.closing })
	close(f.release)
	// The drain ends with a graceful close: the client reads its end.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, c)
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := append([]byte("first\n"), rest...)
	if got := f.received(); !bytes.Equal(got, want) {
		t.Fatalf("the protocol got %d of the %d bytes the client sent before the shutdown", len(got), len(want))
	}
}
