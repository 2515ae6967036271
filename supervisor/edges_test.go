package supervisor

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/metrics"
)

// startStuck starts service name with f (given a greeting larger than the
// socket buffers hold) and connects a client that never reads, so that
// connection cannot drain and only an abort at a timeout ends it.
func startStuck(t *testing.T, name string, f *lifecycleFactory) (s *Supervisor, m *metrics.Metrics, addr string, c net.Conn) {
	t.Helper()
	f.greet = make([]byte, 32<<20)
	addr = testkit.FreeAddr(t, "tcp")
	s, m = newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig(name, f, config.Limits{MaxPendingOutput: 64 << 20}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(m.ConnectionsActive.WithLabelValues(name, "lifecycle")) == 1
	})
	return s, m, addr, c
}

// A service removed by reload drains in the background; a later reload adds
// a service with the same name and factory before that drain ends. The end
// of the old drain must leave the series the new instance uses.
func TestReaddedServiceKeepsItsSeries(t *testing.T) {
	oldF, newF := &lifecycleFactory{}, &lifecycleFactory{}
	s, m, addr, c := startStuck(t, "x", oldF)
	defer s.Shutdown(time.Second)
	defer c.Close()

	// Reload 1 removes x: its instance drains for up to 500ms.
	if err := s.Reload(&config.File{ShutdownTimeout: 500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// Reload 2 adds x back (same name, same factory) while the old one drains.
	if err := s.Reload(&config.File{ShutdownTimeout: 500 * time.Millisecond, Services: []*config.Service{
		serviceConfig("x", newF, config.Limits{}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return oldF.stops.Load() == 1 }) // the old drain ended
	dialEcho(t, "tcp", addr, "served by the new x").Close()

	if n := testutil.CollectAndCount(m.FactoryUp, "superd_factory_up"); n != 1 {
		t.Errorf("superd_factory_up has %d series while x runs, want 1", n)
	}
	if n := testutil.CollectAndCount(m.ConnectionsTotal, "superd_connections_total"); n != 1 {
		t.Errorf("superd_connections_total has %d series while x runs, want 1", n)
	}
	if n := testutil.CollectAndCount(m.ConnectionsRejected, "superd_connections_rejected_total"); n == 0 {
		t.Errorf("superd_connections_rejected_total has no series while x runs")
	}
}

// Shutdown aborts what is still open after its own timeout, including a
// service that an earlier reload removed and that still drains under that
// reload's longer timeout.
func TestShutdownBoundsReloadDrains(t *testing.T) {
	s, _, _, c := startStuck(t, "gone", &lifecycleFactory{})
	defer c.Close()
	// The reload removes the service; the file then says 5s.
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	// A later reload lowers shutdown_timeout; then SIGTERM.
	if err := s.Reload(&config.File{ShutdownTimeout: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s.Shutdown(s.ShutdownTimeout())
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Shutdown(200ms) took %v: it waited for a reload's drain instead of aborting it", el.Round(time.Millisecond))
	}
}

// A reload that changes only the mode of a unix endpoint carries the socket
// over and applies the new mode to its file.
func TestReloadAppliesUnixSocketMode(t *testing.T) {
	f := &lifecycleFactory{}
	path := filepath.Join(t.TempDir(), "m.sock")
	ep := func(mode os.FileMode) endpoint.Config {
		return unixEndpoint(path, mode)
	}
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, ep(0o666)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket file before reload: %v %v", fi.Mode(), err)
	}
	if err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, ep(0o600)),
	}}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("socket file mode after a reload to mode 0600: %#o", got)
	}
}

