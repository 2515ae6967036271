package supervisor

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// connTypes is a factory whose protocols echo and record what kind of
// connection the engine serves them over.
type connTypes struct {
	mu    sync.Mutex
	types []string
}

func (f *connTypes) BuildProtocol(net.Addr) framework.Protocol { return &typeRecorder{f: f} }

type typeRecorder struct {
	framework.BaseProtocol
	f *connTypes
}

func (r *typeRecorder) ConnectionMade(t framework.Transport) {
	r.BaseProtocol.ConnectionMade(t)
	nc := t.(interface{ NetConn() net.Conn }).NetConn()
	r.f.mu.Lock()
	r.f.types = append(r.f.types, fmt.Sprintf("%T", nc))
	r.f.mu.Unlock()
}

func (r *typeRecorder) DataReceived(b []byte) { r.Transport.Write(b) }

func (f *connTypes) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.types) == 0 {
		return ""
	}
	return f.types[len(f.types)-1]
}

// Protocols on plain TCP and unix endpoints are served from bare
// descriptors; a PROXY endpoint keeps net's connection (its header is read
// through it), and all of them echo alike.
func TestBareAcceptWhereServed(t *testing.T) {
	tcpAddr := testkit.FreeAddr(t, "tcp")
	proxyAddr := testkit.FreeAddr(t, "tcp")
	sock := filepath.Join(t.TempDir(), "s")
	proxied := tcpEndpoint(proxyAddr)
	proxied.Proxy = &endpoint.ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Required: true, Timeout: time.Second}

	plain, viaProxy := &connTypes{}, &connTypes{}
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{
		serviceConfig("plain", plain, config.Limits{}, tcpEndpoint(tcpAddr), unixEndpoint(sock, 0o600)),
		serviceConfig("proxied", viaProxy, config.Limits{}, proxied),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)

	for _, tc := range []struct {
		f             *connTypes
		network, addr string
		want          string
	}{
		{plain, "tcp", tcpAddr, "*rawconn.Conn"},
		{plain, "unix", sock, "*rawconn.Conn"},
		{viaProxy, "tcp", proxyAddr, "*net.TCPConn"}, // an untrusted peer: no header, but net's connection
	} {
		c := dialEcho(t, tc.network, tc.addr, "ping")
		c.Close()
		if got := tc.f.last(); got != tc.want {
			t.Errorf("%s %s: served over a %s, want %s", tc.network, tc.addr, got, tc.want)
		}
	}
}
