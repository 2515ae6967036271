package supervisor

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/metrics"
)

// The idle-connection poller is one goroutine for the whole process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/superd-dev/superd/internal/engine.(*idlePoller).loop"))
}

// lifecycleFactory counts its hooks and records every connection's events.
type lifecycleFactory struct {
	starts, stops atomic.Int32
	reopens       atomic.Int32
	startErr      error
	mu            sync.Mutex
	lost          []error
	refuse        bool
	greet         []byte // written in ConnectionMade
}

func (f *lifecycleFactory) StartFactory() error {
	f.starts.Add(1)
	return f.startErr
}

func (f *lifecycleFactory) StopFactory() error { f.stops.Add(1); return nil }

func (f *lifecycleFactory) Reopen() error { f.reopens.Add(1); return nil }

func (f *lifecycleFactory) BuildProtocol(net.Addr) framework.Protocol {
	if f.refuse {
		return nil
	}
	return &recorder{f: f}
}

type recorder struct {
	framework.BaseProtocol
	f *lifecycleFactory
}

func (r *recorder) ConnectionMade(t framework.Transport) {
	r.BaseProtocol.ConnectionMade(t)
	if r.f.greet != nil {
		t.Write(r.f.greet)
	}
}

func (r *recorder) DataReceived(b []byte) { r.Transport.Write(b) }

func (r *recorder) ConnectionLost(reason error) {
	r.f.mu.Lock()
	r.f.lost = append(r.f.lost, reason)
	r.f.mu.Unlock()
}

func (f *lifecycleFactory) lostReasons() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.lost...)
}

// makeEndpoint returns the endpoint the configuration would make of
// `endpoint "KIND" { address = ADDR }` (or `path = ADDR` for unix).
func makeEndpoint(kind, addr string) endpoint.Config {
	a, err := endpoint.ParseAddress(kind, addr)
	if err != nil {
		panic(err)
	}
	return endpoint.Config{Kind: kind, Addr: a, Label: kind + ":" + addr}
}

func tcpEndpoint(addr string) endpoint.Config { return makeEndpoint(endpoint.KindTCP, addr) }

func unixEndpoint(path string, mode fs.FileMode) endpoint.Config {
	ep := makeEndpoint(endpoint.KindUnix, path)
	ep.Mode = mode
	return ep
}

func serviceConfig(name string, f framework.Factory, lim config.Limits, eps ...endpoint.Config) *config.Service {
	spec := &framework.Spec{Name: "lifecycle", New: func(*framework.Env, any) (framework.Factory, error) { return f, nil }}
	// What the tests leave at zero takes the configuration's default.
	def := config.DefaultLimits()
	if lim.MaxPendingOutput == 0 {
		lim.MaxPendingOutput = def.MaxPendingOutput
	}
	if lim.IPv6Prefix == 0 {
		lim.IPv6Prefix = def.IPv6Prefix
	}
	return &config.Service{
		Name: name, Factory: "lifecycle", Spec: spec,
		Limits: lim, Endpoints: eps,
		Fingerprint: fmt.Sprintf("%s %p %+v %+v", name, f, lim, eps),
	}
}

func newTestSupervisor() (*Supervisor, *metrics.Metrics) {
	m := metrics.New("test")
	return New(slog.New(slog.NewTextHandler(io.Discard, nil)), m), m
}

func dialEcho(t *testing.T, network, addr, msg string) net.Conn {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: %q, %v", buf, err)
	}
	return c
}

