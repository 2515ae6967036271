//go:build linux

package exec

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"
)

// TestCertSubject: SSL_PEER_CERT_SUBJECT is the subject as RFC 2253
// writes it, as openssl x509 -noout -subject -nameopt RFC2253 prints it
// for the same certificates: the names in the certificate's order, the
// last first, none dropped, "+" within a multi-valued one (whose values
// RFC 2253 lets come in any order: openssl reverses them too, superd
// keeps the certificate's), DC and UID by name.
func TestCertSubject(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	atv := func(oid asn1.ObjectIdentifier, v string) pkix.AttributeTypeAndValue {
		return pkix.AttributeTypeAndValue{Type: oid, Value: v}
	}
	var (
		c  = asn1.ObjectIdentifier{2, 5, 4, 6}
		o  = asn1.ObjectIdentifier{2, 5, 4, 10}
		ou = asn1.ObjectIdentifier{2, 5, 4, 11}
		cn = asn1.ObjectIdentifier{2, 5, 4, 3}
	)
	for _, tt := range []struct {
		name string
		rdns pkix.RDNSequence
		want string
	}{
		{"directory style", pkix.RDNSequence{{atv(oidDC, "com")}, {atv(oidDC, "example")}, {atv(cn, "Users")}, {atv(cn, "alice")}},
			"CN=alice,CN=Users,DC=example,DC=com"},
		{"common name first", pkix.RDNSequence{{atv(cn, "bob")}, {atv(o, "Example")}, {atv(c, "US")}},
			"C=US,O=Example,CN=bob"},
		{"multi-valued, escaped", pkix.RDNSequence{{atv(c, "DE")}, {atv(o, "Acme, Inc.")}, {atv(ou, "Ops")}, {atv(cn, "client"), atv(oidUID, "42")}},
			"CN=client+UID=42,OU=Ops,O=Acme\\, Inc.,C=DE"},
		{"unknown attribute", pkix.RDNSequence{{atv(asn1.ObjectIdentifier{1, 2, 3, 4}, "x")}, {atv(cn, "carol")}},
			"CN=carol,1.2.3.4=#130178"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := asn1.Marshal(tt.rdns)
			if err != nil {
				t.Fatal(err)
			}
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), RawSubject: raw,
				NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if got := certSubject(cert); got != tt.want {
				t.Errorf("subject %q, want %q (pkix says %q)", got, tt.want, cert.Subject.String())
			}
		})
	}
}
