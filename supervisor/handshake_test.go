package supervisor

import (
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/internal/testkit"
)

// Clients that start a TLS handshake and never finish it hold a descriptor
// and a goroutine each: they must be visible (superd_tls_handshakes_in_progress)
// and bounded by max_connections, so a flood of them cannot exhaust the
// process while the connection gauge reads 0.
func TestStalledTLSHandshakesAreCountedAndBounded(t *testing.T) {
	const limit, clients = 20, 30
	addr := testkit.FreeAddr(t, "tcp")
	f := &lifecycleFactory{}
	s, m := newTestSupervisor()
	ep := makeEndpoint(endpoint.KindTLS, addr)
	ep.SelfSigned = true
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("tls", f, config.Limits{MaxConnections: limit}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)

	// The first bytes of a ClientHello record header, then nothing.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range clients {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte{0x16, 0x03, 0x01}); err != nil {
			t.Fatal(err)
		}
	}
	handshakes := m.TLSHandshakes.WithLabelValues("tls")
	rejected := m.ConnectionsRejected.WithLabelValues("tls", "lifecycle", "max_connections")
	waitFor(t, func() bool {
		return testutil.ToFloat64(handshakes) == limit && testutil.ToFloat64(rejected) == clients-limit
	})
	if got := testutil.ToFloat64(m.ConnectionsActive.WithLabelValues("tls", "lifecycle")); got != 0 {
		t.Errorf("connections_active = %v during handshakes, want 0 (no protocol yet)", got)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	waitFor(t, func() bool { return testutil.ToFloat64(handshakes) == 0 })
}

// A TLS endpoint's certificate expiry is exported from activation, and
// goes with the service.
func TestCertificateExpiryGauge(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp")
	f := &lifecycleFactory{}
	s, m := newTestSupervisor()
	ep := makeEndpoint(endpoint.KindTLS, addr)
	ep.SelfSigned = true
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("c", f, config.Limits{}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	svc := s.services["c"]
	leaf, err := x509.ParseCertificate(svc.bindings[0].tls.Certificates()[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	name := leaf.Subject.CommonName
	if len(leaf.DNSNames) > 0 {
		name = leaf.DNSNames[0]
	}
	got := testutil.ToFloat64(m.CertExpiry.WithLabelValues("c", "tls:"+addr, name))
	if got != float64(leaf.NotAfter.Unix()) || got < float64(time.Now().Unix()) {
		t.Errorf("expiry %v, want %v", got, leaf.NotAfter.Unix())
	}
	s.Reload(&config.File{ShutdownTimeout: time.Second})
	s.Shutdown(time.Second)
	if n := testutil.CollectAndCount(m.CertExpiry); n != 0 {
		t.Errorf("%d expiry series left after the service was removed", n)
	}
}
