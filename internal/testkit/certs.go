package testkit

// Certificates for tests: self-signed server certificates written to
// files, and a small certificate authority issuing server and client
// certificates. Keys are ECDSA P-256, made fresh each time; nothing here
// is meant for production use (superd's own self-signed certificates are
// endpoint.SelfSignedCertificate's).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"time"

	"github.com/superd-dev/superd/internal/certmake"
)

// Validity is how long the certificates made here are valid: from an
// hour before they are made (for a client whose clock is a little
// behind), for a year.
const Validity = 365 * 24 * time.Hour

// WriteSelfSignedFiles writes a self-signed server certificate for hosts
// (DNS names and IP addresses, the first one also its common name), valid
// from now, as two PEM files in dir, and returns their paths: what
// cert_file and key_file of a tls endpoint expect.
func WriteSelfSignedFiles(dir string, hosts []string) (certFile, keyFile string, err error) {
	cert, err := SelfSigned(hosts)
	if err != nil {
		return "", "", err
	}
	return WriteCertificateFiles(dir, cert)
}

// SelfSigned makes a self-signed server certificate (extended key usage
// serverAuth) for hosts, its own issuer: a client trusts it by putting its
// Leaf in its RootCAs.
func SelfSigned(hosts []string) (tls.Certificate, error) {
	if len(hosts) == 0 {
		return tls.Certificate{}, errors.New("no host names")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl, err := certmake.Template(hosts[0], time.Now(), Validity)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl.Subject.Organization = []string{"superd tests"}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	certmake.AddSANs(tmpl, hosts)
	return certmake.Sign(tmpl, tmpl, key, key)
}

// WriteCertificateFiles writes cert's chain ("CERTIFICATE" blocks) and its
// private key (a PKCS #8 "PRIVATE KEY" block) as two new PEM files in dir,
// both mode 0600, and returns their paths.
func WriteCertificateFiles(dir string, cert tls.Certificate) (certFile, keyFile string, err error) {
	if len(cert.Certificate) == 0 {
		return "", "", errors.New("empty certificate chain")
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return "", "", err
	}
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if certFile, err = writeNew(dir, "cert-*.pem", chain); err != nil {
		return "", "", err
	}
	if keyFile, err = writeNew(dir, "key-*.pem", key); err != nil {
		os.Remove(certFile)
		return "", "", err
	}
	return certFile, keyFile, nil
}

// writeNew writes data to a new file in dir named after pattern (see
// os.CreateTemp), mode 0600.
func writeNew(dir, pattern string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// CA is a certificate authority for tests: it issues server and client
// certificates, and its certificate is what a client_ca_file (or a
// client's RootCAs) holds to trust them.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is Cert as a PEM "CERTIFICATE" block.
	PEM []byte
}

// NewCA makes a new self-signed CA, valid from an hour ago for Validity.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := certmake.RandomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "superd test CA", Organization: []string{"superd tests"}},
		NotBefore:             now.Add(-certmake.ClockSkew),
		NotAfter:              now.Add(Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	cert, err := certmake.Sign(tmpl, tmpl, key, key)
	if err != nil {
		return nil, err
	}
	return &CA{
		Cert: cert.Leaf,
		Key:  key,
		PEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw}),
	}, nil
}

// Pool returns a pool holding only the CA's certificate, for a client's
// RootCAs or a server's ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// WriteCAFile writes the CA's certificate as a new PEM file in dir and
// returns its path: what client_ca_file expects.
func (ca *CA) WriteCAFile(dir string) (string, error) {
	return writeNew(dir, "ca-*.pem", ca.PEM)
}

// IssueClient issues a client certificate (extended key usage clientAuth)
// for commonName.
func (ca *CA) IssueClient(commonName string) (tls.Certificate, error) {
	return ca.issue(commonName, nil, x509.ExtKeyUsageClientAuth)
}

// IssueServer issues a server certificate (extended key usage serverAuth)
// valid for hosts, DNS names and IP addresses.
func (ca *CA) IssueServer(hosts []string) (tls.Certificate, error) {
	if len(hosts) == 0 {
		return tls.Certificate{}, errors.New("no host names")
	}
	return ca.issue(hosts[0], hosts, x509.ExtKeyUsageServerAuth)
}

// WriteServerFiles issues a server certificate for hosts and writes it as
// cert and key files in dir (see WriteCertificateFiles).
func (ca *CA) WriteServerFiles(dir string, hosts []string) (certFile, keyFile string, err error) {
	cert, err := ca.IssueServer(hosts)
	if err != nil {
		return "", "", err
	}
	return WriteCertificateFiles(dir, cert)
}

func (ca *CA) issue(commonName string, hosts []string, usage x509.ExtKeyUsage) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl, err := certmake.Template(commonName, time.Now(), Validity)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	certmake.AddSANs(tmpl, hosts)
	return certmake.Sign(tmpl, ca.Cert, key, ca.Key)
}
