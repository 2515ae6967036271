package supervisor

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// abortOnData aborts its connection when data arrives.
type abortOnData struct{ framework.BaseProtocol }

func (p *abortOnData) DataReceived([]byte) { p.Transport.AbortConnection() }

// An aborted connection ends with a reset, so that its peer learns that
// data was dropped, behind a PROXY header as for any client: a proxy in
// front must not take the end for an orderly one.
func TestProxyProtocolAbortResets(t *testing.T) {
	for _, proxied := range []bool{false, true} {
		name := "direct"
		if proxied {
			name = "proxied"
		}
		t.Run(name, func(t *testing.T) {
			addr := testkit.FreeAddr(t, "tcp")
			ep := tcpEndpoint(addr)
			ep.Proxy = &endpoint.ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Required: proxied, Timeout: 2 * time.Second}
			if !proxied {
				ep.Proxy = nil
			}
			f := framework.ForProtocol(func() framework.Protocol { return new(abortOnData) })
			s, _ := newTestSupervisor()
			if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{serviceConfig("a", f, config.Limits{}, ep)}}); err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown(time.Second)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if proxied {
				io.WriteString(c, "PROXY TCP4 192.0.2.10 127.0.0.1 40000 7\r\n")
			}
			io.WriteString(c, "x")
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.Copy(io.Discard, c)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the client read %v at the end; want a reset (ECONNRESET)", err)
			}
		})
	}
}
