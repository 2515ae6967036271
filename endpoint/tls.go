package endpoint

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/superd-dev/superd/internal/certmake"
	"github.com/superd-dev/superd/internal/fsutil"
)

// SelfSignedValidity is how long a certificate made by SelfSignedCertificate
// is valid, counted from its start time.
const SelfSignedValidity = 365 * 24 * time.Hour

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
// below, at start (NewTLSServer) and by the configuration's validation alike,
// so `superd validate` accepts exactly the files start will (and a
// certificate reload, LoadCertificates, the same again).

// ReadTLSFile reads a certificate, key or client CA file: a regular file
// (never a FIFO or a device, which could block or never end) of at most
// MaxTLSFileSize bytes. Errors read "PATH: cause", "PATH is not a regular
// file" or "PATH is too large".
func ReadTLSFile(path string) ([]byte, error) {
	return fsutil.ReadRegularFile(path, MaxTLSFileSize)
}

// ParseKeyPair parses a certificate chain and its private key, both PEM,
// and checks that they match. The result's Leaf is the parsed first
// certificate.
func ParseKeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err == nil && cert.Leaf == nil {
		cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0])
	}
	return cert, err
}

// TLSServer is the server side of a tls endpoint: the tls.Config its
// handshakes use, and the certificates that config serves. The
// certificates can be replaced while the endpoint serves (SetCertificates,
// a certificate reload): a handshake already done keeps what it got, the
// next one sees the new set. Safe for concurrent use.
type TLSServer struct {
	config *tls.Config
	certs  atomic.Pointer[[]tls.Certificate]
}

// NewTLSServer builds the server side of a tls endpoint:
//   - its certificates are read from cfg's files (see LoadCertificates),
//     or, when cfg.SelfSigned, one is generated in memory at time now (see
//     SelfSignedHosts for the names it is valid for); each handshake gets
//     the certificate chosen by the client's SNI (see GetCertificate);
//   - MinVersion is cfg.MinVersion (DefaultTLSMinVersion when zero; only
//     1.2 and 1.3 are accepted);
//   - NextProtos is cfg.ALPN: a client offering ALPN gets the first of
//     them it offers too, and a client offering none of them is refused
//     (crypto/tls's rule); a client offering no ALPN at all is served;
//   - with cfg.ClientCAFile, clients must present a certificate signed by
//     one of the certificates in that PEM file
//     (tls.RequireAndVerifyClientCert); a file holding no certificate is an
//     error.
//
// Errors name the endpoint: "endpoint tls:127.0.0.1:8443: load certificate:
// ...".
func NewTLSServer(cfg Config, now time.Time) (*TLSServer, error) {
	s, err := newTLSServer(cfg, now)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", labelOf(cfg), err)
	}
	return s, nil
}

func newTLSServer(cfg Config, now time.Time) (*TLSServer, error) {
	minVersion := cfg.MinVersion
	if minVersion == 0 {
		minVersion = DefaultTLSMinVersion
	}
	if !slices.Contains(slices.Collect(maps.Values(tlsVersions)), minVersion) { // 1.2, 1.3
		return nil, fmt.Errorf("unsupported TLS min_version %s (use 1.2 or 1.3)", tls.VersionName(minVersion))
	}
	if err := CheckALPN(cfg.ALPN); err != nil {
		return nil, err
	}

	var certs []tls.Certificate
	if cfg.SelfSigned {
		if cfg.CertFile != "" || cfg.KeyFile != "" || len(cfg.Certificates) > 0 {
			return nil, errors.New("self_signed and cert_file/key_file or certificate blocks are exclusive")
		}
		cert, err := SelfSignedCertificate(SelfSignedHosts(cfg.Addr.String()), now)
		if err != nil {
			return nil, fmt.Errorf("self-signed certificate: %w", err)
		}
		certs = []tls.Certificate{cert}
	} else {
		var err error
		if certs, err = loadCertificates(cfg); err != nil {
			return nil, err
		}
	}

	s := &TLSServer{}
	s.certs.Store(&certs)
	s.config = &tls.Config{
		GetCertificate: s.GetCertificate,
		MinVersion:     minVersion,
		NextProtos:     slices.Clone(cfg.ALPN),
	}
	if cfg.ClientCAFile != "" {
		pool, err := loadCertPool(cfg.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("client_ca_file: %w", err)
		}
		s.config.ClientCAs = pool
		s.config.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return s, nil
}

// Config returns the tls.Config for the endpoint's handshakes
// (tls.Server). It must not be modified.
func (s *TLSServer) Config() *tls.Config { return s.config }

// Certificates returns the certificates served now, the default first. The
// slice must not be modified.
func (s *TLSServer) Certificates() []tls.Certificate { return *s.certs.Load() }

// SetCertificates replaces the certificates served from the next handshake
// on; certs (at least one, with parsed Leaf, as LoadCertificates returns
// them) must not be modified afterwards.
func (s *TLSServer) SetCertificates(certs []tls.Certificate) {
	if len(certs) == 0 {
		panic("endpoint: SetCertificates with no certificate")
	}
	s.certs.Store(&certs)
}

// GetCertificate chooses the certificate of a handshake (the
// tls.Config.GetCertificate of Config) as crypto/tls chooses among
// tls.Config.Certificates: with SNI, the first certificate valid for the
// name the client asked for (x509.Certificate.VerifyHostname: DNS names,
// wildcards matching one label, IP addresses) and usable by the client
// (its signature algorithms and versions); without SNI, or when none
// matches, the first certificate, the default.
func (s *TLSServer) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	certs := *s.certs.Load()
	if hello.ServerName != "" && len(certs) > 1 {
		for i := range certs {
			if hello.SupportsCertificate(&certs[i]) == nil {
				return &certs[i], nil
			}
		}
	}
	return &certs[0], nil
}

