package supervisor

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/internal/testkit"
)

// headerPair returns the server side of a loopback connection after the
// client wrote data, split into writes of split bytes (0: one write).
func headerPair(t *testing.T, data []byte, split int, keepOpen bool) (server net.Conn, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	go func() {
		if split <= 0 {
			client.Write(data)
		} else {
			for i := 0; i < len(data); i += split {
				client.Write(data[i:min(i+split, len(data))])
			}
		}
		if !keepOpen {
			client.(*net.TCPConn).CloseWrite()
		}
	}()
	return server, client
}

func v2Header(t *testing.T, cmd proxyproto.ProtocolVersionAndCommand, tlvs []proxyproto.TLV) []byte {
	t.Helper()
	h := &proxyproto.Header{
		Version: 2, Command: cmd, TransportProtocol: proxyproto.TCPv4,
		SourceAddr:      &net.TCPAddr{IP: net.ParseIP("192.0.2.10"), Port: 40000},
		DestinationAddr: &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 7},
	}
	if len(tlvs) > 0 {
		if err := h.SetTLVs(tlvs); err != nil {
			t.Fatal(err)
		}
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadProxyHeader(t *testing.T) {
	pp := &endpoint.ProxyProtocol{Required: true, Timeout: 2 * time.Second}
	optional := &endpoint.ProxyProtocol{Required: false, Timeout: 2 * time.Second}
	long := &endpoint.ProxyProtocol{Required: false, Timeout: 10 * time.Second}
	short := func(required bool) *endpoint.ProxyProtocol {
		return &endpoint.ProxyProtocol{Required: required, Timeout: 200 * time.Millisecond}
	}
	tlvs := []proxyproto.TLV{{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("example.test")}, {Type: 0xE0, Value: []byte{1, 2, 3}}}
	cases := []struct {
		name     string
		pp       *endpoint.ProxyProtocol
		data     []byte
		split    int
		peer     string // "" : the connection's own address
		rest     string // what the protocol reads after the header
		wantErr  string
		keepOpen bool
	}{
		{name: "v1 tcp4", pp: pp, data: []byte("PROXY TCP4 192.0.2.10 192.0.2.1 40000 7\r\nhello"), peer: "192.0.2.10:40000", rest: "hello"},
		{name: "v1 tcp6", pp: pp, data: []byte("PROXY TCP6 2001:db8::10 2001:db8::1 40000 7\r\nhi"), peer: "[2001:db8::10]:40000", rest: "hi"},
		{name: "v1 unknown keeps own address", pp: pp, data: []byte("PROXY UNKNOWN\r\nx"), rest: "x"},
		{name: "v1 split byte by byte", pp: pp, data: []byte("PROXY TCP4 192.0.2.10 192.0.2.1 40000 7\r\nabc"), split: 1, peer: "192.0.2.10:40000", rest: "abc"},
		{name: "v2 proxy with TLVs", pp: pp, data: append(v2Header(t, proxyproto.PROXY, tlvs), "data"...), peer: "192.0.2.10:40000", rest: "data"},
		{name: "v2 split", pp: pp, data: append(v2Header(t, proxyproto.PROXY, tlvs), "data"...), split: 3, peer: "192.0.2.10:40000", rest: "data"},
		{name: "v2 local keeps own address", pp: pp, data: append(v2Header(t, proxyproto.LOCAL, nil), "ok"...), rest: "ok"},
		{name: "missing when required", pp: pp, data: []byte("GET / HTTP/1.0\r\n\r\n"), wantErr: "no PROXY"},
		{name: "missing when optional", pp: optional, data: []byte("plain bytes"), rest: "plain bytes"},
		{name: "malformed v1", pp: pp, data: []byte("PROXY TCP4 not-an-ip 192.0.2.1 1 2\r\n"), wantErr: "malformed"},
		{name: "over-long v1", pp: pp, data: []byte("PROXY TCP4 " + strings.Repeat("1", 200) + "\r\n"), wantErr: "malformed"},
		{name: "truncated v1", pp: pp, data: []byte("PROXY TCP4 192.0.2.10"), wantErr: "closed inside"},
		{name: "truncated v2", pp: pp, data: v2Header(t, proxyproto.PROXY, tlvs)[:20], wantErr: "closed inside"},
		{name: "never completes", pp: &endpoint.ProxyProtocol{Required: true, Timeout: 200 * time.Millisecond},
			data: []byte("PROXY TCP4 192.0.2."), keepOpen: true, wantErr: "not complete within"},
		// Silence is no header: missing, which only required refuses.
		{name: "silent when optional", pp: short(false), keepOpen: true},
		{name: "silent when required", pp: short(true), keepOpen: true, wantErr: "no PROXY"},
		// Bytes a signature begins with, then nothing: a late header.
		{name: "stalls in v1 signature when optional", pp: short(false), data: []byte("PRO"), keepOpen: true, wantErr: "not complete within"},
		{name: "stalls in v1 header when optional", pp: short(false), data: []byte("PROXY TCP4 "), keepOpen: true, wantErr: "not complete within"},
		{name: "stalls in v2 signature when optional", pp: short(false), data: []byte("\r\n\r\n\x00"), keepOpen: true, wantErr: "not complete within"},
		// Bytes no signature begins with are no header, however few: told
		// at once, not after the timeout (10s here).
		{name: "short data when optional", pp: long, data: []byte("P\n"), keepOpen: true, rest: "P\n"},
		{name: "short data after CRLF when optional", pp: long, data: []byte("\r\nhi"), keepOpen: true, rest: "\r\nhi"},
		{name: "short data when required", pp: &endpoint.ProxyProtocol{Required: true, Timeout: 10 * time.Second}, data: []byte("PING"), keepOpen: true, wantErr: "no PROXY"},
		{name: "signature prefix then close", pp: optional, data: []byte("\r\n\r"), wantErr: "closed inside"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := headerPair(t, tc.data, tc.split, tc.keepOpen)
			got, err := readProxyHeader(server, tc.pp)
			if tc.keepOpen {
				// What was sent is read; now the end, so rest can be read
				// to it.
				client.(*net.TCPConn).CloseWrite()
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantPeer := tc.peer
			if wantPeer == "" {
				wantPeer = server.RemoteAddr().String()
			}
			if got.RemoteAddr().String() != wantPeer {
				t.Errorf("peer %v, want %v", got.RemoteAddr(), wantPeer)
			}
			rest, _ := io.ReadAll(got)
			if string(rest) != tc.rest {
				t.Errorf("rest %q, want %q", rest, tc.rest)
			}
		})
	}
}

// The address in the header is the peer for deny and per-source limits; an
// untrusted peer's header is its bytes, untouched; a bad header from a
// trusted one is rejected as proxy_protocol.
func TestProxyProtocolEndToEnd(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp")
	ep := tcpEndpoint(addr)
	ep.Proxy = &endpoint.ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Required: true, Timeout: 2 * time.Second}
	f := &lifecycleFactory{}
	s, m := newTestSupervisor()
	lim := config.Limits{Deny: []netip.Prefix{netip.MustParsePrefix("192.0.2.66/32")}, MaxConnectionsPerIP: 1}
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{serviceConfig("p", f, lim, ep)}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	dial := func(header string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		io.WriteString(c, header)
		return c
	}
	served := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "ping\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		return err == nil && line == "ping\n"
	}
	rejected := func(reason string) float64 {
		return testutil.ToFloat64(m.ConnectionsRejected.WithLabelValues("p", "lifecycle", reason))
	}

	a := dial("PROXY TCP4 192.0.2.10 127.0.0.1 40000 7\r\n")
	if !served(a) {
		t.Fatal("a proxied client was not served")
	}
	// The same real client again: max_connections_per_ip counts it.
	dial("PROXY TCP4 192.0.2.10 127.0.0.1 40001 7\r\n")
	waitFor(t, func() bool { return rejected("max_connections_per_ip") == 1 })
	// Another real client gets in.
	if !served(dial("PROXY TCP4 192.0.2.11 127.0.0.1 40002 7\r\n")) {
		t.Fatal("a second client was refused")
	}
	// deny applies to the header's address.
	dial("PROXY TCP4 192.0.2.66 127.0.0.1 40003 7\r\n")
	waitFor(t, func() bool { return rejected("denied") == 1 })
	// A bad header is proxy_protocol.
	dial("PROXY BOGUS\r\n")
	waitFor(t, func() bool { return rejected("proxy_protocol") == 1 })
}

