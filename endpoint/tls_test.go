package endpoint

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// handshake is what the test server saw of one connection.
type handshake struct {
	state tls.ConnectionState
	err   error
}

// tlsServer listens on a tls endpoint at 127.0.0.1 and, like the
// supervisor, performs the server half of the TLS handshake on each
// accepted connection with conf, under a deadline. It reports every
// handshake on the returned channel and, when it succeeded, writes "hello"
// and closes the connection. Everything stops at the end of the test.
func tlsServer(t *testing.T, conf *tls.Config) (addr string, results <-chan handshake) {
	t.Helper()
	ln, err := Listen(Config{Kind: KindTLS, Label: "tls:127.0.0.1:0", Addr: mustParse(KindTLS, "127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan handshake, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(ioTimeout))
			tc := tls.Server(c, conf)
			err = tc.Handshake()
			out <- handshake{tc.ConnectionState(), err}
			if err == nil {
				tc.Write([]byte("hello"))
			}
			tc.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String(), out
}

// tlsGet connects to addr with conf and returns what the server sent
// before closing, or the first error of the handshake or the read. (With
// TLS 1.3 a server rejecting the client's certificate says so after the
// client's handshake is done: the read reports it.)
func tlsGet(t *testing.T, addr string, conf *tls.Config) (string, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, conf)
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if err := c.Handshake(); err != nil {
		return "", err
	}
	data, err := io.ReadAll(c)
	return string(data), err
}

func wantHello(t *testing.T, addr string, conf *tls.Config, results <-chan handshake) tls.ConnectionState {
	t.Helper()
	got, err := tlsGet(t, addr, conf)
	if err != nil || got != "hello" {
		t.Fatalf("client got %q, %v; want hello", got, err)
	}
	h := <-results
	if h.err != nil {
		t.Fatalf("server handshake: %v", h.err)
	}
	return h.state
}

func wantFailure(t *testing.T, addr string, conf *tls.Config, results <-chan handshake, serverErr string) {
	t.Helper()
	got, err := tlsGet(t, addr, conf)
	if err == nil {
		t.Fatalf("client got %q and no error; want the handshake to fail", got)
	}
	h := <-results
	if h.err == nil {
		t.Fatal("server handshake succeeded; want it to fail")
	}
	if !strings.Contains(h.err.Error(), serverErr) {
		t.Errorf("server handshake error = %q, want it to contain %q", h.err, serverErr)
	}
}

func mustTLSServer(t *testing.T, cfg Config) *TLSServer {
	t.Helper()
	srv, err := NewTLSServer(cfg, time.Now())
	if err != nil {
		t.Fatalf("NewTLSServer(%+v): %v", cfg, err)
	}
	return srv
}

func mustTLSConfig(t *testing.T, cfg Config) *tls.Config {
	t.Helper()
	return mustTLSServer(t, cfg).Config()
}

func poolFromFile(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("no certificate in %s", file)
	}
	return pool
}

func TestTLSCertFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := testkit.WriteSelfSignedFiles(dir, []string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, %v; want mode 0600", fi, err)
	}
	conf := mustTLSConfig(t, Config{Kind: KindTLS, Addr: mustParse(KindTLS, "127.0.0.1:0"), CertFile: certFile, KeyFile: keyFile})
	if conf.MinVersion != tls.VersionTLS12 {
		t.Errorf("default MinVersion = %s, want TLS 1.2", tls.VersionName(conf.MinVersion))
	}
	if conf.ClientAuth != tls.NoClientCert {
		t.Errorf("ClientAuth = %v without client_ca_file", conf.ClientAuth)
	}
	addr, results := tlsServer(t, conf)
	pool := poolFromFile(t, certFile)
	for _, name := range []string{"localhost", "127.0.0.1"} {
		wantHello(t, addr, &tls.Config{RootCAs: pool, ServerName: name}, results)
	}
	// A client that does not trust the certificate refuses it.
	_, err = tlsGet(t, addr, &tls.Config{ServerName: "localhost", RootCAs: x509.NewCertPool()})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusting client: %v, want a certificate error", err)
	}
	<-results
}

func TestTLSCertFilesFromCA(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.WriteServerFiles(t.TempDir(), []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	conf := mustTLSConfig(t, Config{Kind: KindTLS, CertFile: certFile, KeyFile: keyFile})
	addr, results := tlsServer(t, conf)
	wantHello(t, addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}, results)
}

