package framework

import "crypto/tls"

// TLSState returns the TLS state of a connection (a net.Conn, or a
// Transport superd gave a protocol) on a tls endpoint: the version
// (TLSVersionName names it), the cipher suite (tls.CipherSuiteName), the
// server name the client asked for (ServerName, its SNI; "" when it sent
// none), the application protocol agreed by ALPN (NegotiatedProtocol; ""
// when none), and the client's certificate chain (PeerCertificates, with
// client_ca_file; VerifiedChains too). ok is false for a connection without
// TLS, or whose handshake is not done: superd finishes the handshake before
// ConnectionMade, so from a protocol's callbacks a tls endpoint always
// reports ok. Safe from any goroutine.
//
//	func (p *myProto) ConnectionMade(t framework.Transport) {
//		if st, ok := framework.TLSState(t); ok && st.NegotiatedProtocol == "h2" { ... }
//	}
func TLSState(c any) (state tls.ConnectionState, ok bool) {
	if t, ok := c.(tlsStater); ok {
		return t.TLSState()
	}
	tc, isTLS := c.(*tls.Conn)
	if !isTLS {
		return tls.ConnectionState{}, false
	}
	st := tc.ConnectionState()
	if !st.HandshakeComplete {
		return tls.ConnectionState{}, false
	}
	return st, true
}

// tlsStater is implemented by superd's transports, which know the
// connection beneath them.
type tlsStater interface {
	TLSState() (tls.ConnectionState, bool)
}
