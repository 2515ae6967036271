package endpoint

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/superd-dev/superd/internal/fsutil"
)

// SelfSignedValidity is how long a certificate made by SelfSignedCertificate
// is valid, counted from its start time.
const SelfSignedValidity = 365 * 24 * time.Hour

// clockSkew backdates generated certificates so a client whose clock is a
// little behind still accepts them.
const clockSkew = time.Hour

// MaxTLSFileSize bounds certificate, key and client CA files.
const MaxTLSFileSize = 1 << 20

// DefaultTLSMinVersion is a tls endpoint's min_version when it sets none.
const DefaultTLSMinVersion = tls.VersionTLS12

// tlsVersions are the values min_version accepts.
var tlsVersions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// ParseTLSVersion parses a min_version: "1.2" or "1.3".
func ParseTLSVersion(s string) (uint16, bool) {
	v, ok := tlsVersions[s]
	return v, ok
}

// The TLS material of an endpoint is read and parsed by the functions
// below, at start (TLSConfig) and by the configuration's validation alike,
// so `superd validate` accepts exactly the files start will.

// ReadTLSFile reads a certificate, key or client CA file: a regular file
// (never a FIFO or a device, which could block or never end) of at most
// MaxTLSFileSize bytes. Errors read "PATH: cause", "PATH is not a regular
// file" or "PATH is too large".
func ReadTLSFile(path string) ([]byte, error) {
	return fsutil.ReadRegularFile(path, MaxTLSFileSize)
}

// ParseKeyPair parses a certificate chain and its private key, both PEM,
// and checks that they match.
func ParseKeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	return tls.X509KeyPair(certPEM, keyPEM)
}

// TLSConfig builds the server-side tls.Config of a tls endpoint:
//   - its certificate comes from cfg.CertFile and cfg.KeyFile, or, when
//     cfg.SelfSigned, is generated in memory at time now (see
//     SelfSignedHosts for the names it is valid for);
//   - MinVersion is cfg.MinVersion (DefaultTLSMinVersion when zero; only
//     1.2 and 1.3 are accepted);
//   - with cfg.ClientCAFile, clients must present a certificate signed by
//     one of the certificates in that PEM file
//     (tls.RequireAndVerifyClientCert); a file holding no certificate is an
//     error.
//
// Errors name the endpoint: "endpoint tls:127.0.0.1:8443: load certificate:
// ...".
func TLSConfig(cfg Config, now time.Time) (*tls.Config, error) {
	conf, err := tlsConfig(cfg, now)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", labelOf(cfg), err)
	}
	return conf, nil
}

func tlsConfig(cfg Config, now time.Time) (*tls.Config, error) {
	minVersion := cfg.MinVersion
	if minVersion == 0 {
		minVersion = DefaultTLSMinVersion
	}
	if !slices.Contains(slices.Collect(maps.Values(tlsVersions)), minVersion) { // 1.2, 1.3
		return nil, fmt.Errorf("unsupported TLS min_version %s (use 1.2 or 1.3)", tls.VersionName(minVersion))
	}

	var cert tls.Certificate
	switch {
	case cfg.SelfSigned && (cfg.CertFile != "" || cfg.KeyFile != ""):
		return nil, errors.New("self_signed and cert_file/key_file are exclusive")
	case cfg.SelfSigned:
		var err error
		if cert, err = SelfSignedCertificate(SelfSignedHosts(cfg.Addr.String()), now); err != nil {
			return nil, fmt.Errorf("self-signed certificate: %w", err)
		}
	case cfg.CertFile != "" && cfg.KeyFile != "":
		certPEM, err := ReadTLSFile(cfg.CertFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file: %w", err)
		}
		keyPEM, err := ReadTLSFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("key_file: %w", err)
		}
		if cert, err = ParseKeyPair(certPEM, keyPEM); err != nil {
			return nil, fmt.Errorf("load certificate: %w", err)
		}
	default:
		return nil, errors.New("needs cert_file and key_file, or self_signed = true")
	}

	conf := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   minVersion,
	}
	if cfg.ClientCAFile != "" {
		pool, err := loadCertPool(cfg.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("client_ca_file: %w", err)
		}
		conf.ClientCAs = pool
		conf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return conf, nil
}

// loadCertPool reads a client CA file with ParseCertPool.
func loadCertPool(file string) (*x509.CertPool, error) {
	data, err := ReadTLSFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := ParseCertPool(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return pool, nil
}

// ParseCertPool parses every CERTIFICATE block of PEM data. Unlike
// x509.CertPool.AppendCertsFromPEM it does not skip a certificate it cannot
// parse, and data without any certificate is an error: either would leave
// the endpoint refusing clients for no visible reason. The configuration
// checks client CA files with it, so validate accepts what start will.
func ParseCertPool(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, ErrNoCertificate
	}
	return pool, nil
}

// ErrNoCertificate: PEM data holds no certificate.
var ErrNoCertificate = errors.New("no PEM certificate found")

// SelfSignedHosts lists the names a self-signed certificate for a listener
// on address (HOST:PORT) is made valid for: localhost, 127.0.0.1 and ::1,
// plus HOST when it is a name or a specific IP. When HOST is empty or an
// unspecified address (0.0.0.0, ::), which means every interface, the
// machine's host name is added instead, if it has one.
func SelfSignedHosts(address string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().WithZone("").String()
		if ip.IsUnspecified() {
			host = ""
		}
	}
	if host == "" {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return appendHost(hosts, host)
}

func appendHost(hosts []string, host string) []string {
	if host == "" {
		return hosts
	}
	for _, h := range hosts {
		if strings.EqualFold(h, host) {
			return hosts
		}
	}
	return append(hosts, host)
}

// SelfSignedCertificate generates a self-signed ECDSA P-256 server
// certificate valid for hosts (DNS names and IP addresses) from an hour
// before now for SelfSignedValidity. The certificate is its own issuer:
// a client trusts it by putting its Leaf in its RootCAs.
func SelfSignedCertificate(hosts []string, now time.Time) (tls.Certificate, error) {
	if len(hosts) == 0 {
		return tls.Certificate{}, errors.New("no host names")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl, err := leafTemplate(hosts[0], now)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl.Subject.Organization = []string{"superd self-signed"}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	addSANs(tmpl, hosts)
	return makeCertificate(tmpl, tmpl, key, key)
}

// leafTemplate is the part common to every end-entity certificate made here.
func leafTemplate(commonName string, now time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(SelfSignedValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}, nil
}

// addSANs files each host under IPAddresses or DNSNames.
func addSANs(tmpl *x509.Certificate, hosts []string) {
	for _, h := range hosts {
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if ip, err := netip.ParseAddr(h); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.Unmap().WithZone("").AsSlice()))
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// makeCertificate signs tmpl with the issuer's key and returns it with its
// own key, parsed leaf included.
func makeCertificate(tmpl, issuer *x509.Certificate, key *ecdsa.PrivateKey, issuerKey *ecdsa.PrivateKey) (tls.Certificate, error) {
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