// Untrusted peers are served as they are: a header they send is data.
func TestProxyProtocolUntrustedPeer(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp")
	ep := tcpEndpoint(addr)
	ep.Proxy = &endpoint.ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Required: true, Timeout: time.Second}
	f := &lifecycleFactory{}
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{serviceConfig("u", f, config.Limits{}, ep)}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	header := "PROXY TCP4 192.0.2.10 127.0.0.1 40000 7\r\n"
	io.WriteString(c, header)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	got := make([]byte, len(header))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte(header)) {
		t.Fatalf("echo %q, %v: the untrusted peer's header was not its data", got, err)
	}
}

// A v2 header of any length its 16-bit field can say is read, TLVs and
// all (go-proxyproto alone stops at 4 KiB), and the bytes after it follow.
func TestReadProxyHeaderLargeV2(t *testing.T) {
	pp := &endpoint.ProxyProtocol{Required: true, Timeout: 2 * time.Second}
	for _, size := range []int{4000, 5000, 65535 - 12 - 3} {
		tlvs := []proxyproto.TLV{{Type: 0xE0, Value: make([]byte, size)}}
		data := append(v2Header(t, proxyproto.PROXY, tlvs), "data"...)
		server, _ := headerPair(t, data, 0, false)
		got, err := readProxyHeader(server, pp)
		if err != nil {
			t.Errorf("v2 header with a %d-byte TLV (%d bytes in all): %v", size, len(data)-4, err)
			continue
		}
		if got.RemoteAddr().String() != "192.0.2.10:40000" {
			t.Errorf("peer %v", got.RemoteAddr())
		}
		if rest, _ := io.ReadAll(got); string(rest) != "data" {
			t.Errorf("after the header: %q, want data", rest)
		}
	}
}
