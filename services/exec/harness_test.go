//go:build linux

package exec

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/rawconn"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

// TestMain fails the package if a test leaves a goroutine behind (a relay
// copier, a watcher, a stderr logger). The spawner lives for the process.
func TestMain(m *testing.M) {
	servicetest.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/superd-dev/superd/services/exec.runSpawner"))
}

// --- logs ---

// logRecords collects what the factory logs.
type logRecords struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r.Clone())
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs(as []slog.Attr) slog.Handler { return &attrHandler{l, as} }
func (l *logRecords) WithGroup(string) slog.Handler         { return l }

// attrHandler keeps the logger's With attributes on each record.
type attrHandler struct {
	l  *logRecords
	as []slog.Attr
}

func (h *attrHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *attrHandler) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(h.as...)
	return h.l.Handle(ctx, r)
}
func (h *attrHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrHandler{h.l, append(append([]slog.Attr{}, h.as...), as...)}
}
func (h *attrHandler) WithGroup(string) slog.Handler { return h }

// with returns the records whose message is msg, as maps of their
// attributes.
func (l *logRecords) with(msg string) []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	for _, r := range l.records {
		if r.Message != msg {
			continue
		}
		m := map[string]string{}
		r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
		out = append(out, m)
	}
	return out
}

// --- factories ---

// newTestFactory builds an exec factory for a service "x" whose attributes
// are body, through the configuration loader, and starts it with its logs
// going to the returned records. StopFactory runs at the end of the test.
func newTestFactory(t *testing.T, body string) (*Factory, *logRecords) {
	t.Helper()
	f, err := parseExec(t, body)
	if err != nil {
		t.Fatal(err)
	}
	svc := f.Service("x")
	logs := &logRecords{}
	fac, err := servicetest.Build(svc, logs)
	if err != nil {
		t.Fatal(err)
	}
	x := fac.(*Factory)
	if err := x.StartFactory(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.StopFactory() })
	return x, logs
}

// handed is one call of ServeConn in its own goroutine.
type handed struct {
	hc             *framework.HandedConn
	stop, kill     context.CancelFunc // the drain begins; its time is up
	served         atomic.Int32
	received, sent prometheus.Counter
	done           chan struct{}
	err            error
}

// serveConn hands c to f in a goroutine, with idle as its IdleTimeout and
// grace, when given, as its ShutdownTimeout. The test's cleanup kills what
// is left, so no goroutine outlives it.
func serveConn(t *testing.T, f *Factory, c net.Conn, idle time.Duration, grace ...time.Duration) *handed {
	t.Helper()
	stopping, stop := context.WithCancel(context.Background())
	killed, kill := context.WithCancel(context.Background())
	h := &handed{
		stop:     stop,
		kill:     func() { stop(); kill() },
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "received"}),
		sent:     prometheus.NewCounter(prometheus.CounterOpts{Name: "sent"}),
		done:     make(chan struct{}),
	}
	h.hc = &framework.HandedConn{
		Conn:        c,
		SourceConns: 1,
		IdleTimeout: idle,
		Received:    h.received,
		Sent:        h.sent,
		Stopping:    stopping,
		Killed:      killed,
		Served:      func() { h.served.Add(1) },
	}
	if len(grace) > 0 {
		h.hc.ShutdownTimeout = grace[0]
	}
	go func() {
		defer close(h.done)
		h.err = f.ServeConn(h.hc)
	}()
	t.Cleanup(func() {
		h.kill()
		<-h.done
	})
	return h
}

// wait waits up to d for ServeConn to return, and gives its error.
func (h *handed) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-h.done:
		return h.err
	case <-time.After(d):
		t.Fatalf("ServeConn did not return within %v", d)
		return nil
	}
}

func (h *handed) finished() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// --- sockets ---

// tcpPair returns a connected client and server TCP connection on
// loopback.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	return pairOn(t, "tcp", "127.0.0.1:0", false)
}

func unixPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	return pairOn(t, "unix", filepath.Join(t.TempDir(), "s.sock"), false)
}

// bareTCPPair and bareUnixPair are pairs whose server side superd accepted
// as a bare descriptor (internal/rawconn), as the supervisor hands exec
// its plain TCP and unix connections.
func bareTCPPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	return pairOn(t, "tcp", "127.0.0.1:0", true)
}

func bareUnixPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	return pairOn(t, "unix", filepath.Join(t.TempDir(), "s.sock"), true)
}

func pairOn(t *testing.T, network, addr string, bare bool) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accept := ln.Accept
	if bare {
		bl, err := rawconn.NewListener(ln.(syscall.Conn), network == "unix", ln.Addr())
		if errors.Is(err, errors.ErrUnsupported) {
			t.Skip("no bare descriptors on this platform")
		}
		if err != nil {
			t.Fatal(err)
		}
		defer bl.Close()
		accept = func() (net.Conn, error) { return bl.Accept() }
	}
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := accept()
		ch <- res{c, err}
	}()
	client, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

var (
	certOnce sync.Once
	cert     tls.Certificate
	certErr  error
)

// tlsPair returns a TCP pair with TLS handshaken on both sides; setup,
// when given, runs on the raw client and server sockets first.
func tlsPair(t *testing.T, setup ...func(c, s *net.TCPConn)) (client, server *tls.Conn) {
	t.Helper()
	certOnce.Do(func() { cert, certErr = endpoint.SelfSignedCertificate([]string{"127.0.0.1"}, time.Now()) })
	if certErr != nil {
		t.Fatal(certErr)
	}
	c, s := tcpPair(t)
	for _, f := range setup {
		f(c.(*net.TCPConn), s.(*net.TCPConn))
	}
	client = tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	server = tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return client, server
}

// echoHalfClose writes payload while reading, half-closes, reads to EOF
// and compares hashes.
func echoHalfClose(t *testing.T, c net.Conn, payload []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("reading: %v after %d bytes", err, n)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	want := sha256.Sum256(payload)
	if n != int64(len(payload)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("%d bytes sent, %d came back, SHA-256 differs", len(payload), n)
	}
}

func randomPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// waitFor polls cond until it holds, or fails after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alive reports whether pid runs (not gone, not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}