func TestStartStopFactoryOncePerServiceWithSeveralEndpoints(t *testing.T) {
	f := &lifecycleFactory{}
	a1, a2 := testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp")
	sock := filepath.Join(t.TempDir(), "s.sock")
	sc := serviceConfig("multi", f, config.Limits{}, tcpEndpoint(a1), tcpEndpoint(a2),
		unixEndpoint(sock, 0o660))
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{sc}, ShutdownTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if got := f.starts.Load(); got != 1 {
		t.Fatalf("StartFactory ran %d times, want 1", got)
	}
	conns := []net.Conn{dialEcho(t, "tcp", a1, "one"), dialEcho(t, "tcp", a2, "two"), dialEcho(t, "unix", sock, "three")}
	if err := s.Shutdown(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		c.Close()
	}
	if got := f.stops.Load(); got != 1 {
		t.Fatalf("StopFactory ran %d times, want 1", got)
	}
	if got := testutil.ToFloat64(m.FactoryUp.WithLabelValues("multi", "lifecycle")); got != 0 {
		t.Errorf("factory_up = %v after shutdown", got)
	}
	if got := testutil.ToFloat64(m.FactoryStarts.WithLabelValues("multi", "lifecycle")); got != 1 {
		t.Errorf("factory_starts_total = %v", got)
	}
	reasons := f.lostReasons()
	if len(reasons) != 3 {
		t.Fatalf("ConnectionLost ran %d times, want 3", len(reasons))
	}
	for _, r := range reasons {
		if !framework.IsClean(r) {
			t.Errorf("shutdown reason %v, want a clean close", r)
		}
	}
}

func TestFactoryStartFailureStopsNothingElseAndReleasesSockets(t *testing.T) {
	good, bad := &lifecycleFactory{}, &lifecycleFactory{startErr: errors.New("no database")}
	a1, a2 := testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp")
	s, _ := newTestSupervisor()
	err := s.Start(&config.File{Services: []*config.Service{
		serviceConfig("good", good, config.Limits{}, tcpEndpoint(a1)),
		serviceConfig("bad", bad, config.Limits{}, tcpEndpoint(a2)),
	}})
	if err == nil || !errors.Is(err, bad.startErr) {
		t.Fatalf("Start: %v", err)
	}
	if good.starts.Load() != 1 || good.stops.Load() != 1 {
		t.Errorf("the service started before the failure: starts %d stops %d, want 1 1", good.starts.Load(), good.stops.Load())
	}
	if bad.stops.Load() != 0 {
		t.Error("StopFactory ran for a factory that failed to start")
	}
	for _, a := range []string{a1, a2} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("socket %s not released: %v", a, err)
		}
		ln.Close()
	}
	s.Shutdown(time.Second)
}

// An endpoint that cannot listen (here a unix socket in a folder that does
// not exist, after a TCP endpoint bound fine) fails the start without
// starting the factory, so nothing is left started without a stop, and the
// endpoints already bound are released. Twisted starts a factory before
// binding a UNIX port and leaks that start when the bind fails; superd
// starts it once every endpoint is bound, as Twisted does for TCP.
func TestListenFailureStartsNoFactory(t *testing.T) {
	f := &lifecycleFactory{}
	addr := testkit.FreeAddr(t, "tcp")
	bad := filepath.Join(t.TempDir(), "missing", "s.sock")
	s, _ := newTestSupervisor()
	defer s.Shutdown(time.Second)
	err := s.Start(&config.File{Services: []*config.Service{
		serviceConfig("x", f, config.Limits{}, tcpEndpoint(addr), unixEndpoint(bad, 0o660)),
	}})
	if err == nil {
		t.Fatal("Start succeeded with an endpoint that cannot listen")
	}
	if f.starts.Load() != 0 || f.stops.Load() != 0 {
		t.Errorf("StartFactory ran %d times, StopFactory %d; want 0 and 0", f.starts.Load(), f.stops.Load())
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the endpoint bound before the failure was not released: %v", err)
	}
	ln.Close()
}

// CutShutdown aborts a shutdown's drain at once, also when it comes
// before Shutdown has taken its services out (a second signal right
// after the first): the drain does not wait for its timeout.
func TestCutShutdownBeforeShutdown(t *testing.T) {
	s, m, _, c := startStuck(t, "stuck", &lifecycleFactory{}) // never drains: the client reads nothing
	defer c.Close()
	s.CutShutdown()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(time.Hour) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the shutdown waited for its timeout after CutShutdown")
	}
	if got := testutil.ToFloat64(m.ConnectionsDropped.WithLabelValues("stuck", "lifecycle", "shutdown_timeout")); got != 1 {
		t.Errorf("dropped{shutdown_timeout} = %v, want 1", got)
	}
}

