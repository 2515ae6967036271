// Package config owns superd's configuration language: the HCL schema of the
// file, its decoding (common attributes here, factory attributes by the
// factory's own schema), validation, and diagnostics that point at file, line
// and column.
package config

import (
	"net/netip"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
)

// Defaults of the common attributes.
const (
	DefaultMetricsAddress  = "127.0.0.1:9464"
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultMaxPendingOutput is the framework's: a connection served
	// without a limit gets the same.
	DefaultMaxPendingOutput = framework.DefaultMaxPendingOutput
	DefaultIPv6Prefix       = 64

	// MinMaxPendingOutput is the smallest max_pending_output accepted:
	// the framework's HighWaterMark (64 KiB), above which reading from a
	// peer pauses. A smaller hard limit would drop connections (an echo
	// client sending fast) that flow control alone would have slowed down.
	MinMaxPendingOutput = framework.HighWaterMark
)

// DefaultLimits are the limits of a service block that sets none: what
// decoding starts from, and what a Service built without a file should
// start from too (a zero Limits groups IPv6 sources by /0, one source for
// all of them).
func DefaultLimits() Limits {
	return Limits{IPv6Prefix: DefaultIPv6Prefix, MaxPendingOutput: DefaultMaxPendingOutput}
}

// File is a decoded, validated configuration file.
type File struct {
	// Path is the file as given on the command line.
	Path string
	// Dir is the absolute folder of Path; relative paths in the file
	// resolve against it.
	Dir string
	// MetricsAddress is metrics.address; "" disables the metrics listener.
	MetricsAddress  string
	ShutdownTimeout time.Duration
	// AccessLog is the access_log block; nil when there is none (services
	// with access_log = true then log to stderr as JSON).
	AccessLog *AccessLog
	// RunAs is the top-level user and group superd switches to once every
	// socket is bound and every factory has started; nil: it stays as it
	// started.
	RunAs *RunAs
	// Cluster is the top-level cluster block; nil when there is none.
	Cluster *Cluster
	// Services in the order of the file.
	Services []*Service
	// Warnings are diagnostics that did not make the file invalid (usually
	// none); WriteWarnings prints them with their source lines.
	Warnings hcl.Diagnostics

	files map[string]*hcl.File // the parser's cache, for WriteWarnings
}

// Service is one `service "FACTORY" "NAME"` block.
type Service struct {
	Name    string
	Factory string
	// Spec is the registered factory; FactoryConfig its configuration,
	// decoded and checked: a pointer to a copy of Spec.Config (nil when
	// the factory has none). NewFactory builds the factory from them.
	Spec          *framework.Spec
	FactoryConfig any
	Limits        Limits
	Endpoints     []endpoint.Config
	// Fingerprint is equal for two blocks that configure the same thing
	// (same factory, attributes, limits and endpoints, after evaluation,
	// file paths included, and the contents of client CA files); reload
	// keeps a service whose fingerprint did not change.
	Fingerprint string
	// CertFingerprint is a digest of the contents of the certificate and
	// key files of its tls endpoints ("" when it has none): a kept service
	// whose CertFingerprint changed has its certificates swapped in place.
	CertFingerprint string
	// AccessLog: this service's connections are written to the access log.
	AccessLog bool
	// DefRange is the block header's range, for diagnostics.
	DefRange hcl.Range

	cluster bool   // the file has a cluster block
	runAs   *RunAs // the file's top-level user, if any
}

// AccessLog is where and how the access log is written.
type AccessLog struct {
	Path   string // "stderr" or a resolved file path
	Format string // "json" or "text"
}

// Limits are the attributes every service accepts whatever its factory.
type Limits struct {
	MaxConnections      int // 0: unlimited
	MaxConnectionsPerIP int // 0: unlimited
	// MaxConnectionsPerUID bounds the open connections of one peer uid on
	// unix sockets (SO_PEERCRED); 0: unlimited.
	MaxConnectionsPerUID int
	IdleTimeout          time.Duration
	Allow                []netip.Prefix // empty: everyone
	Deny                 []netip.Prefix
	RateLimit            *Rate // nil: none
	RateLimitPerIP       *Rate
	IPv6Prefix           int // bits; per-source keys group IPv6 by this prefix
	MaxPendingOutput     int // bytes; above it a connection is dropped as slow_consumer

	// RateLimitPerIPDatagramsOnly: RateLimitPerIP is the default of a
	// factory with DatagramGuards (DefaultDatagramRateLimitPerIP), which
	// limits datagrams only, never connections.
	RateLimitPerIPDatagramsOnly bool
}

// Rate is a token bucket: Rate tokens per second, Burst at most (and at
// start).
type Rate struct {
	Rate  float64
	Burst int
}
