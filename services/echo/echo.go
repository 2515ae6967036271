// Package echo implements the echo service of RFC 862: every byte received
// on a connection is sent back, and on udp every datagram is sent back to
// its sender.
//
// Name: echo. Attributes: none beyond the common ones. Serves streams
// (tcp, tls, unix) and datagrams (udp).
//
//	service "echo" "echo" {
//	  endpoint "tcp" { address = "127.0.0.1:7007" }
//	}
//
// Echo to a peer that does not read is flow-controlled by the framework:
// reading stops while the reply backlog is above the high-water mark, so
// memory stays bounded. A datagram's echo allocates nothing.
package echo

import (
	"net"

	"github.com/superd-dev/superd/framework"
)

func init() {
	framework.Register(framework.Spec{
		Name:           "echo",
		Description:    "RFC 862 echo: sends back every byte received",
		Serves:         framework.Streams | framework.Datagrams,
		DatagramGuards: true, // a small service: the classic reflection target
		New: func(*framework.Env, any) (framework.Factory, error) {
			return Factory{}, nil
		},
	})
}

// Factory builds an Echo per connection and a DatagramEcho per udp
// endpoint.
type Factory struct{}

// BuildProtocol implements framework.Factory.
func (Factory) BuildProtocol(net.Addr) framework.Protocol { return new(Echo) }

// BuildDatagramProtocol implements framework.DatagramFactory.
func (Factory) BuildDatagramProtocol(t framework.DatagramTransport) framework.DatagramProtocol {
	return &DatagramEcho{Transport: t}
}

// Echo is the echo protocol.
type Echo struct{ framework.BaseProtocol }

// DataReceived writes data back.
func (e *Echo) DataReceived(data []byte) { e.Transport.Write(data) }

// DatagramEcho is the echo protocol of one udp endpoint.
type DatagramEcho struct{ Transport framework.DatagramTransport }

// DatagramReceived sends data back to from (WriteTo is done with data when
// it returns, so the datagram needs no copy).
func (e *DatagramEcho) DatagramReceived(data []byte, from net.Addr) { e.Transport.WriteTo(data, from) }

// Interface guards.
var (
	_ framework.Factory          = Factory{}
	_ framework.DatagramFactory  = Factory{}
	_ framework.Protocol         = (*Echo)(nil)
	_ framework.DatagramProtocol = (*DatagramEcho)(nil)
)
