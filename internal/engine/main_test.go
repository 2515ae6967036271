package engine

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/rawconn"
)

// TestMain fails the package if any test leaves a goroutine behind (a Serve
// that never returned, a flusher that never finished, a client goroutine).
func TestMain(m *testing.M) {
	// The idle-connection poller is one goroutine for the whole process.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/superd-dev/superd/internal/engine.(*idlePoller).loop"))
}

// testLogger swallows the panic logs the panic tests provoke.
var testLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// errTestCleanup is the reason tests abort a connection that overstayed.
var errTestCleanup = errors.New("test cleanup: connection still open")

// --- polling ---

// waitFor polls cond every millisecond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", d, fmt.Sprintf(format, args...))
		}
		time.Sleep(time.Millisecond)
	}
}

// holds polls cond for d and fails the test as soon as it is false: the
// observation window of a "nothing happens" check.
func holds(t testing.TB, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !cond() {
			t.Fatalf(format, args...)
		}
		time.Sleep(time.Millisecond)
	}
}

// randBytes returns n reproducible pseudo-random bytes.
func randBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	mrand.NewChaCha8(s).Read(b)
	return b
}

// --- TLS ---

var (
	tlsOnce   sync.Once
	tlsCert   tls.Certificate
	tlsRoots  *x509.CertPool
	tlsGenErr error
)

// testTLS returns server and client configurations around a self-signed
// ECDSA certificate for 127.0.0.1, ::1 and localhost, made once per run.
func testTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	tlsOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			tlsGenErr = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "superd test"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			DNSNames:              []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			tlsGenErr = err
			return
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			tlsGenErr = err
			return
		}
		tlsCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		tlsRoots = x509.NewCertPool()
		tlsRoots.AddCert(leaf)
	})
	if tlsGenErr != nil {
		t.Fatalf("generating the test certificate: %v", tlsGenErr)
	}
	server = &tls.Config{Certificates: []tls.Certificate{tlsCert}, SessionTicketsDisabled: true}
	client = &tls.Config{RootCAs: tlsRoots, ServerName: "localhost"}
	return server, client
}

// --- sockets ---

// listen listens on loopback: "tcp" (127.0.0.1), "tcp6" (::1, skipped when
// unavailable) or "unix" (a socket in a temporary folder).
func listen(t testing.TB, network string) net.Listener {
	t.Helper()
	var (
		ln  net.Listener
		err error
	)
	switch network {
	case "tcp":
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	case "tcp6":
		ln, err = net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
	case "bare-tcp", "bare-unix":
		return bareListener(t, listen(t, strings.TrimPrefix(network, "bare-")))
	case "unix":
		dir := t.TempDir()
		if len(dir) > 90 { // sun_path is short
			dir, err = os.MkdirTemp("", "sd")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
		}
		ln, err = net.Listen("unix", filepath.Join(dir, "s.sock"))
	default:
		t.Fatalf("unknown network %q", network)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", network, err)
	}
	return ln
}

// bareListen accepts bare descriptors (package rawconn) on ln's socket,
// as the supervisor does for protocols over plain TCP and unix sockets.
type bareListen struct {
	net.Listener // the socket's, for its address and the final Close
	bare         *rawconn.Listener
}

func bareListener(t testing.TB, ln net.Listener) net.Listener {
	t.Helper()
	_, isUnix := ln.(*net.UnixListener)
	bl, err := rawconn.NewListener(ln.(syscall.Conn), isUnix, ln.Addr())
	if errors.Is(err, errors.ErrUnsupported) {
		ln.Close()
		t.Skip("no bare descriptors on this platform")
	}
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	return &bareListen{Listener: ln, bare: bl}
}

func (l *bareListen) Accept() (net.Conn, error) { return l.bare.Accept() }

func (l *bareListen) Close() error {
	l.bare.Close()
	return l.Listener.Close()
}

// pair is one connected client/server socket pair, TLS already handshaken
// when asked for.
type pair struct {
	client    net.Conn // what the test talks through (*tls.Conn for TLS)
	clientRaw net.Conn // the client's socket
	server    net.Conn // what NewConn gets (*tls.Conn for TLS)
	serverRaw net.Conn // the server's socket
}

// pairOpts tunes a pair before any byte moves.
type pairOpts struct {
	tls bool
	// Socket buffer sizes (0: leave the kernel's autotuning alone).
	clientRcv, clientSnd, serverRcv, serverSnd int
}

type bufferSetter interface {
	SetReadBuffer(int) error
	SetWriteBuffer(int) error
}

func setBuffers(t testing.TB, c net.Conn, rcv, snd int) {
	t.Helper()
	bs, ok := c.(bufferSetter)
	if !ok {
		return
	}
	if rcv > 0 {
		if err := bs.SetReadBuffer(rcv); err != nil {
			t.Fatalf("SetReadBuffer: %v", err)
		}
	}
	if snd > 0 {
		if err := bs.SetWriteBuffer(snd); err != nil {
			t.Fatalf("SetWriteBuffer: %v", err)
		}
	}
}