// CertificateFiles returns the certificate and key files of a tls endpoint
// in the order they are offered: the one-certificate form (CertFile and
// KeyFile), or the certificate blocks. Empty for a self-signed endpoint.
func (c Config) CertificateFiles() []CertificateFiles {
	if c.CertFile != "" || c.KeyFile != "" {
		return []CertificateFiles{{CertFile: c.CertFile, KeyFile: c.KeyFile}}
	}
	return c.Certificates
}

// LoadCertificates reads and parses the certificate and key files of a tls
// endpoint (see Config.CertificateFiles), each pair with ReadTLSFile and
// ParseKeyPair, the default first: what a certificate reload swaps in with
// TLSServer.SetCertificates. Errors name the endpoint, and the block when
// there are several: "endpoint tls:ADDRESS: certificate 2: key_file: ...".
func LoadCertificates(cfg Config) ([]tls.Certificate, error) {
	certs, err := loadCertificates(cfg)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", labelOf(cfg), err)
	}
	return certs, nil
}

func loadCertificates(cfg Config) ([]tls.Certificate, error) {
	if (cfg.CertFile != "" || cfg.KeyFile != "") && len(cfg.Certificates) > 0 {
		return nil, errors.New("cert_file/key_file and certificate blocks are exclusive")
	}
	files := cfg.CertificateFiles()
	if len(files) == 0 {
		return nil, errors.New("needs cert_file and key_file, certificate blocks, or self_signed = true")
	}
	certs := make([]tls.Certificate, 0, len(files))
	for i, f := range files {
		cert, err := loadKeyPair(f)
		if err != nil {
			if len(cfg.Certificates) > 0 {
				err = fmt.Errorf("certificate %d: %w", i+1, err)
			}
			return nil, err
		}
		certs = append(certs, cert)
	}
	return certs, nil
}

// loadKeyPair reads one certificate and its key, with a parsed Leaf.
func loadKeyPair(f CertificateFiles) (tls.Certificate, error) {
	if f.CertFile == "" || f.KeyFile == "" {
		return tls.Certificate{}, errors.New("needs cert_file and key_file")
	}
	certPEM, err := ReadTLSFile(f.CertFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cert_file: %w", err)
	}
	keyPEM, err := ReadTLSFile(f.KeyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key_file: %w", err)
	}
	cert, err := ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate: %w", err)
	}
	return cert, nil
}

// CheckALPN checks the protocol names of an alpn list: each 1 to 255
// bytes (the most the TLS extension carries), none twice.
func CheckALPN(protos []string) error {
	for i, p := range protos {
		if p == "" || len(p) > 255 {
			return fmt.Errorf("ALPN protocol %q: a name is 1 to 255 bytes", p)
		}
		if slices.Contains(protos[:i], p) {
			return fmt.Errorf("ALPN protocol %q is listed twice", p)
		}
	}
	return nil
}

// CertificateName is the name a certificate goes by in the expiry gauge
// and in logs: its first DNS name, or its subject's common name, or (an
// IP address certificate, whose subject may be empty) its first IP
// address; failing all of them, its serial number, so that no certificate
// goes by "" and two such certificates by one name.
func CertificateName(leaf *x509.Certificate) string {
	switch {
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0]
	case leaf.Subject.CommonName != "":
		return leaf.Subject.CommonName
	case len(leaf.IPAddresses) > 0:
		if ip, ok := netip.AddrFromSlice(leaf.IPAddresses[0]); ok {
			return ip.Unmap().String()
		}
	}
	if leaf.SerialNumber != nil {
		return "serial:" + leaf.SerialNumber.Text(16)
	}
	return ""
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
	tmpl, err := certmake.Template(hosts[0], now, SelfSignedValidity)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl.Subject.Organization = []string{"superd self-signed"}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	certmake.AddSANs(tmpl, hosts)
	return certmake.Sign(tmpl, tmpl, key, key)
}
