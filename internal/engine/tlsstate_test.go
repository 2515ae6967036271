package engine

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

type tlsStateProto struct {
	framework.BaseProtocol
	got chan tlsStateSeen
}

type tlsStateSeen struct {
	st tls.ConnectionState
	ok bool
}

func (p *tlsStateProto) ConnectionMade(t framework.Transport) {
	p.BaseProtocol.ConnectionMade(t)
	st, ok := framework.TLSState(t)
	p.got <- tlsStateSeen{st, ok}
	t.WriteString("seen\n")
	t.LoseConnection()
}

// A protocol served over TLS reads, from its Transport, the version,
// cipher, SNI, ALPN and client certificate of its connection; over plain
// TCP it is told there is none.
func TestTLSStateFromTransport(t *testing.T) {
	server, client := testTLS(t)
	server = server.Clone()
	server.NextProtos = []string{"h2", "http/1.1"}
	server.ClientAuth = tls.RequestClientCert // any certificate: this test looks only at what arrives
	client = client.Clone()
	client.NextProtos = []string{"http/1.1"}
	client.Certificates = server.Certificates // the client presents the same certificate

	for _, useTLS := range []bool{true, false} {
		ln := listen(t, "tcp")
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}()
		raw, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var cc net.Conn = raw
		srv, ok := <-accepted
		if !ok {
			t.Fatal("accept failed")
		}
		ln.Close()
		if useTLS {
			tc := tls.Server(srv, server)
			hsErr := make(chan error, 1)
			go func() { hsErr <- tc.Handshake() }()
			cl := tls.Client(raw, client)
			cl.SetDeadline(time.Now().Add(10 * time.Second))
			if err := cl.Handshake(); err != nil {
				t.Fatal(err)
			}
			if err := <-hsErr; err != nil {
				t.Fatal(err)
			}
			// Like superd, hand the protocol a connection whose handshake is done.
			srv, cc = tc, cl
		}
		p := &tlsStateProto{got: make(chan tlsStateSeen, 1)}
		done := make(chan error, 1)
		go func() { done <- NewConn(srv, nil).Serve(p) }()
		cc.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 5)
		if _, err := cc.Read(buf); err != nil || string(buf) != "seen\n" {
			t.Fatalf("read %q, %v", buf, err)
		}
		seen := <-p.got
		cc.Close()
		<-done
		if !useTLS {
			if seen.ok {
				t.Errorf("TLSState over plain TCP: ok, %+v", seen.st)
			}
			continue
		}
		st := seen.st
		switch {
		case !seen.ok:
			t.Fatal("TLSState over TLS: not ok")
		case st.Version != tls.VersionTLS13 || framework.TLSVersionName(st.Version) != "TLSv1.3":
			t.Errorf("version %x (%s)", st.Version, framework.TLSVersionName(st.Version))
		case tls.CipherSuiteName(st.CipherSuite) == "" || st.CipherSuite == 0:
			t.Errorf("cipher suite %x", st.CipherSuite)
		case st.ServerName != "localhost":
			t.Errorf("SNI %q, want localhost", st.ServerName)
		case st.NegotiatedProtocol != "http/1.1":
			t.Errorf("ALPN %q, want http/1.1", st.NegotiatedProtocol)
		case len(st.PeerCertificates) != 1 || st.PeerCertificates[0].Subject.CommonName != "superd test":
			t.Errorf("peer certificates %v", st.PeerCertificates)
		}
	}

	// A bare net.Conn and a TLS connection before its handshake: none.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := framework.TLSState(a); ok {
		t.Error("TLSState of a pipe: ok")
	}
	if _, ok := framework.TLSState(tls.Server(a, server)); ok {
		t.Error("TLSState before the handshake: ok")
	}
}
