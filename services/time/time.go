// Package time implements the time service of RFC 868: the current time as
// 4 bytes, big-endian, counting seconds since 1900-01-01 00:00 UTC modulo
// 2^32, then close (on udp, one such reply per datagram). rdate -p and
// rdate -pu read it.
//
// Name: time. Attributes: none beyond the common ones. Serves streams
// (tcp, tls, unix) and datagrams (udp).
//
//	service "time" "time" {
//	  endpoint "tcp" { address = "127.0.0.1:7037" }
//	}
//
// The count wraps to 0 on 2036-02-07 06:28:16 UTC, as the RFC's 32 bits
// do; clients are expected to read it modulo 2^32.
package time

import (
	"encoding/binary"
	"net"
	stdtime "time"

	"github.com/superd-dev/superd/framework"
)

// Offset1900 is the number of seconds from RFC 868's epoch, 1900-01-01
// 00:00 UTC, to the Unix epoch.
const Offset1900 = 2208988800

// Stamp returns t the way RFC 868 counts it: seconds since 1900 modulo 2^32
// (the conversion keeps the low 32 bits, which is that modulo).
func Stamp(t stdtime.Time) uint32 { return uint32(t.Unix() + Offset1900) }

func init() {
	framework.Register(framework.Spec{
		Name:           "time",
		Description:    "RFC 868 time: 4 bytes, seconds since 1900 (big-endian), then closes",
		Serves:         framework.Streams | framework.Datagrams,
		DatagramGuards: true, // a small service: the classic reflection target
		New: func(*framework.Env, any) (framework.Factory, error) {
			return Factory{}, nil
		},
	})
}

// Factory builds time protocols: one per connection, and one per udp
// endpoint.
type Factory struct{}

// BuildProtocol implements framework.Factory.
func (Factory) BuildProtocol(net.Addr) framework.Protocol { return new(Time) }

// BuildDatagramProtocol implements framework.DatagramFactory.
func (Factory) BuildDatagramProtocol(t framework.DatagramTransport) framework.DatagramProtocol {
	return &DatagramTime{Transport: t}
}

// Time is the protocol of one connection.
type Time struct{ framework.BaseProtocol }

// ConnectionMade sends the time and closes.
func (*Time) ConnectionMade(t framework.Transport) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], Stamp(stdtime.Now()))
	t.Write(b[:])
	t.LoseConnection()
}

// DatagramTime answers every datagram of one udp endpoint with the time.
type DatagramTime struct {
	Transport framework.DatagramTransport
	// buf is reused for every reply (calls for one endpoint never overlap,
	// and WriteTo does not keep b), so a reply allocates nothing.
	buf [4]byte
}

// DatagramReceived sends the time back to from; the request's content is
// ignored, as the RFC says.
func (d *DatagramTime) DatagramReceived(_ []byte, from net.Addr) {
	binary.BigEndian.PutUint32(d.buf[:], Stamp(stdtime.Now()))
	d.Transport.WriteTo(d.buf[:], from)
}

// Interface guards.
var (
	_ framework.Factory          = Factory{}
	_ framework.DatagramFactory  = Factory{}
	_ framework.Protocol         = (*Time)(nil)
	_ framework.DatagramProtocol = (*DatagramTime)(nil)
)