// dialPair listens on network, connects a client and accepts it.
func dialPair(t testing.TB, network string, o pairOpts) *pair {
	t.Helper()
	ln := listen(t, network)
	defer ln.Close()
	return dialPairOn(t, ln, o)
}

func dialPairOn(t testing.TB, ln net.Listener, o pairOpts) *pair {
	t.Helper()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	cl, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	a := <-ch
	if a.err != nil {
		cl.Close()
		t.Fatalf("accept: %v", a.err)
	}
	p := &pair{client: cl, clientRaw: cl, server: a.c, serverRaw: a.c}
	t.Cleanup(func() { p.clientRaw.Close() })
	setBuffers(t, p.clientRaw, o.clientRcv, o.clientSnd)
	setBuffers(t, p.serverRaw, o.serverRcv, o.serverSnd)
	if o.tls {
		scfg, ccfg := testTLS(t)
		ts := tls.Server(p.serverRaw, scfg)
		tc := tls.Client(p.clientRaw, ccfg)
		errc := make(chan error, 1)
		go func() { errc <- ts.Handshake() }()
		cerr := tc.Handshake()
		serr := <-errc
		if cerr != nil || serr != nil {
			p.serverRaw.Close()
			t.Fatalf("TLS handshake: client %v, server %v", cerr, serr)
		}
		p.client, p.server = tc, ts
	}
	return p
}

// readAll reads from c until EOF or error, with an overall deadline.
func readAll(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	var buf bytes.Buffer
	_, err := io.Copy(&buf, c)
	if err == nil {
		err = io.EOF // io.Copy reports EOF as nil
	}
	return buf.Bytes(), err
}

// isReset reports whether err is the peer's RST.
func isReset(err error) bool {
	return errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}

// inputQueued is the number of bytes received by c's socket and not read yet.
func inputQueued(t testing.TB, c net.Conn) int {
	t.Helper()
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatalf("inputQueued: %T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := -1
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), inqRequest) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatalf("SIOCINQ: %v", ierr)
	}
	return n
}

// --- serving ---

// served is one Conn being served in its own goroutine.
type served struct {
	c      *Conn
	done   chan struct{}
	reason error
	start  time.Time
}

// serve runs NewConn(nc, opts).Serve(p) in a goroutine. The test's cleanup
// aborts the connection if it is still open, so no goroutine outlives it.
func serve(t testing.TB, nc net.Conn, opts ConnOptions, p framework.Protocol) *served {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger
	}
	s := &served{c: NewConn(nc, &opts), done: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(s.done)
		s.reason = s.c.Serve(p)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			s.c.Abort(errTestCleanup)
			<-s.done
		}
	})
	return s
}

// wait waits up to d for Serve to return and gives its reason. If it does
// not return, the connection is aborted and the test fails.
func (s *served) wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-s.done:
		return s.reason
	case <-time.After(d):
	}
	s.c.Abort(errTestCleanup)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("Serve did not return within %v, nor after Abort", d)
	}
	t.Fatalf("Serve did not return within %v (aborted it)", d)
	return nil
}

func (s *served) finished() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// --- the recording protocol ---

// recorder is a framework.Protocol that logs its callbacks and checks the
// framework's guarantees as they happen: ConnectionMade first and once,
// DataReceived never empty, never before ConnectionMade, never after
// ConnectionLost, never after the protocol called
// LoseConnection/AbortConnection, never while the protocol has paused the
// transport; ConnectionLost exactly once; no two callbacks at the same time. Hooks customise behaviour.
type recorder struct {
	onMade func(r *recorder)
	onData func(r *recorder, b []byte)
	onLost func(r *recorder, reason error)
	keep   bool // keep a copy of the received bytes

	tr     framework.Transport
	active atomic.Int32
	lostCh chan struct{}

	mu         sync.Mutex
	events     []string
	made, lost int
	madeDone   bool // ConnectionMade (and onMade) returned
	chunks     int
	received   int
	data       bytes.Buffer
	closing    bool // the protocol called LoseConnection or AbortConnection
	paused     bool // the protocol paused the transport
	reason     error
	violations []string
}

func newRecorder() *recorder { return &recorder{lostCh: make(chan struct{})} }

func echoRecorder() *recorder {
	r := newRecorder()
	r.onData = func(r *recorder, b []byte) { r.tr.Write(b) }
	return r
}

