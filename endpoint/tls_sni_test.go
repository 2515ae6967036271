package endpoint

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// sniFiles issues, from one CA, a certificate for each list of hosts and
// writes them to dir: the certificate blocks of a tls endpoint, in order.
func sniFiles(t *testing.T, ca *testkit.CA, dir string, hosts ...[]string) []CertificateFiles {
	t.Helper()
	var files []CertificateFiles
	for _, h := range hosts {
		certFile, keyFile, err := ca.WriteServerFiles(dir, h)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, CertificateFiles{CertFile: certFile, KeyFile: keyFile})
	}
	return files
}

// sniGet connects to a tlsServer with conf and returns the client's and
// the server's view of the handshake.
func sniGet(t *testing.T, addr string, conf *tls.Config, results <-chan handshake) (client, server tls.ConnectionState) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr, conf)
	if err != nil {
		t.Fatalf("SNI %q: %v", conf.ServerName, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if got, err := io.ReadAll(c); err != nil || string(got) != "hello" {
		t.Fatalf("SNI %q: read %q, %v", conf.ServerName, got, err)
	}
	h := <-results
	if h.err != nil {
		t.Fatalf("server handshake: %v", h.err)
	}
	return c.ConnectionState(), h.state
}

// served returns the first DNS name (or common name) of the certificate
// the client was presented.
func served(st tls.ConnectionState) string {
	if len(st.PeerCertificates) == 0 {
		return ""
	}
	return CertificateName(st.PeerCertificates[0])
}

// Each certificate block serves the names it is valid for, wildcards as
// crypto/tls matches them; a client sending no SNI, or a name no
// certificate holds, gets the first block's.
func TestTLSCertificatesBySNI(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	files := sniFiles(t, ca, t.TempDir(),
		[]string{"default.example", "127.0.0.1"},
		[]string{"one.example"},
		[]string{"*.two.example", "two.example"},
		[]string{"one.example", "late.example"}, // one.example: the earlier block wins
	)
	srv := mustTLSServer(t, Config{Kind: KindTLS, Certificates: files})
	if n := len(srv.Certificates()); n != 4 {
		t.Fatalf("%d certificates loaded, want 4", n)
	}
	addr, results := tlsServer(t, srv.Config())
	for _, tc := range []struct {
		sni, want string
	}{
		{"default.example", "default.example"},
		{"one.example", "one.example"},
		{"ONE.example", "one.example"},
		{"two.example", "*.two.example"},
		{"www.two.example", "*.two.example"},
		{"late.example", "one.example"},
		{"a.b.two.example", "default.example"}, // a wildcard matches one label only
		{"unknown.example", "default.example"},
		{"", "default.example"},
	} {
		// InsecureSkipVerify: a client asking for a name no certificate
		// holds still finishes its handshake, so what it got can be seen.
		// The names that do match are verified below.
		cst, sst := sniGet(t, addr, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true}, results)
		if got := served(cst); got != tc.want {
			t.Errorf("SNI %q: served %q, want %q", tc.sni, got, tc.want)
		}
		if !strings.EqualFold(sst.ServerName, tc.sni) {
			t.Errorf("SNI %q: server saw %q", tc.sni, sst.ServerName)
		}
	}
	// A verifying client accepts what it is served for each of the names.
	// (late.example is not among them: one.example's block shadows it.)
	for _, name := range []string{"default.example", "one.example", "two.example", "www.two.example"} {
		sniGet(t, addr, &tls.Config{ServerName: name, RootCAs: ca.Pool()}, results)
	}
	// A Go client dialling an IP address sends no SNI, and verifies the
	// default certificate's IP address.
	cst, sst := sniGet(t, addr, &tls.Config{ServerName: "127.0.0.1", RootCAs: ca.Pool()}, results)
	if sst.ServerName != "" || served(cst) != "default.example" {
		t.Errorf("no SNI: server saw %q, served %q; want none and default.example", sst.ServerName, served(cst))
	}
}

