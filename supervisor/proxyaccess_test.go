package supervisor

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// readAccessLines polls the JSON access log file until it holds n lines.
func readAccessLines(t *testing.T, path string, n int) []map[string]any {
	t.Helper()
	return waitAccessLog(t, path, "json", n)
}

// A client a PROXY header names is the peer of the access log's rejection
// lines too: refused by deny or a per-source limit, it is logged with its
// own address, and the proxy's goes to the proxy field.
func TestProxyProtocolRejectionLoggedWithRealClient(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp")
	ep := tcpEndpoint(addr)
	ep.Proxy = &endpoint.ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Required: true, Timeout: 2 * time.Second}
	f := &lifecycleFactory{}
	s, m := newTestSupervisor()
	logPath := filepath.Join(t.TempDir(), "access.log")
	l, err := accesslog.Open(logPath, accesslog.FormatJSON, m.AccessLogDropped)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s.SetAccessLog(l)
	lim := config.Limits{Deny: []netip.Prefix{netip.MustParsePrefix("192.0.2.66/32")}}
	sc := serviceConfig("p", f, lim, ep)
	sc.AccessLog = true
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{sc}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "PROXY TCP4 192.0.2.66 127.0.0.1 40003 7\r\n")
	lines := readAccessLines(t, logPath, 1)
	got := lines[0]
	if got["reason"] != "denied" {
		t.Fatalf("line %v: want reason denied", got)
	}
	if got["peer"] != "192.0.2.66:40003" {
		t.Errorf("peer = %v, want the client the header names, 192.0.2.66:40003", got["peer"])
	}
	if p, _ := got["proxy"].(string); !strings.HasPrefix(p, "127.0.0.1:") {
		t.Errorf("proxy = %v, want the proxy's address", got["proxy"])
	}
}

// rejectingHandler is a factory that serves connections itself and
// refuses each (as exec does past its own limits).
type rejectingHandler struct{ lifecycleFactory }

func (*rejectingHandler) ServeConn(hc *framework.HandedConn) error {
	hc.Conn.Close()
	return &framework.RejectError{Reason: "max_connections_per_ip", Err: errors.New("too many")}
}

// A connection a handler refuses after a PROXY header is logged with the
// client the header names.
func TestProxyProtocolHandlerRejectionLoggedWithRealClient(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp")
	ep := tcpEndpoint(addr)
	ep.Proxy = &endpoint.ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Required: true, Timeout: 2 * time.Second}
	s, m := newTestSupervisor()
	logPath := filepath.Join(t.TempDir(), "access.log")
	l, err := accesslog.Open(logPath, accesslog.FormatJSON, m.AccessLogDropped)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s.SetAccessLog(l)
	sc := serviceConfig("h", &rejectingHandler{}, config.Limits{}, ep)
	sc.AccessLog = true
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{sc}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "PROXY TCP4 192.0.2.7 127.0.0.1 40007 7\r\n")
	got := readAccessLines(t, logPath, 1)[0]
	if got["reason"] != "max_connections_per_ip" {
		t.Fatalf("line %v: want reason max_connections_per_ip", got)
	}
	if got["peer"] != "192.0.2.7:40007" {
		t.Errorf("peer = %v, want the client the header names, 192.0.2.7:40007", got["peer"])
	}
	if p, _ := got["proxy"].(string); !strings.HasPrefix(p, "127.0.0.1:") {
		t.Errorf("proxy = %v, want the proxy's address", got["proxy"])
	}
}
