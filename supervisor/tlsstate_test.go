package supervisor

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// tlsStateProto tells its client what it learns of its connection's TLS.
type tlsStateProto struct{ framework.BaseProtocol }

func (p *tlsStateProto) ConnectionMade(t framework.Transport) {
	st, ok := framework.TLSState(t)
	if !ok {
		t.WriteString("no TLS\n")
	} else {
		t.WriteString(fmt.Sprintf("%s %s sni=%q alpn=%q\n", framework.TLSVersionName(st.Version),
			tls.CipherSuiteName(st.CipherSuite), st.ServerName, st.NegotiatedProtocol))
	}
	t.LoseConnection()
}

// A protocol served on a tls endpoint with certificate blocks and alpn
// reads, from its Transport, the version, cipher, SNI and ALPN the client
// got; the client was served the certificate for the name it asked for.
func TestTLSStateOnEndpoint(t *testing.T) {
	dir := t.TempDir()
	var files []endpoint.CertificateFiles
	leaves := map[string]*x509.Certificate{}
	for _, name := range []string{"one.example", "two.example"} {
		f := endpoint.CertificateFiles{CertFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
		leaves[name] = writePair(t, f.CertFile, f.KeyFile, time.Now(), name)
		files = append(files, f)
	}
	addr, plain := testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp")
	ep := makeEndpoint(endpoint.KindTLS, addr)
	ep.Certificates = files
	ep.ALPN = []string{"h2", "http/1.1"}
	f := framework.ForProtocol(func() framework.Protocol { return new(tlsStateProto) })
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("state", f, config.Limits{}, ep, tcpEndpoint(plain)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)

	for _, tc := range []struct {
		name   string
		protos []string
		max    uint16
		want   string
	}{
		{"one.example", []string{"http/1.1", "h2"}, 0, `TLSv1.3 CIPHER sni="one.example" alpn="h2"`},
		{"two.example", []string{"http/1.1"}, tls.VersionTLS12, `TLSv1.2 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 sni="two.example" alpn="http/1.1"`},
		{"two.example", nil, 0, `TLSv1.3 CIPHER sni="two.example" alpn=""`},
	} {
		pool := x509.NewCertPool()
		pool.AddCert(leaves[tc.name])
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: tc.name, RootCAs: pool, NextProtos: tc.protos, MaxVersion: tc.max,
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		cipher := tls.CipherSuiteName(c.ConnectionState().CipherSuite)
		c.Close()
		// TLS 1.3's suite depends on the machine's AES support: the one
		// the client agreed to.
		if want := strings.Replace(tc.want, "CIPHER", cipher, 1); err != nil || line != want+"\n" {
			t.Errorf("%s: protocol saw %q, %v; want %q", tc.name, line, err, want)
		}
	}
	c := dialEcho(t, "tcp", plain, "")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "no TLS\n" {
		t.Errorf("plain tcp: protocol saw %q, %v", line, err)
	}
	c.Close()
}
