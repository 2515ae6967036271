package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/endpoint"
)

// tlsPair writes a self-signed certificate for hosts, made as if at now
// (its NotAfter tells one renewal from the next), to certFile and keyFile.
func tlsPair(t *testing.T, certFile, keyFile string, now time.Time, hosts ...string) *x509.Certificate {
	t.Helper()
	cert, err := endpoint.SelfSignedCertificate(hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err := endpoint.EncodeCertificatePEM(cert)
	if err != nil {
		t.Fatal(err)
	}
	for file, data := range map[string][]byte{certFile: chain, keyFile: key} {
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	return cert.Leaf
}

// tlsServed dials addr with conf (InsecureSkipVerify unless RootCAs are
// set), checks an echo, and returns the certificate it was served and
// the connection, still open.
func tlsServed(t *testing.T, addr string, conf *tls.Config) (*x509.Certificate, *tls.Conn) {
	t.Helper()
	if conf.RootCAs == nil {
		conf.InsecureSkipVerify = true
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, conf)
	if err != nil {
		t.Fatalf("TLS to %s (SNI %q): %v", addr, conf.ServerName, err)
	}
	if err := echoPayloadOn(c, []byte("hello over TLS"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return c.ConnectionState().PeerCertificates[0], c
}

// opensslSubject runs openssl s_client against addr with args (such as
// -servername NAME) and returns the subject line it prints.
func opensslSubject(t *testing.T, addr string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", append([]string{"s_client", "-connect", addr}, args...)...)
	out, err := cmd.CombinedOutput() // stdin is /dev/null: s_client ends after the handshake
	if err != nil {
		t.Fatalf("openssl s_client %v: %v\n%s", args, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "subject=") {
			// OpenSSL 3 writes "subject=CN = x", 1.1 "subject=CN=x".
			return strings.ReplaceAll(l, " = ", "=")
		}
	}
	t.Fatalf("openssl s_client %v printed no subject:\n%s", args, out)
	return ""
}

// A tls endpoint with certificate blocks serves each name its certificate
// to Go clients and to openssl s_client -servername, the first block's to
// clients sending no SNI or an unknown name; alpn is negotiated; each
// certificate has its expiry series; validate reports both forms at once.
func TestTLSCertificatesBySNI(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	leaves := map[string]*x509.Certificate{}
	var blocks strings.Builder
	for _, name := range []string{"one.example", "two.example"} {
		certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		hosts := []string{name}
		if name == "one.example" {
			hosts = append(hosts, "127.0.0.1")
		}
		leaves[name] = tlsPair(t, certFile, keyFile, now, hosts...)
		fmt.Fprintf(&blocks, "    certificate {\n      cert_file = %q\n      key_file  = %q\n    }\n", certFile, keyFile)
	}
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "names" {
  endpoint "tls" {
    address = %q
    alpn    = ["h2", "http/1.1"]
%s  }
}
`, addr, blocks.String()))
	d := startDaemon(t, path, maddr)

	for _, tc := range []struct{ sni, want string }{
		{"one.example", "one.example"},
		{"two.example", "two.example"},
		{"TWO.example", "two.example"},
		{"three.example", "one.example"},
		{"", "one.example"},
	} {
		got, c := tlsServed(t, addr, &tls.Config{ServerName: tc.sni})
		c.Close()
		if got.SerialNumber.Cmp(leaves[tc.want].SerialNumber) != 0 {
			t.Errorf("SNI %q: served %q, want %q's certificate", tc.sni, got.DNSNames, tc.want)
		}
	}
	// Verifying clients: each name, and no SNI (a Go client sends none to
	// an IP address) with the default's IP address.
	for _, name := range []string{"one.example", "two.example", "127.0.0.1"} {
		pool := x509.NewCertPool()
		want := leaves[name]
		if want == nil {
			want = leaves["one.example"]
		}
		pool.AddCert(want)
		_, c := tlsServed(t, addr, &tls.Config{ServerName: name, RootCAs: pool, NextProtos: []string{"http/1.1", "h2"}})
		if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Errorf("%s: ALPN %q, want h2", name, p)
		}
		c.Close()
	}

	fams := d.scrape()
	for name, leaf := range leaves {
		v, ok := metric(fams, "superd_tls_certificate_expiry_timestamp_seconds",
			map[string]string{"service": "names", "endpoint": "tls:" + addr, "name": name})
		if !ok || v != float64(leaf.NotAfter.Unix()) {
			t.Errorf("expiry of %s = %v (present %v), want %v", name, v, ok, leaf.NotAfter.Unix())
		}
	}

	t.Run("openssl", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl is not installed (`make test-tools` installs it): checked with Go clients only")
		}
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"-servername", "one.example"}, "CN=one.example"},
			{[]string{"-servername", "two.example"}, "CN=two.example"},
			{[]string{"-servername", "unknown.example"}, "CN=one.example"},
			{[]string{"-noservername"}, "CN=one.example"},
		} {
			if got := opensslSubject(t, addr, tc.args...); !strings.HasSuffix(got, tc.want) {
				t.Errorf("openssl s_client %v: %q, want %q", tc.args, got, tc.want)
			}
		}
	})
	d.stop(20 * time.Second)

	// validate: both forms in one endpoint, and an endpoint with none.
	bad, _ := writeConfig(t, fmt.Sprintf(`service "echo" "e" {
  endpoint "tls" {
    address   = "127.0.0.1:1"
    cert_file = %q
    key_file  = %q
%s  }
  endpoint "tls" { address = "127.0.0.1:2" }
}
`, filepath.Join(dir, "one.example.crt"), filepath.Join(dir, "one.example.key"), blocks.String()))
	out, err := exec.Command(superdBin, "validate", "-config", bad).CombinedOutput()
	if err == nil {
		t.Fatalf("validate accepted both forms:\n%s", out)
	}
	for _, want := range []string{"superd.hcl:6,5-16: Conflicting TLS settings", "superd.hcl:15,3-17: Missing TLS certificate"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
}

// SIGHUP after the certificate and key files were renewed in place: the
// service is not replaced (no new factory start, no "service replaced"),
// a connection opened before goes on, new handshakes get the renewed
// certificate, the expiry gauge follows. A broken file fails the reload
// and the renewed certificate stays. New paths do replace the service.
func TestTLSCertificateReloadInPlace(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	now := time.Now()
	first := tlsPair(t, certFile, keyFile, now, "127.0.0.1")
	addr := freeAddr(t)
	config := func(cert, key string) string {
		return fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "tls" {
  endpoint "tls" {
    address   = %q
    cert_file = %q
    key_file  = %q
  }
}
`, addr, cert, key)
	}
	path, maddr := writeConfig(t, config(certFile, keyFile))
	d := startDaemon(t, path, maddr)
	svc := map[string]string{"service": "tls"}
	expiry := map[string]string{"service": "tls", "endpoint": "tls:" + addr, "name": "127.0.0.1"}
	pool := func(leaf *x509.Certificate) *x509.CertPool {
		p := x509.NewCertPool()
		p.AddCert(leaf)
		return p
	}
	serial := func() string {
		t.Helper()
		got, c := tlsServed(t, addr, &tls.Config{})
		c.Close()
		return got.SerialNumber.String()
	}

	_, old := tlsServed(t, addr, &tls.Config{ServerName: "127.0.0.1", RootCAs: pool(first)})
	defer old.Close()
	d.waitMetric("superd_tls_certificate_expiry_timestamp_seconds", expiry, float64(first.NotAfter.Unix()))
	d.waitMetric("superd_factory_starts_total", svc, 1)

	// Renewed in place: same paths, new contents (a day older, so its
	// NotAfter differs).
	renewed := tlsPair(t, certFile, keyFile, now.Add(-24*time.Hour), "127.0.0.1")
	d.reload("success", 1)
	if got := serial(); got != renewed.SerialNumber.String() {
		t.Fatalf("after the reload a new handshake got serial %s, want the renewed %s", got, renewed.SerialNumber)
	}
	if err := echoPayloadOn(old, []byte("still here"), 10*time.Second); err != nil {
		t.Fatalf("the connection opened before the reload: %v", err)
	}
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(first.SerialNumber) != 0 {
		t.Error("the open connection's certificate changed")
	}
	d.waitMetric("superd_tls_certificate_expiry_timestamp_seconds", expiry, float64(renewed.NotAfter.Unix()))
	fams := d.scrape()
	if v, _ := metric(fams, "superd_factory_starts_total", svc); v != 1 {
		t.Errorf("factory_starts_total = %v after the swap, want 1: the service was replaced", v)
	}
	if v, _ := metric(fams, "superd_connections_active", svc); v != 1 {
		t.Errorf("connections_active = %v, want 1 (the connection from before)", v)
	}
	logs := d.stderr.String()
	if strings.Contains(logs, "service replaced") || !strings.Contains(logs, "certificates reloaded") {
		t.Errorf("log: want \"certificates reloaded\" and no \"service replaced\":\n%s", lastBytes(logs, 4<<10))
	}
	// A verifying client that trusts only the renewed certificate.
	_, c := tlsServed(t, addr, &tls.Config{ServerName: "127.0.0.1", RootCAs: pool(renewed)})
	c.Close()

	// A broken certificate file: the reload fails, the renewed
	// certificate stays, the open connection too.
	if err := os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.reload("failure", 1)
	d.waitMetric("superd_config_last_reload_successful", nil, 0)
	if st := getStatus(t, maddr, false); st.LastReload == nil || st.LastReload.Result != "failure" || !strings.Contains(st.LastReload.Error, "server.crt") {
		t.Errorf("status last_reload = %+v, want a failure naming server.crt", st.LastReload)
	}
	if got := serial(); got != renewed.SerialNumber.String() {
		t.Errorf("after the failed reload a new handshake got serial %s, want the renewed %s", got, renewed.SerialNumber)
	}
	if err := echoPayloadOn(old, []byte("and still"), 10*time.Second); err != nil {
		t.Fatalf("the connection opened before: %v", err)
	}
	if v, _ := metric(d.scrape(), "superd_tls_certificate_expiry_timestamp_seconds", expiry); v != float64(renewed.NotAfter.Unix()) {
		t.Errorf("the failed reload changed the expiry gauge to %v", v)
	}

	// Other paths: the service is replaced, as for any other change.
	otherCert, otherKey := filepath.Join(dir, "other.crt"), filepath.Join(dir, "other.key")
	other := tlsPair(t, otherCert, otherKey, now, "127.0.0.1")
	rewriteConfig(t, path, maddr, config(otherCert, otherKey))
	d.reload("success", 2)
	d.waitMetric("superd_factory_starts_total", svc, 2)
	if got := serial(); got != other.SerialNumber.String() {
		t.Errorf("after the new paths a new handshake got serial %s, want %s", got, other.SerialNumber)
	}
	old.Close()
	d.stop(20 * time.Second)
}

// examples/sni.hcl's service with two names serves each its certificate
// (as `make run-sni` writes them) and writes each connection to the access
// log with the name the client asked for.
func TestExampleSNIAndAccessLog(t *testing.T) {
	e := startExample(t, sniExamplePath, true)
	addr := e.addrs["127.0.0.1:7444"]
	logFile := e.paths["/tmp/superd-sni-access.log"]
	if addr == "" || logFile == "" || e.serves["127.0.0.1:7444"] != "echo" {
		t.Fatalf("examples/sni.hcl has no echo at 127.0.0.1:7444 (%q) or no access log at /tmp/superd-sni-access.log (%q)", addr, logFile)
	}
	for _, tc := range []struct{ sni, want string }{
		{"one.localhost", "one.localhost"},
		{"two.localhost", "two.localhost"},
		{"", "one.localhost"},
	} {
		got, c := tlsServed(t, addr, &tls.Config{ServerName: tc.sni})
		c.Close()
		if len(got.DNSNames) != 1 || got.DNSNames[0] != tc.want {
			t.Errorf("SNI %q: served %q, want %s's certificate", tc.sni, got.DNSNames, tc.want)
		}
	}
	if snis := accessLogSNIs(t, logFile, "names", 3); snis != "one.localhost,two.localhost," {
		t.Errorf("access log SNIs %q, want one.localhost, two.localhost and none", snis)
	}
}

// examples.hcl's echo, on the self-signed TLS endpoint `make run` starts,
// writes each connection to the access log with its TLS facts.
func TestExamplesTLSAccessLog(t *testing.T) {
	e := startExamples(t)
	addr := e.addrs["127.0.0.1:7443"]
	logFile := e.paths["/tmp/superd-access.log"]
	if addr == "" || logFile == "" || e.serves["127.0.0.1:7443"] != "echo" {
		t.Fatalf("examples.hcl has no echo at 127.0.0.1:7443 (%q) or no access log at /tmp/superd-access.log (%q)", addr, logFile)
	}
	for _, sni := range []string{"echo.localhost", ""} {
		_, c := tlsServed(t, addr, &tls.Config{ServerName: sni})
		c.Close()
	}
	if snis := accessLogSNIs(t, logFile, "echo", 2); snis != "echo.localhost," {
		t.Errorf("access log SNIs %q, want echo.localhost and none", snis)
	}
}

// accessLogSNIs waits for n lines in the access log at path and returns the
// names asked for (SNI) of service's clean TLS 1.3 connections, in order,
// joined by commas.
func accessLogSNIs(t *testing.T, path, service string, n int) string {
	t.Helper()
	lines := waitAccessLines(t, path, n)
	var snis []string
	for _, l := range lines {
		if l["service"] == service && l["tls_version"] == "TLSv1.3" && l["reason"] == "clean" {
			sni, _ := l["sni"].(string)
			snis = append(snis, sni)
		}
	}
	if len(snis) != n {
		t.Errorf("%d clean TLS 1.3 lines of %s in the access log, want %d:\n%v", len(snis), service, n, lines)
	}
	return strings.Join(snis, ",")
}
