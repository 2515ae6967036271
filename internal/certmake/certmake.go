// Package certmake owns the making of X.509 certificates that superd
// generates itself: endpoint's self-signed certificates and the test kit's
// certificate authority share one template, one way of filing host names,
// and one signing step.
package certmake

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"time"
)

// ClockSkew backdates generated certificates so a client whose clock is a
// little behind accepts them.
const ClockSkew = time.Hour

// Template is the part common to every end-entity certificate made here:
// a random serial, commonName, valid from ClockSkew before now for
// validity, for digital signatures.
func Template(commonName string, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	serial, err := RandomSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}, nil
}

// AddSANs files each host under IPAddresses or DNSNames.
func AddSANs(tmpl *x509.Certificate, hosts []string) {
	for _, h := range hosts {
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if ip, err := netip.ParseAddr(h); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.Unmap().WithZone("").AsSlice()))
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
}

// RandomSerial is a 128-bit random serial number.
func RandomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// Sign signs tmpl with the issuer's key and returns it with its own key,
// parsed leaf included.
func Sign(tmpl, issuer *x509.Certificate, key, issuerKey *ecdsa.PrivateKey) (tls.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, issuerKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