func (r *recorder) violate(format string, args ...any) {
	r.mu.Lock()
	r.violations = append(r.violations, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *recorder) enter(name string) {
	if n := r.active.Add(1); n != 1 {
		r.violate("%s overlaps another callback (%d running)", name, n)
	}
}

func (r *recorder) exit() { r.active.Add(-1) }

func (r *recorder) ConnectionMade(t framework.Transport) {
	r.enter("ConnectionMade")
	defer r.exit()
	r.mu.Lock()
	if r.made != 0 || r.lost != 0 || r.chunks != 0 {
		r.violations = append(r.violations, fmt.Sprintf("ConnectionMade out of order (made=%d lost=%d chunks=%d)", r.made, r.lost, r.chunks))
	}
	r.made++
	r.tr = t
	r.events = append(r.events, "made")
	r.mu.Unlock()
	if t == nil {
		r.violate("ConnectionMade with a nil transport")
	}
	if r.onMade != nil {
		r.onMade(r)
	}
	r.mu.Lock()
	r.madeDone = true
	r.mu.Unlock()
}

func (r *recorder) DataReceived(b []byte) {
	r.enter("DataReceived")
	defer r.exit()
	r.mu.Lock()
	switch {
	case r.made != 1:
		r.violations = append(r.violations, "DataReceived before ConnectionMade")
	case r.lost != 0:
		r.violations = append(r.violations, "DataReceived after ConnectionLost")
	case r.closing:
		r.violations = append(r.violations, "DataReceived after LoseConnection/AbortConnection")
	case r.paused:
		r.violations = append(r.violations, "DataReceived while paused")
	case len(b) == 0:
		r.violations = append(r.violations, "empty DataReceived")
	case len(b) > readBufferSize:
		r.violations = append(r.violations, fmt.Sprintf("DataReceived of %d bytes, more than one read buffer", len(b)))
	}
	r.chunks++
	r.received += len(b)
	if r.keep {
		r.data.Write(b)
	}
	if len(r.events) < 64 {
		r.events = append(r.events, "data")
	}
	r.mu.Unlock()
	if r.onData != nil {
		r.onData(r, b)
	}
}

func (r *recorder) ConnectionLost(reason error) {
	r.enter("ConnectionLost")
	defer r.exit()
	r.mu.Lock()
	if r.made != 1 || r.lost != 0 {
		r.violations = append(r.violations, fmt.Sprintf("ConnectionLost out of order (made=%d lost=%d)", r.made, r.lost))
	}
	if reason == nil {
		r.violations = append(r.violations, "ConnectionLost with a nil reason")
	}
	r.lost++
	r.reason = reason
	r.events = append(r.events, "lost")
	first := r.lost == 1
	r.mu.Unlock()
	if r.onLost != nil {
		r.onLost(r, reason)
	}
	if first {
		close(r.lostCh)
	}
}

// lose and abort are LoseConnection and AbortConnection called from inside
// a callback: no DataReceived may follow.
func (r *recorder) lose() {
	r.mu.Lock()
	r.closing = true
	r.mu.Unlock()
	r.tr.LoseConnection()
}

func (r *recorder) abort() {
	r.mu.Lock()
	r.closing = true
	r.mu.Unlock()
	r.tr.AbortConnection()
}

// pause pauses the transport from inside a callback; resume may be called
// from anywhere.
func (r *recorder) pause() {
	r.mu.Lock()
	r.paused = true
	r.mu.Unlock()
	r.tr.PauseProducing()
}

func (r *recorder) resume() {
	r.mu.Lock()
	r.paused = false
	r.mu.Unlock()
	r.tr.ResumeProducing()
}

func (r *recorder) receivedBytes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.received
}

func (r *recorder) chunkCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.chunks
}

func (r *recorder) madeYet() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.madeDone
}

func (r *recorder) isLost() bool {
	select {
	case <-r.lostCh:
		return true
	default:
		return false
	}
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.data.Bytes())
}

// check asserts every invariant once the connection is over, and that
// ConnectionLost got the reason Serve returned.
func (r *recorder) check(t testing.TB, served error) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range r.violations {
		t.Errorf("protocol invariant violated: %s", v)
	}
	if r.made != 1 || r.lost != 1 {
		t.Errorf("ConnectionMade %d times, ConnectionLost %d times; want 1 and 1 (events %v)", r.made, r.lost, r.events)
	}
	if r.reason != served {
		t.Errorf("ConnectionLost got %v, Serve returned %v", r.reason, served)
	}
	if len(r.events) == 0 || r.events[0] != "made" || r.events[len(r.events)-1] != "lost" {
		t.Errorf("events out of order: %v", r.events)
	}
}

// --- goroutine inspection ---

// serveBlockedInRead reports whether some goroutine is parked in the
// netpoller inside Conn.read, i.e. Serve's goroutine waits for input.
// serveWaitingForInput reports whether c's reader waits for input: parked
// in the idle poller, or blocked in a read.
func serveWaitingForInput(c *Conn) bool {
	c.mu.Lock()
	parked := c.parked
	c.mu.Unlock()
	return parked || serveBlockedInRead()
}

func serveBlockedInRead() bool {
	return someGoroutine(func(stack string) bool {
		return strings.Contains(stack, "[IO wait") && strings.Contains(stack, "engine.(*Conn).read(")
	})
}

// someGoroutine reports whether the stack of some goroutine matches.
func someGoroutine(match func(stack string) bool) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if match(g) {
			return true
		}
	}
	return false
}
