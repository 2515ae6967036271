package endpoint

// Certificates for tests, in this package and others: self-signed server
// certificates written to files, and a small certificate authority issuing
// server and client certificates. Keys are ECDSA P-256, made fresh each
// time; nothing here is meant for production use.

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
)

// WriteSelfSignedFiles writes a self-signed server certificate for hosts
// (see SelfSignedCertificate), valid from now, as two PEM files in dir, and
// returns their paths: what cert_file and key_file of a tls endpoint expect.
func WriteSelfSignedFiles(dir string, hosts []string) (certFile, keyFile string, err error) {
	cert, err := SelfSignedCertificate(hosts, time.Now())
	if err != nil {
		return "", "", err
	}
	return WriteCertificateFiles(dir, cert)
}

// WriteCertificateFiles writes cert's chain and its private key (see
// EncodeCertificatePEM) as two new PEM files in dir, both mode 0600, and
// returns their paths.
func WriteCertificateFiles(dir string, cert tls.Certificate) (certFile, keyFile string, err error) {
	chain, key, err := EncodeCertificatePEM(cert)
	if err != nil {
		return "", "", err
	}
	if certFile, err = writeNew(dir, "cert-*.pem", chain); err != nil {
		return "", "", err
	}
	if keyFile, err = writeNew(dir, "key-*.pem", key); err != nil {
		os.Remove(certFile)
		return "", "", err
	}
	return certFile, keyFile, nil
}

// EncodeCertificatePEM returns cert's chain as "CERTIFICATE" blocks and its
// private key as a PKCS #8 "PRIVATE KEY" block: the contents of a
// cert_file and its key_file.
func EncodeCertificatePEM(cert tls.Certificate) (chain, key []byte, err error) {
	if len(cert.Certificate) == 0 {
		return nil, nil, errors.New("empty certificate chain")
	}
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return chain, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
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

// TestCA is a certificate authority for tests: it issues server and client
// certificates, and its certificate is what a client_ca_file (or a client's
// RootCAs) holds to trust them.
type TestCA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is Cert as a PEM "CERTIFICATE" block.
	PEM []byte
}

// NewTestCA makes a new self-signed CA, valid from an hour ago for
// SelfSignedValidity.
func NewTestCA() (*TestCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "superd test CA", Organization: []string{"superd tests"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(SelfSignedValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	cert, err := makeCertificate(tmpl, tmpl, key, key)
	if err != nil {
		return nil, err
	}
	return &TestCA{
		Cert: cert.Leaf,
		Key:  key,
		PEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw}),
	}, nil
}

// Pool returns a pool holding only the CA's certificate, for a client's
// RootCAs or a server's ClientCAs.
func (ca *TestCA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// WriteCAFile writes the CA's certificate as a new PEM file in dir and
// returns its path: what client_ca_file expects.
func (ca *TestCA) WriteCAFile(dir string) (string, error) {
	return writeNew(dir, "ca-*.pem", ca.PEM)
}

// IssueClient issues a client certificate (extended key usage clientAuth)
// for commonName.
func (ca *TestCA) IssueClient(commonName string) (tls.Certificate, error) {
	return ca.issue(commonName, nil, x509.ExtKeyUsageClientAuth)
}

// IssueServer issues a server certificate (extended key usage serverAuth)
// valid for hosts, DNS names and IP addresses.
func (ca *TestCA) IssueServer(hosts []string) (tls.Certificate, error) {
	if len(hosts) == 0 {
		return tls.Certificate{}, errors.New("no host names")
	}
	return ca.issue(hosts[0], hosts, x509.ExtKeyUsageServerAuth)
}

// WriteServerFiles issues a server certificate for hosts and writes it as
// cert and key files in dir (see WriteCertificateFiles).
func (ca *TestCA) WriteServerFiles(dir string, hosts []string) (certFile, keyFile string, err error) {
	cert, err := ca.IssueServer(hosts)
	if err != nil {
		return "", "", err
	}
	return WriteCertificateFiles(dir, cert)
}

func (ca *TestCA) issue(commonName string, hosts []string, usage x509.ExtKeyUsage) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl, err := leafTemplate(commonName, time.Now())
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	addSANs(tmpl, hosts)
	return makeCertificate(tmpl, ca.Cert, key, ca.Key)
}
