package supervisor

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/internal/certmake"
	"github.com/superd-dev/superd/internal/testkit"
)

// writePair writes a self-signed certificate for hosts, made as if at
// now (so its NotAfter tells it apart), to certFile and keyFile, and
// returns its leaf.
func writePair(t *testing.T, certFile, keyFile string, now time.Time, hosts ...string) *x509.Certificate {
	t.Helper()
	cert, err := endpoint.SelfSignedCertificate(hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err := endpoint.EncodeCertificatePEM(cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert.Leaf
}

// tlsEcho dials addr asking for name (trusting only want) and checks an
// echo; it returns the connection, still open.
func tlsEcho(t *testing.T, addr, name string, want *x509.Certificate) *tls.Conn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(want)
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, RootCAs: pool})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if got := c.ConnectionState().PeerCertificates[0]; got.SerialNumber.Cmp(want.SerialNumber) != 0 {
		t.Errorf("%s: served serial %v, want %v", name, got.SerialNumber, want.SerialNumber)
	}
	echoOn(t, c, "hello "+name)
	return c
}

func echoOn(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: %q, %v", buf, err)
	}
}

// A reload whose only change is the contents of a service's certificate
// and key files swaps them in place: the service and its connections stay,
// new handshakes get the new certificates, the expiry gauge follows; a file
// that does not load fails the reload and keeps the certificates served.
func TestReloadSwapsCertificatesInPlace(t *testing.T) {
	dir := t.TempDir()
	files := []endpoint.CertificateFiles{
		{CertFile: filepath.Join(dir, "one.crt"), KeyFile: filepath.Join(dir, "one.key")},
		{CertFile: filepath.Join(dir, "two.crt"), KeyFile: filepath.Join(dir, "two.key")},
	}
	now := time.Now()
	one := writePair(t, files[0].CertFile, files[0].KeyFile, now, "one.example")
	two := writePair(t, files[1].CertFile, files[1].KeyFile, now, "two.example")

	addr := testkit.FreeAddr(t, "tcp")
	ep := makeEndpoint(endpoint.KindTLS, addr)
	ep.Certificates = files
	f := &lifecycleFactory{}
	s, m := newTestSupervisor()
	sc := serviceConfig("c", f, config.Limits{}, ep)
	sc.CertFingerprint = "1"
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{sc}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	svc := s.services["c"]
	expiry := func(name string) float64 {
		return testutil.ToFloat64(m.CertExpiry.WithLabelValues("c", "tls:"+addr, name))
	}
	if expiry("one.example") != float64(one.NotAfter.Unix()) || expiry("two.example") != float64(two.NotAfter.Unix()) {
		t.Errorf("expiry at start: %v, %v", expiry("one.example"), expiry("two.example"))
	}

	old := tlsEcho(t, addr, "one.example", one)
	defer old.Close()
	tlsEcho(t, addr, "two.example", two).Close()

	// Renewed: one.example with a new certificate, two.example's block
	// now for three.example.
	one2 := writePair(t, files[0].CertFile, files[0].KeyFile, now.Add(-24*time.Hour), "one.example")
	three := writePair(t, files[1].CertFile, files[1].KeyFile, now.Add(-48*time.Hour), "three.example")
	next := serviceConfig("c", f, config.Limits{}, ep)
	next.Fingerprint = sc.Fingerprint
	next.CertFingerprint = "2"
	if err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{next}}); err != nil {
		t.Fatal(err)
	}
	if s.services["c"] != svc || f.starts.Load() != 1 || f.stops.Load() != 0 {
		t.Fatalf("the service was replaced (starts %d, stops %d)", f.starts.Load(), f.stops.Load())
	}
	echoOn(t, old, "still here after the swap")
	if got := old.ConnectionState().PeerCertificates[0]; got.SerialNumber.Cmp(one.SerialNumber) != 0 {
		t.Error("the open connection's certificate changed")
	}
	tlsEcho(t, addr, "one.example", one2).Close()
	tlsEcho(t, addr, "three.example", three).Close()
	// two.example is gone: the default (one.example's) is served.
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "two.example", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ConnectionState().PeerCertificates[0]; got.SerialNumber.Cmp(one2.SerialNumber) != 0 {
		t.Errorf("two.example after the swap: served %v, want the default", got.DNSNames)
	}
	c.Close()
	if expiry("one.example") != float64(one2.NotAfter.Unix()) || expiry("three.example") != float64(three.NotAfter.Unix()) {
		t.Errorf("expiry after the swap: %v, %v; want %v, %v", expiry("one.example"), expiry("three.example"), one2.NotAfter.Unix(), three.NotAfter.Unix())
	}
	if n := testutil.CollectAndCount(m.CertExpiry); n != 2 {
		t.Errorf("%d expiry series, want 2 (two.example's is gone)", n)
	}

	// A broken key file: the reload fails, nothing changes.
	if err := os.WriteFile(files[1].KeyFile, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	broken := serviceConfig("c", f, config.Limits{}, ep)
	broken.Fingerprint = sc.Fingerprint
	broken.CertFingerprint = "3"
	err = s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{broken}})
	if err == nil || !strings.Contains(err.Error(), `service "c": reload certificates: endpoint tls:`+addr+": certificate 2: ") {
		t.Fatalf("reload with a broken key file: %v", err)
	}
	tlsEcho(t, addr, "one.example", one2).Close()
	tlsEcho(t, addr, "three.example", three).Close()
	if expiry("three.example") != float64(three.NotAfter.Unix()) {
		t.Error("the failed reload changed the expiry gauge")
	}
	echoOn(t, old, "and after the failed reload")

	// Fixed: the same reload now succeeds (the failed one did not count).
	three2 := writePair(t, files[1].CertFile, files[1].KeyFile, now, "three.example")
	if err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{broken}}); err != nil {
		t.Fatal(err)
	}
	tlsEcho(t, addr, "three.example", three2).Close()
	if f.starts.Load() != 1 || s.services["c"] != svc {
		t.Errorf("starts %d after the swaps, want 1", f.starts.Load())
	}
}

// A certificate with neither a DNS name nor a common name (an IP address
// certificate, whose subject is empty) goes by its first IP address in the
// expiry gauge: two of them on one endpoint are two series, neither of
// them named "".
func TestCertificateExpiryOfIPAddressCertificates(t *testing.T) {
	dir := t.TempDir()
	var files []endpoint.CertificateFiles
	want := map[string]float64{}
	for i, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl, err := certmake.Template("", time.Now(), time.Duration(i+1)*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		certmake.AddSANs(tmpl, []string{ip})
		cert, err := certmake.Sign(tmpl, tmpl, key, key)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile, err := testkit.WriteCertificateFiles(dir, cert)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, endpoint.CertificateFiles{CertFile: certFile, KeyFile: keyFile})
		want[ip] = float64(cert.Leaf.NotAfter.Unix())
	}
	addr := testkit.FreeAddr(t, "tcp")
	ep := makeEndpoint(endpoint.KindTLS, addr)
	ep.Certificates = files
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("ip", &lifecycleFactory{}, config.Limits{}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	if n := testutil.CollectAndCount(m.CertExpiry); n != len(want) {
		t.Errorf("%d expiry series, want %d (one per certificate)", n, len(want))
	}
	for ip, notAfter := range want {
		if got := testutil.ToFloat64(m.CertExpiry.WithLabelValues("ip", "tls:"+addr, ip)); got != notAfter {
			t.Errorf("expiry of %s: %v, want %v", ip, got, notAfter)
		}
	}
}