func TestTLSSelfSigned(t *testing.T) {
	now := time.Now()
	srv, err := NewTLSServer(Config{Kind: KindTLS, Label: "tls:127.0.0.1:0", Addr: mustParse(KindTLS, "127.0.0.1:0"), SelfSigned: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	conf := srv.Config()
	leaf := srv.Certificates()[0].Leaf
	if leaf == nil {
		t.Fatal("self-signed certificate has no Leaf")
	}
	if leaf.NotBefore.After(now) || leaf.NotAfter.Sub(now) < 364*24*time.Hour || leaf.NotAfter.Sub(now) > 366*24*time.Hour {
		t.Errorf("validity %v to %v, want about a year from %v", leaf.NotBefore, leaf.NotAfter, now)
	}
	if leaf.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key algorithm %v, want ECDSA", leaf.PublicKeyAlgorithm)
	}

	addr, results := tlsServer(t, conf)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		wantHello(t, addr, &tls.Config{RootCAs: pool, ServerName: name}, results)
	}
	// The name check is real.
	if _, err := tlsGet(t, addr, &tls.Config{RootCAs: pool, ServerName: "example.com"}); err == nil {
		t.Error("client accepted the certificate for example.com")
	}
	<-results
}

func TestSelfSignedHosts(t *testing.T) {
	base := []string{"localhost", "127.0.0.1", "::1"}
	hostname, _ := os.Hostname()
	withHostname := base
	if hostname != "" && hostname != "localhost" {
		withHostname = append(slices.Clone(base), hostname)
	}
	for _, tc := range []struct {
		address string
		want    []string
	}{
		{"127.0.0.1:8443", base},
		{"localhost:8443", base},
		{"[::1]:8443", base},
		{"[::ffff:127.0.0.1]:8443", base},
		{"myhost.example:8443", append(slices.Clone(base), "myhost.example")},
		{"10.1.2.3:8443", append(slices.Clone(base), "10.1.2.3")},
		{"[2001:db8::1]:8443", append(slices.Clone(base), "2001:db8::1")},
		{"[fe80::1%eth0]:8443", append(slices.Clone(base), "fe80::1")},
		{":8443", withHostname},
		{"0.0.0.0:8443", withHostname},
		{"[::]:8443", withHostname},
	} {
		if got := SelfSignedHosts(tc.address); !slices.Equal(got, tc.want) {
			t.Errorf("SelfSignedHosts(%q) = %q, want %q", tc.address, got, tc.want)
		}
	}

	// And they end up in the certificate, names and addresses apart.
	srv := mustTLSServer(t, Config{Kind: KindTLS, Addr: mustParse(KindTLS, "myhost.example:8443"), SelfSigned: true})
	leaf := srv.Certificates()[0].Leaf
	if !slices.Equal(leaf.DNSNames, []string{"localhost", "myhost.example"}) {
		t.Errorf("DNSNames = %q", leaf.DNSNames)
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	if !slices.Equal(ips, []string{"127.0.0.1", "::1"}) {
		t.Errorf("IPAddresses = %q", ips)
	}
	for _, name := range []string{"myhost.example", "localhost", "127.0.0.1", "::1"} {
		if err := leaf.VerifyHostname(name); err != nil {
			t.Errorf("VerifyHostname(%s): %v", name, err)
		}
	}
}

func TestTLSMinVersion(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := testkit.WriteSelfSignedFiles(dir, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	pool := poolFromFile(t, certFile)
	old := &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12}
	modern := &tls.Config{RootCAs: pool, ServerName: "localhost"}

	t.Run("1.3 refuses a 1.2 client", func(t *testing.T) {
		conf := mustTLSConfig(t, Config{Kind: KindTLS, CertFile: certFile, KeyFile: keyFile, MinVersion: tls.VersionTLS13})
		if conf.MinVersion != tls.VersionTLS13 {
			t.Fatalf("MinVersion = %s", tls.VersionName(conf.MinVersion))
		}
		addr, results := tlsServer(t, conf)
		wantFailure(t, addr, old, results, "unsupported versions")
		if st := wantHello(t, addr, modern, results); st.Version != tls.VersionTLS13 {
			t.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(st.Version))
		}
	})
	t.Run("1.2 accepts a 1.2 client", func(t *testing.T) {
		conf := mustTLSConfig(t, Config{Kind: KindTLS, CertFile: certFile, KeyFile: keyFile, MinVersion: tls.VersionTLS12})
		addr, results := tlsServer(t, conf)
		if st := wantHello(t, addr, old, results); st.Version != tls.VersionTLS12 {
			t.Errorf("negotiated %s, want TLS 1.2", tls.VersionName(st.Version))
		}
	})
}

func TestTLSClientCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := testkit.WriteSelfSignedFiles(dir, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	pool := poolFromFile(t, certFile)

	alice, err := ca.IssueClient("alice")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	mallory, err := other.IssueClient("mallory")
	if err != nil {
		t.Fatal(err)
	}

	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			conf := mustTLSConfig(t, Config{Kind: KindTLS, CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile})
			if conf.ClientAuth != tls.RequireAndVerifyClientCert || conf.ClientCAs == nil {
				t.Fatalf("ClientAuth = %v, ClientCAs = %v", conf.ClientAuth, conf.ClientCAs)
			}
			addr, results := tlsServer(t, conf)
			client := func(certs ...tls.Certificate) *tls.Config {
				return &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: version, Certificates: certs}
			}

			st := wantHello(t, addr, client(alice), results)
			if len(st.PeerCertificates) == 0 || st.PeerCertificates[0].Subject.CommonName != "alice" {
				t.Errorf("server saw client certificates %v", st.PeerCertificates)
			}
			wantFailure(t, addr, client(), results, "certificate")
			wantFailure(t, addr, client(mallory), results, "certificate")
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := testkit.WriteSelfSignedFiles(dir, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := testkit.WriteSelfSignedFiles(dir, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	empty := write("empty.pem", "")
	notPEM := write("notpem.pem", "hello\n")
	keyOnly := keyFile // a PEM file, but no certificate in it
	badCert := write("bad.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	missing := filepath.Join(dir, "missing.pem")
	// A good certificate that a megabyte of comment makes too large.
	cert, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	large := write("large.pem", string(cert)+strings.Repeat("# padding\n", MaxTLSFileSize/10))

	files := Config{Kind: KindTLS, Label: "tls:127.0.0.1:8443", Addr: mustParse(KindTLS, "127.0.0.1:8443"), CertFile: certFile, KeyFile: keyFile}
	with := func(f func(*Config)) Config {
		c := files
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"missing cert file", with(func(c *Config) { c.CertFile = missing }),
			"endpoint tls:127.0.0.1:8443: cert_file: " + missing + ": no such file or directory"},
		{"missing key file", with(func(c *Config) { c.KeyFile = missing }), "key_file: " + missing + ": no such file or directory"},
		{"cert file is a folder", with(func(c *Config) { c.CertFile = dir }), "cert_file: " + dir + " is not a regular file"},
		{"cert file too large", with(func(c *Config) { c.CertFile = large }), "cert_file: " + large + " is too large"},
		{"key does not match", with(func(c *Config) { c.KeyFile = otherKey }), "load certificate: tls: private key does not match public key"},
		{"no certificate", with(func(c *Config) { c.CertFile, c.KeyFile = "", "" }), "needs cert_file and key_file, certificate blocks, or self_signed = true"},
		{"only a key", with(func(c *Config) { c.CertFile = "" }), "needs cert_file and key_file"},
		{"both", with(func(c *Config) { c.SelfSigned = true }), "self_signed and cert_file/key_file or certificate blocks are exclusive"},
		{"min version 1.1", with(func(c *Config) { c.MinVersion = tls.VersionTLS11 }), "unsupported TLS min_version TLS 1.1"},
		{"missing CA file", with(func(c *Config) { c.ClientCAFile = missing }), "client_ca_file: " + missing + ": no such file or directory"},
		{"empty CA file", with(func(c *Config) { c.ClientCAFile = empty }), "client_ca_file: " + empty + ": no PEM certificate found"},
		{"CA file not PEM", with(func(c *Config) { c.ClientCAFile = notPEM }), "no PEM certificate found"},
		{"CA file holds a key", with(func(c *Config) { c.ClientCAFile = keyOnly }), "no PEM certificate found"},
		{"CA file with a broken certificate", with(func(c *Config) { c.ClientCAFile = badCert }), badCert + ": certificate 1: x509: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := NewTLSServer(tc.cfg, time.Now())
			if err == nil {
				t.Fatalf("NewTLSServer succeeded: %+v", srv.Config())
			}
			if !strings.HasPrefix(err.Error(), "endpoint tls:127.0.0.1:8443: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q, want it to name the endpoint and contain %q", err, tc.want)
			}
		})
	}
}

func TestSelfSignedCertificateNoHosts(t *testing.T) {
	if _, err := SelfSignedCertificate(nil, time.Now()); err == nil {
		t.Error("SelfSignedCertificate(nil) succeeded")
	}
}
