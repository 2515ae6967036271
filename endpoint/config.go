// Package endpoint owns superd's listening sockets: TCP, TLS (certificate
// files, several chosen by SNI and replaceable while serving, or a
// self-signed certificate made at start; ALPN; optional client
// certificates) and unix sockets (mode, owner and group, stale-socket
// replacement, removal at close; or Linux abstract sockets, which have no
// file).
package endpoint

import (
	"io/fs"
	"net/netip"
	"time"
)

// Kinds of endpoint, as written in `endpoint "KIND" { ... }`.
const (
	KindTCP  = "tcp"
	KindTLS  = "tls"
	KindUnix = "unix"
	KindUDP  = "udp"
)

// IsStream reports whether kind is a stream endpoint (tcp, tls, unix).
func IsStream(kind string) bool { return kind != KindUDP }

// Config is one decoded, validated endpoint block.
type Config struct {
	// Kind is KindTCP, KindTLS, KindUnix or KindUDP.
	Kind string
	// Label names the endpoint in metrics and logs: "tcp:ADDRESS",
	// "tls:ADDRESS", "udp:ADDRESS" or "unix:PATH", with ADDRESS and PATH as
	// written.
	Label string

	// Name matches a socket passed by the service manager (its
	// LISTEN_FDNAMES entry, systemd's FileDescriptorName=); "" when unset.
	Name string

	// Addr is where the endpoint listens: HOST:PORT for tcp, tls and udp,
	// the socket's path (resolved against the config folder) for unix.
	Addr Address

	// Proxy, on tcp and tls endpoints, reads a PROXY protocol header
	// from trusted peers; nil: none is read.
	Proxy *ProxyProtocol

	// tcp, tls and udp: SO_REUSEPORT (several processes share the port).
	ReusePort bool
	// udp: the socket's buffer sizes (0: the system's).
	ReadBuffer, WriteBuffer int
	// TCP: socket options of the listener and its connections.
	TCP TCPOptions

	// Mode is applied to the unix socket file before the first accept
	// (see UnixMode).
	Mode fs.FileMode
	// Owner and Group are the unix socket file's owner and group as
	// written (a name or a number), "" for superd's own; UID and GID are
	// their numbers. They are given with the mode, before the first
	// accept (see SocketOwner).
	Owner, Group string
	UID, GID     int

	// TLS: the certificate and key files (resolved paths) of the
	// one-certificate form, or Certificates (its certificate blocks, the
	// default first), or SelfSigned; only one of the three. See
	// CertificateFiles.
	CertFile, KeyFile string
	Certificates      []CertificateFiles
	SelfSigned        bool
	// ALPN are the application protocols offered, in order of preference
	// (tls.Config.NextProtos); none: no ALPN.
	ALPN []string
	// ClientCAFile, when set, requires client certificates signed by it.
	ClientCAFile string
	// MinVersion is tls.VersionTLS12 or tls.VersionTLS13.
	MinVersion uint16
}

// CertificateFiles are the files of one certificate of a tls endpoint:
// its chain and its private key, PEM (resolved paths).
type CertificateFiles struct {
	CertFile, KeyFile string
}

// ProxyProtocol is an endpoint's proxy_protocol block.
type ProxyProtocol struct {
	// Trusted are the peers allowed to send a header; others are served
	// with their own address and their bytes untouched.
	Trusted []netip.Prefix
	// Required: a trusted peer must send a header.
	Required bool
	// Timeout: the header must be complete within it.
	Timeout time.Duration
}

// Trusts reports whether ip may send a PROXY header.
func (p *ProxyProtocol) Trusts(ip netip.Addr) bool {
	for _, t := range p.Trusted {
		if t.Contains(ip) {
			return true
		}
	}
	return false
}

// DefaultUnixMode is the mode of a unix socket file when the endpoint does
// not say ("0660": the owner and its group may connect).
const DefaultUnixMode fs.FileMode = 0o660

// UnixMode is the mode of a unix endpoint's socket file: Mode's permission
// bits, or DefaultUnixMode when there are none.
func (c Config) UnixMode() fs.FileMode {
	if m := c.Mode.Perm(); m != 0 {
		return m
	}
	return DefaultUnixMode
}

// SocketOwner is the owner and group a unix endpoint's socket file is
// given: UID when Owner is set, GID when Group is set, and -1 (unchanged:
// superd's own) for either one that is not.
func (c Config) SocketOwner() (uid, gid int) {
	uid, gid = -1, -1
	if c.Owner != "" {
		uid = c.UID
	}
	if c.Group != "" {
		gid = c.GID
	}
	return uid, gid
}

// fileAttrs are what a unix socket file is given before it listens.
type fileAttrs struct {
	mode     fs.FileMode
	uid, gid int // -1: unchanged
}

func (c Config) fileAttrs() fileAttrs {
	uid, gid := c.SocketOwner()
	return fileAttrs{mode: c.UnixMode(), uid: uid, gid: gid}
}

// chown reports whether a changes the file's owner or group.
func (a fileAttrs) chown() bool { return a.uid >= 0 || a.gid >= 0 }

// TCPOptions are the socket options of a tcp or tls endpoint. The zero
// value is the default: the kernel's backlog, no Nagle delay, keepalive
// probes after 15 s idle, dual stack.
type TCPOptions struct {
	// Backlog is listen(2)'s queue length; 0: the kernel's somaxconn.
	Backlog int
	// Nagle turns Nagle's algorithm on (nodelay = false).
	Nagle bool
	// Keepalive is the idle time before TCP keepalive probes: 0 means
	// DefaultKeepalive, a negative value none. KeepaliveInterval and
	// KeepaliveCount are their spacing and number (0: the kernel's).
	Keepalive         time.Duration
	KeepaliveInterval time.Duration
	KeepaliveCount    int
	// V6Only makes a [::] listener IPv6 only (no IPv4-mapped clients).
	V6Only bool
}

// DefaultKeepalive is the keepalive idle time of an endpoint that sets
// none (Go's own default).
const DefaultKeepalive = 15 * time.Second
