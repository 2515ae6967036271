// Package daytime implements the daytime service of RFC 867: the current
// date and time as one line of text (CRLF), then close; on udp, one such
// datagram per request.
//
// Name: daytime. Attributes:
//
//	layout = "..."   a Go time layout (default "Monday, January 2, 2006 15:04:05-MST")
//	utc    = false   true: UTC; false: superd's local zone (TZ, /etc/localtime)
//
// Serves streams (tcp, tls, unix) and datagrams (udp).
//
//	service "daytime" "daytime" {
//	  utc = true
//	  endpoint "tcp" { address = "127.0.0.1:7013" }
//	}
//
// RFC 867 leaves the format free; the default is the RFC's own example
// ("Weekday, Month Day, Year Time-Zone"). A layout that holds CR or LF, or
// no time field at all (so every answer would be the same text), is a
// configuration error.
package daytime

import (
	"net"
	"strings"
	"time"

	"github.com/superd-dev/superd/framework"
)

// DefaultLayout is the layout of a daytime service that sets none.
const DefaultLayout = "Monday, January 2, 2006 15:04:05-MST"

func init() {
	framework.Register(framework.Spec{
		Name:           "daytime",
		Description:    "RFC 867 daytime: the date and time as one line, then closes",
		Serves:         framework.Streams | framework.Datagrams,
		DatagramGuards: true, // a small service: the classic reflection target
		Config:         Config{Layout: DefaultLayout},
		New:            framework.Typed(New),
	})
}

// Config is the configuration of a daytime service.
type Config struct {
	Layout string `hcl:"layout,optional" doc:"a Go time layout (reference time Mon Jan 2 15:04:05 MST 2006)"`
	UTC    bool   `hcl:"utc,optional" doc:"UTC instead of superd's local zone"`
}

// Validate checks the layout.
func (c *Config) Validate(framework.IsSet) error {
	switch {
	case c.Layout == "":
		return framework.Errorf(&c.Layout, "the layout is empty")
	case strings.ContainsAny(c.Layout, "\r\n"):
		return framework.Errorf(&c.Layout, "the layout holds a CR or LF; the answer is one line")
	}
	// A time whose every field differs from Go's reference time (AM, where
	// the reference is PM; a Sunday; another zone and offset): a layout
	// that formats it as itself has no field, only literal text (a typo
	// such as "YYYY-MM-DD" does that).
	probe := time.Date(1999, 11, 28, 9, 59, 58, 123456789, time.FixedZone("XYZ", -(3*3600+1800)))
	if probe.Format(c.Layout) == c.Layout {
		return framework.Errorf(&c.Layout, "%q holds no time field; Go layouts spell fields with the reference time, e.g. \"2006-01-02 15:04:05 MST\"", c.Layout)
	}
	return nil
}

// New builds a daytime factory from its configuration.
func New(_ *framework.Env, cfg *Config) (framework.Factory, error) {
	f := &Factory{Layout: cfg.Layout, loc: time.Local}
	if cfg.UTC {
		f.loc = time.UTC
	}
	return f, nil
}

// Factory builds daytime protocols: one per connection, and one per udp
// endpoint.
type Factory struct {
	Layout string
	loc    *time.Location
}

// AppendLine appends t as the service writes it, in its zone, with CRLF.
func (f *Factory) AppendLine(b []byte, t time.Time) []byte {
	b = t.In(f.loc).AppendFormat(b, f.Layout)
	return append(b, '\r', '\n')
}

// BuildProtocol implements framework.Factory.
func (f *Factory) BuildProtocol(net.Addr) framework.Protocol { return &Daytime{factory: f} }

// BuildDatagramProtocol implements framework.DatagramFactory.
func (f *Factory) BuildDatagramProtocol(t framework.DatagramTransport) framework.DatagramProtocol {
	return &DatagramDaytime{factory: f, transport: t, buf: make([]byte, 0, 128)}
}

// Daytime is the protocol of one connection.
type Daytime struct {
	framework.BaseProtocol
	factory *Factory
}

// ConnectionMade sends the line and closes.
func (d *Daytime) ConnectionMade(t framework.Transport) {
	var buf [128]byte
	t.Write(d.factory.AppendLine(buf[:0], time.Now()))
	t.LoseConnection()
}

// DatagramDaytime answers every datagram of one udp endpoint with the line.
type DatagramDaytime struct {
	factory   *Factory
	transport framework.DatagramTransport
	// buf is reused for every reply (calls for one endpoint never overlap,
	// and WriteTo does not keep b), so a reply allocates nothing.
	buf []byte
}

// DatagramReceived sends the line back to from; the request's content is
// ignored, as the RFC says.
func (d *DatagramDaytime) DatagramReceived(_ []byte, from net.Addr) {
	d.buf = d.factory.AppendLine(d.buf[:0], time.Now())
	d.transport.WriteTo(d.buf, from)
}

// Interface guards.
var (
	_ framework.Factory          = (*Factory)(nil)
	_ framework.DatagramFactory  = (*Factory)(nil)
	_ framework.Protocol         = (*Daytime)(nil)
	_ framework.DatagramProtocol = (*DatagramDaytime)(nil)
	_ framework.Validator        = (*Config)(nil)
)
