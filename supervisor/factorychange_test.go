package supervisor

import (
	"crypto/tls"
	"crypto/x509"
	"math"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/metrics"
)

// tlsWebConfig is service web of factory fact on a tls endpoint at addr
// serving a fresh web.example certificate valid from now (written to
// files under dir named after fact).
func tlsWebConfig(t *testing.T, f *lifecycleFactory, fact, dir, addr string, now time.Time, lim config.Limits) (*config.Service, *x509.Certificate) {
	t.Helper()
	files := endpoint.CertificateFiles{CertFile: filepath.Join(dir, fact+".crt"), KeyFile: filepath.Join(dir, fact+".key")}
	cert := writePair(t, files.CertFile, files.KeyFile, now, "web.example")
	ep := makeEndpoint(endpoint.KindTLS, addr)
	ep.Certificates = []endpoint.CertificateFiles{files}
	sc := serviceConfig("web", f, lim, ep)
	sc.Factory = fact
	return sc, cert
}

// checkSuccessorSeries checks that the series of service web are the
// successor's (factory beta, serving cert on addr), and that those it
// holds itself are the ones exported: a TLS handshake under way shows in
// superd_tls_handshakes_in_progress, a connection it serves in its
// superd_connections_total.
func checkSuccessorSeries(t *testing.T, m *metrics.Metrics, addr string, cert *x509.Certificate) {
	t.Helper()
	for name, n := range map[string]int{
		"superd_tls_certificate_expiry_timestamp_seconds": testutil.CollectAndCount(m.CertExpiry),
		"superd_tls_handshakes_in_progress":               testutil.CollectAndCount(m.TLSHandshakes),
		"superd_connections_total":                        testutil.CollectAndCount(m.ConnectionsTotal),
		"superd_factory_up":                               testutil.CollectAndCount(m.FactoryUp),
	} {
		if n != 1 {
			t.Errorf("%s has %d series after the old instance stopped, want 1 (the successor's)", name, n)
		}
	}
	if got := testutil.ToFloat64(m.FactoryUp.WithLabelValues("web", "beta")); got != 1 {
		t.Errorf("factory_up{web,beta} = %v, want 1", got)
	}
	// Read through the families (not WithLabelValues, which would make a
	// series that was deleted again): exactly the successor's.
	if got := only(m.CertExpiry); got != float64(cert.NotAfter.Unix()) {
		t.Errorf("expiry %v, want the successor's certificate's NotAfter %v", got, cert.NotAfter.Unix())
	}
	if got := testutil.ToFloat64(m.CertExpiry.WithLabelValues("web", "tls:"+addr, "web.example")); got != float64(cert.NotAfter.Unix()) {
		t.Errorf("expiry{web,tls:%s,web.example} = %v, want %v", addr, got, cert.NotAfter.Unix())
	}

	// A handshake under way is counted in the exported series.
	stalled, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stalled.Write([]byte{0x16, 0x03, 0x01}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return only(m.TLSHandshakes) == 1 })
	stalled.Close()
	waitFor(t, func() bool { return only(m.TLSHandshakes) == 0 })

	// A completed handshake and a connection served by the successor.
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "web.example", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	echoOn(t, c, "served by web of beta")
	c.Close()
	if got := only(m.ConnectionsTotal); got != 1 {
		t.Errorf("exported connections_total = %v, want 1 (the successor's connection)", got)
	}
	if got := only(m.TLSHandshakes); got != 0 {
		t.Errorf("exported handshakes_in_progress = %v after the handshake, want 0", got)
	}
}

// only is the value of c's one series, or NaN when c has not exactly one
// (it makes none, as WithLabelValues would).
func only(c prometheus.Collector) float64 {
	if testutil.CollectAndCount(c) != 1 {
		return math.NaN()
	}
	return testutil.ToFloat64(c)
}

// removeWeb removes service web (served by f) altogether, which still
// deletes every series of it.
func removeWeb(t *testing.T, s *Supervisor, m *metrics.Metrics, f *lifecycleFactory) {
	t.Helper()
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.stops.Load() == 1 })
	s.draining.Wait()
	checkNoWebSeries(t, m)
}

// checkNoWebSeries checks that service web left no series.
func checkNoWebSeries(t *testing.T, m *metrics.Metrics) {
	t.Helper()
	for name, n := range map[string]int{
		"superd_tls_certificate_expiry_timestamp_seconds": testutil.CollectAndCount(m.CertExpiry),
		"superd_tls_handshakes_in_progress":               testutil.CollectAndCount(m.TLSHandshakes),
		"superd_connections_total":                        testutil.CollectAndCount(m.ConnectionsTotal),
		"superd_connections_rejected_total":               testutil.CollectAndCount(m.ConnectionsRejected),
		"superd_factory_up":                               testutil.CollectAndCount(m.FactoryUp),
		"superd_connections_active":                       testutil.CollectAndCount(m.ConnectionsActive),
	} {
		if n != 0 {
			t.Errorf("%s has %d series once web is removed, want 0", name, n)
		}
	}
}

// A reload that changes a service's factory but keeps its name replaces
// it: when the old instance (web, alpha) stops, the families labelled
// without a factory (handshakes in progress, certificate expiry) still
// belong to the successor (web, beta) and must stay, live.
func TestFactoryChangeKeepsSuccessorsSeries(t *testing.T) {
	dir := t.TempDir()
	addr := testkit.FreeAddr(t, "tcp")
	now := time.Now()
	oldF, newF := &lifecycleFactory{}, &lifecycleFactory{}
	oldSC, _ := tlsWebConfig(t, oldF, "alpha", dir, addr, now.Add(-48*time.Hour), config.Limits{})
	newSC, newCert := tlsWebConfig(t, newF, "beta", dir, addr, now, config.Limits{})
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{oldSC}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{newSC}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return oldF.stops.Load() == 1 })
	s.draining.Wait()
	checkSuccessorSeries(t, m, addr, newCert)

	removeWeb(t, s, m, newF)
}

// The same when web is removed and added back under another factory while
// its old instance still drains.
func TestReaddedUnderAnotherFactoryKeepsSeries(t *testing.T) {
	dir := t.TempDir()
	addr := testkit.FreeAddr(t, "tcp")
	now := time.Now()
	// The old instance greets with more than the socket buffers hold, to
	// a client that never reads: only the drain's timeout ends it.
	oldF, newF := &lifecycleFactory{greet: make([]byte, 32<<20)}, &lifecycleFactory{}
	oldSC, oldCert := tlsWebConfig(t, oldF, "alpha", dir, addr, now.Add(-48*time.Hour), config.Limits{MaxPendingOutput: 64 << 20})
	newSC, newCert := tlsWebConfig(t, newF, "beta", dir, addr, now, config.Limits{})
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{oldSC}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	pool := x509.NewCertPool()
	pool.AddCert(oldCert)
	stuck, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "web.example", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	waitFor(t, func() bool { return testutil.ToFloat64(m.ConnectionsActive.WithLabelValues("web", "alpha")) == 1 })

	// Reload 1 removes web: its instance drains for up to 500ms.
	if err := s.Reload(&config.File{ShutdownTimeout: 500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// Reload 2 adds web back under factory beta while the old one drains.
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{newSC}}); err != nil {
		t.Fatal(err)
	}
	if oldF.stops.Load() != 0 {
		t.Fatal("the old instance stopped before web was added back: nothing tested")
	}
	waitFor(t, func() bool { return oldF.stops.Load() == 1 })
	s.draining.Wait()
	checkSuccessorSeries(t, m, addr, newCert)
	removeWeb(t, s, m, newF)
}
