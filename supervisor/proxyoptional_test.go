package supervisor

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/metrics"
	"github.com/superd-dev/superd/services/qotd"
)

// peerFactory wraps a factory: each protocol reports its transport's
// PeerAddr when its connection is made.
type peerFactory struct {
	framework.Factory
	peers chan net.Addr
}

func (f *peerFactory) BuildProtocol(a net.Addr) framework.Protocol {
	return &peerProtocol{Protocol: f.Factory.BuildProtocol(a), peers: f.peers}
}

type peerProtocol struct {
	framework.Protocol
	peers chan net.Addr
}

func (p *peerProtocol) ConnectionMade(t framework.Transport) {
	p.peers <- t.PeerAddr()
	p.Protocol.ConnectionMade(t)
}

const optionalQuote = "Silence is no header"

// proxiedQOTD starts a qotd service (server speaks first) on a tcp
// endpoint trusting 127.0.0.1 to send a PROXY header within 200ms, with
// its access log in a file. It returns the endpoint's address, the
// metrics, the log's path and the peers the protocols were made for.
func proxiedQOTD(t *testing.T, required bool) (string, *metrics.Metrics, string, chan net.Addr) {
	t.Helper()
	q, err := qotd.New(nil, &qotd.Config{Quote: optionalQuote})
	if err != nil {
		t.Fatal(err)
	}
	f := &peerFactory{Factory: q, peers: make(chan net.Addr, 8)}
	addr := testkit.FreeAddr(t, "tcp")
	ep := tcpEndpoint(addr)
	ep.Proxy = &endpoint.ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Required: required, Timeout: 200 * time.Millisecond}
	s, m := newTestSupervisor()
	logPath := filepath.Join(t.TempDir(), "access.log")
	l, err := accesslog.Open(logPath, accesslog.FormatJSON, m.AccessLogDropped)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s.SetAccessLog(l)
	sc := serviceConfig("q", f, config.Limits{}, ep)
	sc.AccessLog = true
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{sc}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(time.Second) })
	return addr, m, logPath, f.peers
}

// readToEnd reads what the service sends until the connection ends
// (a refused one may end with a reset), within 10s.
func readToEnd(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatalf("the connection did not end within 10s (read %q)", b)
	}
	return string(b)
}

func proxyRejected(m *metrics.Metrics) float64 {
	return testutil.ToFloat64(m.ConnectionsRejected.WithLabelValues("q", "lifecycle", metrics.RejectProxyProtocol))
}

// With required = false, a trusted peer that sends nothing has no header:
// once the header's timeout has passed it is served as a direct client,
// with its own address, and a server-speaks-first service speaks.
func TestProxyProtocolOptionalSilentClientServed(t *testing.T) {
	addr, m, logPath, peers := proxiedQOTD(t, false)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := readToEnd(t, c); got != optionalQuote+"\r\n" {
		t.Fatalf("read %q, want the quote", got)
	}
	own := c.LocalAddr().String()
	select {
	case p := <-peers:
		if p.String() != own {
			t.Errorf("PeerAddr %v, want the client's own %v", p, own)
		}
	default:
		t.Error("no protocol was made, yet the quote came")
	}
	line := readAccessLines(t, logPath, 1)[0]
	if line["peer"] != own || line["reason"] != "clean" {
		t.Errorf("access log %v: want peer %s, reason clean", line, own)
	}
	if p, ok := line["proxy"]; ok && p != "" {
		t.Errorf("access log proxy = %v for a direct client", p)
	}
	if n := proxyRejected(m); n != 0 {
		t.Errorf("rejected{reason=proxy_protocol} = %v, want 0", n)
	}
}

// With required = false, bytes a header begins with and then nothing is
// a late header: refused as proxy_protocol, and the service never speaks.
func TestProxyProtocolOptionalStalledHeaderRejected(t *testing.T) {
	addr, m, _, peers := proxiedQOTD(t, false)
	for i, partial := range []string{"PROXY TCP4 ", "PR", "\r\n\r\n\x00\r"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, partial); err != nil {
			t.Fatal(err)
		}
		if got := readToEnd(t, c); got != "" {
			t.Errorf("%q: read %q from a connection whose header stalled", partial, got)
		}
		c.Close()
		want := float64(i + 1)
		waitFor(t, func() bool { return proxyRejected(m) == want })
	}
	select {
	case p := <-peers:
		t.Errorf("a protocol was made for %v", p)
	default:
	}
}

// With required = true, a silent trusted peer is refused once the
// timeout has passed, as before.
func TestProxyProtocolRequiredSilentClientRejected(t *testing.T) {
	addr, m, logPath, peers := proxiedQOTD(t, true)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := readToEnd(t, c); got != "" {
		t.Errorf("read %q from a refused connection", got)
	}
	waitFor(t, func() bool { return proxyRejected(m) == 1 })
	if line := readAccessLines(t, logPath, 1)[0]; line["reason"] != metrics.RejectProxyProtocol {
		t.Errorf("access log %v: want reason proxy_protocol", line)
	}
	select {
	case p := <-peers:
		t.Errorf("a protocol was made for %v", p)
	default:
	}
}