// The one-certificate form and certificate blocks are one list to the
// server; mixing them, an empty list and a bad block are errors that name
// the block.
func TestLoadCertificates(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := sniFiles(t, ca, dir, []string{"a.example"}, []string{"b.example"})
	single := Config{Kind: KindTLS, Label: "tls:127.0.0.1:8443", CertFile: files[0].CertFile, KeyFile: files[0].KeyFile}
	if got := single.CertificateFiles(); len(got) != 1 || got[0] != files[0] {
		t.Errorf("CertificateFiles of the one-certificate form = %v", got)
	}
	certs, err := LoadCertificates(single)
	if err != nil || len(certs) != 1 || certs[0].Leaf == nil || CertificateName(certs[0].Leaf) != "a.example" {
		t.Fatalf("LoadCertificates(one certificate) = %v, %v", certs, err)
	}
	blocks := Config{Kind: KindTLS, Label: "tls:127.0.0.1:8443", Certificates: files}
	certs, err = LoadCertificates(blocks)
	if err != nil || len(certs) != 2 || CertificateName(certs[1].Leaf) != "b.example" {
		t.Fatalf("LoadCertificates(blocks) = %v, %v", certs, err)
	}

	broken := filepath.Join(dir, "broken.pem")
	if err := os.WriteFile(broken, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"both forms", func() Config { c := blocks; c.CertFile, c.KeyFile = files[0].CertFile, files[0].KeyFile; return c }(),
			"cert_file/key_file and certificate blocks are exclusive"},
		{"none", Config{Kind: KindTLS, Label: "tls:127.0.0.1:8443"}, "needs cert_file and key_file, certificate blocks, or self_signed = true"},
		{"broken second block", Config{Kind: KindTLS, Label: "tls:127.0.0.1:8443",
			Certificates: []CertificateFiles{files[0], {CertFile: broken, KeyFile: files[1].KeyFile}}}, "certificate 2: load certificate: "},
		{"key of another block", Config{Kind: KindTLS, Label: "tls:127.0.0.1:8443",
			Certificates: []CertificateFiles{files[0], {CertFile: files[1].CertFile, KeyFile: files[0].KeyFile}}},
			"certificate 2: load certificate: tls: private key does not match public key"},
		{"block without key", Config{Kind: KindTLS, Label: "tls:127.0.0.1:8443",
			Certificates: []CertificateFiles{{CertFile: files[0].CertFile}}}, "certificate 1: needs cert_file and key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadCertificates(tc.cfg)
			if err == nil || !strings.HasPrefix(err.Error(), "endpoint tls:127.0.0.1:8443: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadCertificates: %v, want an error naming the endpoint and containing %q", err, tc.want)
			}
			if _, err := NewTLSServer(tc.cfg, time.Now()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewTLSServer: %v, want %q", err, tc.want)
			}
		})
	}
}

// alpn is offered in order; a client gets the first of the server's it
// offers too; a client without ALPN is served without; a client offering
// none of them is refused.
func TestTLSALPN(t *testing.T) {
	certFile, keyFile, err := testkit.WriteSelfSignedFiles(t.TempDir(), []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	conf := mustTLSConfig(t, Config{Kind: KindTLS, CertFile: certFile, KeyFile: keyFile, ALPN: []string{"h2", "http/1.1"}})
	addr, results := tlsServer(t, conf)
	pool := poolFromFile(t, certFile)
	client := func(protos ...string) *tls.Config {
		return &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: protos}
	}
	for _, tc := range []struct {
		offer []string
		want  string
	}{
		{[]string{"h2", "http/1.1"}, "h2"},
		{[]string{"http/1.1", "h2"}, "h2"}, // the server's preference
		{[]string{"http/1.1"}, "http/1.1"},
		{nil, ""},
	} {
		st := wantHello(t, addr, client(tc.offer...), results)
		if st.NegotiatedProtocol != tc.want {
			t.Errorf("client offering %q: negotiated %q, want %q", tc.offer, st.NegotiatedProtocol, tc.want)
		}
	}
	wantFailure(t, addr, client("smtp"), results, "unsupported application protocols")

	for _, bad := range [][]string{{""}, {strings.Repeat("x", 256)}, {"h2", "h2"}} {
		if err := CheckALPN(bad); err == nil {
			t.Errorf("CheckALPN(%q) accepted it", bad)
		}
		if _, err := NewTLSServer(Config{Kind: KindTLS, CertFile: certFile, KeyFile: keyFile, ALPN: bad}, time.Now()); err == nil {
			t.Errorf("NewTLSServer with alpn %q succeeded", bad)
		}
	}
}

// SetCertificates changes what the next handshake gets; a connection made
// before goes on.
func TestTLSSetCertificates(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := sniFiles(t, ca, dir, []string{"localhost"})
	srv := mustTLSServer(t, Config{Kind: KindTLS, Certificates: files})
	before := srv.Certificates()[0].Leaf.SerialNumber

	ln, err := Listen(Config{Kind: KindTLS, Label: "tls:127.0.0.1:0", Addr: mustParse(KindTLS, "127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tl := tls.NewListener(ln, srv.Config())
	done := make(chan struct{})
	go func() { // an echo, one connection after the other ending
		defer close(done)
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	defer func() { ln.Close(); <-done }()

	dial := func() *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(ioTimeout))
		return c
	}
	echo := func(c *tls.Conn, msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: %q, %v", msg, buf, err)
		}
	}
	old := dial()
	defer old.Close()
	echo(old, "before")

	renewed, err := LoadCertificates(Config{Kind: KindTLS, Certificates: sniFiles(t, ca, dir, []string{"localhost"})})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetCertificates(renewed)
	after := renewed[0].Leaf.SerialNumber
	if after.Cmp(before) == 0 {
		t.Fatal("the renewed certificate has the old serial")
	}
	c := dial()
	defer c.Close()
	if got := c.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(after) != 0 {
		t.Errorf("new handshake got serial %v, want the renewed %v", got, after)
	}
	echo(c, "new")
	echo(old, "still here")
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(before) != 0 {
		t.Errorf("the old connection's certificate changed to %v", got)
	}
}