// A reload that changes the mode of a unix socket it keeps, after the path
// was swapped for a symbolic link: the link's target keeps its mode, and
// the link is not removed at shutdown.
func TestReloadUnixSocketModeNeverFollowsSymlink(t *testing.T) {
	f := &lifecycleFactory{}
	dir := t.TempDir()
	path := filepath.Join(dir, "m.sock")
	target := filepath.Join(dir, "precious")
	if err := os.WriteFile(target, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	ep := func(mode os.FileMode) endpoint.Config {
		return unixEndpoint(path, mode)
	}
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, ep(0o600)),
	}}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, ep(0o666)),
	}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the link's target after a reload to mode 0666: %v, %v; want 0600", fi.Mode(), err)
	}
	s.Shutdown(time.Second)
	if got, err := os.Readlink(path); err != nil || got != target {
		t.Errorf("the symbolic link after shutdown: %q, %v; want it left alone", got, err)
	}
}

// A reload that fails leaves the running services untouched, metrics
// included: no series for an endpoint that never served.
func TestFailedReloadLeavesNoEndpointSeries(t *testing.T) {
	f := &lifecycleFactory{}
	a, b := testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp")
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("x", f, config.Limits{}, tcpEndpoint(a)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	err = s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("x", &lifecycleFactory{}, config.Limits{}, tcpEndpoint(a), tcpEndpoint(b)),
		serviceConfig("y", &lifecycleFactory{}, config.Limits{}, tcpEndpoint(busy.Addr().String())),
	}})
	if err == nil {
		t.Fatal("reload onto a busy port succeeded")
	}
	if n := testutil.CollectAndCount(m.ConnectionsTotal, "superd_connections_total"); n != 1 {
		t.Errorf("superd_connections_total has %d series after a failed reload, want 1 (tcp:%s)", n, a)
	}
}

// startOnIPv6Loopback starts service name with lim on a free [::1] port,
// or skips the test where there is no IPv6 loopback.
func startOnIPv6Loopback(t *testing.T, name string, lim config.Limits) (addr string, m *metrics.Metrics) {
	t.Helper()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	addr = ln.Addr().String()
	ln.Close()
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{serviceConfig(name, &lifecycleFactory{}, lim, tcpEndpoint(addr))}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(time.Second) })
	return addr, m
}

// allow and deny apply to the peer's own address, not to its per-source key
// (an IPv6 address masked to ipv6_prefix bits: ::1 would be ::): a deny of
// one IPv6 host keeps it out, an allow of one host lets it in.
func TestDenyIPv6HostWithDefaultPrefix(t *testing.T) {
	addr, m := startOnIPv6Loopback(t, "d", config.Limits{Deny: []netip.Prefix{netip.MustParsePrefix("::1/128")}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hi"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _ := c.Read(make([]byte, 2)); n > 0 {
		t.Errorf("a peer at ::1 was served although deny = [\"::1/128\"]")
	}
	if got := testutil.ToFloat64(m.ConnectionsRejected.WithLabelValues("d", "lifecycle", "denied")); got != 1 {
		t.Errorf("rejected{denied} = %v, want 1", got)
	}
}

func TestAllowIPv6HostWithDefaultPrefix(t *testing.T) {
	addr, _ := startOnIPv6Loopback(t, "a", config.Limits{Allow: []netip.Prefix{netip.MustParsePrefix("::1/128")}})
	dialEcho(t, "tcp", addr, "let me in").Close()
}

// SIGUSR1 reaches an instance that a reload replaced and that still drains:
// it keeps writing meanwhile, so it too must let go of a rotated file.
func TestReopenReachesDrainingInstance(t *testing.T) {
	oldF, newF := &lifecycleFactory{}, &lifecycleFactory{}
	s, _, addr, c := startStuck(t, "x", oldF)
	defer s.Shutdown(time.Second)
	defer c.Close()
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("x", newF, config.Limits{}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	s.Reopen()
	if oldF.stops.Load() != 0 {
		t.Fatal("the old instance stopped before Reopen: the test proves nothing")
	}
	if oldF.reopens.Load() != 1 || newF.reopens.Load() != 1 {
		t.Errorf("reopens: draining instance %d, running instance %d; want 1 and 1", oldF.reopens.Load(), newF.reopens.Load())
	}
}