func TestShutdownTimeoutAbortsAndCounts(t *testing.T) {
	// The client never reads a greeting larger than the socket buffers, so
	// the drain can never finish and must be cut at the timeout.
	f := &lifecycleFactory{greet: make([]byte, 32<<20)}
	addr := testkit.FreeAddr(t, "tcp")
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{
		serviceConfig("stuck", f, config.Limits{MaxPendingOutput: 64 << 20}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, func() bool { return testutil.ToFloat64(m.ConnectionsActive.WithLabelValues("stuck", "lifecycle")) == 1 })
	start := time.Now()
	if err := s.Shutdown(300 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("shutdown returned after %v, before its timeout", el)
	}
	if got := testutil.ToFloat64(m.ConnectionsDropped.WithLabelValues("stuck", "lifecycle", "shutdown_timeout")); got != 1 {
		t.Errorf("dropped{shutdown_timeout} = %v, want 1", got)
	}
	if r := f.lostReasons(); len(r) != 1 || !errors.Is(r[0], framework.ErrShutdownTimeout) {
		t.Errorf("reasons %v", r)
	}
	if f.stops.Load() != 1 {
		t.Error("StopFactory did not run")
	}
}

func TestRefusedProtocolCountsFactoryRejection(t *testing.T) {
	f := &lifecycleFactory{refuse: true}
	addr := testkit.FreeAddr(t, "tcp")
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{serviceConfig("r", f, config.Limits{}, tcpEndpoint(addr))}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("refused connection: %d %v", n, err)
	}
	c.Close()
	waitFor(t, func() bool {
		return testutil.ToFloat64(m.ConnectionsRejected.WithLabelValues("r", "lifecycle", "factory")) == 1
	})
	if got := testutil.ToFloat64(m.ConnectionsTotal.WithLabelValues("r", "lifecycle", "tcp:"+addr)); got != 0 {
		t.Errorf("connections_total = %v for a refused connection", got)
	}
}

func TestRateLimitAtAccept(t *testing.T) {
	f := &lifecycleFactory{}
	addr := testkit.FreeAddr(t, "tcp")
	s, m := newTestSupervisor()
	lim := config.Limits{RateLimit: &config.Rate{Rate: 0.001, Burst: 3}}
	if err := s.Start(&config.File{Services: []*config.Service{serviceConfig("rl", f, lim, tcpEndpoint(addr))}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	for i := 0; i < 3; i++ {
		dialEcho(t, "tcp", addr, "x").Close()
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("fourth connection not closed: %d %v", n, err)
	}
	c.Close()
	waitFor(t, func() bool {
		return testutil.ToFloat64(m.ConnectionsRejected.WithLabelValues("rl", "lifecycle", "rate_limit")) == 1
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// StartThen runs its hook once the listeners are bound and the factories
// started, before any connection is accepted; a failing hook stops
// everything again and frees the ports.
func TestStartThenRunsBeforeServing(t *testing.T) {
	f := &lifecycleFactory{greet: []byte("hi\n")}
	addr := testkit.FreeAddr(t, "tcp")
	s, _ := newTestSupervisor()
	cfg := &config.File{Services: []*config.Service{serviceConfig("a", f, config.Limits{}, tcpEndpoint(addr))}}
	err := s.StartThen(cfg, func() error {
		if f.starts.Load() != 1 {
			t.Error("the hook ran before the factory started")
		}
		// Bound: the connection waits in the listen queue; not served
		// yet: no greeting comes while the hook runs.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Errorf("the listener is not bound when the hook runs: %v", err)
			return errors.New("hook failed")
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, _ := c.Read(make([]byte, 8)); n > 0 {
			t.Error("a connection was served before the hook returned")
		}
		return errors.New("cannot drop privileges")
	})
	if err == nil || err.Error() != "cannot drop privileges" {
		t.Fatalf("StartThen: %v, want the hook's error", err)
	}
	if f.stops.Load() != 1 {
		t.Errorf("factory stops after a failed hook: %d, want 1", f.stops.Load())
	}
	if got := s.Services(); len(got) != 0 {
		t.Errorf("services after a failed hook: %v", got)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port is still held after a failed hook: %v", err)
	}
	ln.Close()
	s.Shutdown(time.Second)
}
