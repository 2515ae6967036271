// Package endpoint owns superd's listening sockets: TCP, TLS (certificate
// files or a self-signed certificate made at start, optional client
// certificates) and unix sockets (mode, stale-socket replacement, removal at
// close).
package endpoint

import (
	"io/fs"
)

// Kinds of endpoint, as written in `endpoint "KIND" { ... }`.
const (
	KindTCP  = "tcp"
	KindTLS  = "tls"
	KindUnix = "unix"
)

// Config is one decoded, validated endpoint block.
type Config struct {
	// Kind is KindTCP, KindTLS or KindUnix.
	Kind string
	// Label names the endpoint in metrics and logs: "tcp:ADDRESS",
	// "tls:ADDRESS" or "unix:PATH", with ADDRESS and PATH as written.
	Label string

	// Address is HOST:PORT for tcp and tls.
	Address string

	// Path is the unix socket path, resolved against the config folder.
	Path string
	// Mode is applied to the unix socket file before the first accept.
	Mode fs.FileMode

	// TLS: certificate and key files (resolved paths), or SelfSigned.
	CertFile, KeyFile string
	SelfSigned        bool
	// ClientCAFile, when set, requires client certificates signed by it.
	ClientCAFile string
	// MinVersion is tls.VersionTLS12 or tls.VersionTLS13.
	MinVersion uint16
}
