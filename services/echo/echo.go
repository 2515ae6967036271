// Package echo implements the echo service of RFC 862: every byte received
// is sent back.
//
// Name: echo. Attributes: none beyond the common ones.
//
//	service "echo" "echo" {
//	  endpoint "tcp" { address = "127.0.0.1:7007" }
//	}
//
// Echo to a peer that does not read is flow-controlled by the framework:
// reading stops while the reply backlog is above the high-water mark, so
// memory stays bounded.
package echo

import "github.com/superd-dev/superd/framework"

func init() {
	framework.Register(framework.Spec{
		Name:        "echo",
		Description: "RFC 862 echo: sends back every byte received",
		New: func(*framework.Config) (framework.Factory, error) {
			return framework.ForProtocol(func() framework.Protocol { return new(Echo) }), nil
		},
	})
}

// Echo is the echo protocol.
type Echo struct{ framework.BaseProtocol }

// DataReceived writes data back.
func (e *Echo) DataReceived(data []byte) { e.Transport.Write(data) }
