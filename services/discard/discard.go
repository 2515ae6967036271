// Package discard implements the discard service of RFC 863: everything
// received, on a connection or in a datagram, is dropped, and nothing is
// ever sent back.
//
// Name: discard. Attributes: none beyond the common ones. Serves streams
// (tcp, tls, unix) and datagrams (udp).
//
//	service "discard" "discard" {
//	  endpoint "tcp" { address = "127.0.0.1:7009" }
//	}
//
// A discard connection lives until its peer closes it (or idle_timeout,
// when set): bound it with the common limits as for any service.
package discard

import (
	"net"

	"github.com/superd-dev/superd/framework"
)

func init() {
	framework.Register(framework.Spec{
		Name:           "discard",
		Description:    "RFC 863 discard: reads and drops everything, answers nothing",
		Serves:         framework.Streams | framework.Datagrams,
		DatagramGuards: true, // a small service: the classic reflection target
		New: func(*framework.Env, any) (framework.Factory, error) {
			return Factory{}, nil
		},
	})
}

// Factory builds discard protocols: one per connection, and one per udp
// endpoint.
type Factory struct{}

// BuildProtocol implements framework.Factory.
func (Factory) BuildProtocol(net.Addr) framework.Protocol { return new(Discard) }

// BuildDatagramProtocol implements framework.DatagramFactory.
func (Factory) BuildDatagramProtocol(framework.DatagramTransport) framework.DatagramProtocol {
	return framework.DatagramFunc(func([]byte, net.Addr) {})
}

// Discard is the protocol of one connection; BaseProtocol already drops
// what it receives.
type Discard struct{ framework.BaseProtocol }

// Interface guards.
var (
	_ framework.Factory         = Factory{}
	_ framework.DatagramFactory = Factory{}
	_ framework.Protocol        = (*Discard)(nil)
)
