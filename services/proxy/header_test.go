package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/pires/go-proxyproto"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// v2sig is the PROXY protocol v2 signature.
const v2sig = "\r\n\r\n\x00\r\nQUIT\n"

// expectedHeader builds, by hand from the protocol's text, the header a
// client at src connected to dst must be announced with.
func expectedHeader(version byte, src, dst net.Addr) []byte {
	s, sok := src.(*net.TCPAddr)
	d, dok := dst.(*net.TCPAddr)
	if version == 1 {
		switch {
		case !sok || !dok:
			return []byte("PROXY UNKNOWN\r\n")
		case s.IP.To4() != nil:
			return fmt.Appendf(nil, "PROXY TCP4 %s %s %d %d\r\n", s.IP, d.IP, s.Port, d.Port)
		default:
			return fmt.Appendf(nil, "PROXY TCP6 %s %s %d %d\r\n", s.IP, d.IP, s.Port, d.Port)
		}
	}
	b := []byte(v2sig)
	if !sok || !dok {
		return append(b, 0x20, 0x00, 0x00, 0x00) // LOCAL, UNSPEC, no addresses
	}
	sa, da := s.AddrPort(), d.AddrPort()
	if sa.Addr().Is4() {
		b = append(b, 0x21, 0x11, 0, 12) // PROXY, TCP over IPv4
		b = append(b, sa.Addr().AsSlice()...)
		b = append(b, da.Addr().AsSlice()...)
	} else {
		b = append(b, 0x21, 0x21, 0, 36) // PROXY, TCP over IPv6
		b = append(b, sa.Addr().AsSlice()...)
		b = append(b, da.Addr().AsSlice()...)
	}
	b = binary.BigEndian.AppendUint16(b, sa.Port())
	return binary.BigEndian.AppendUint16(b, da.Port())
}

// headerUpstream is an upstream that reads a PROXY header of want's length
// (sent on got), then, over TLS when cert is given, echoes the rest.
func headerUpstream(t *testing.T, cert *tls.Certificate, size func() int, got chan<- []byte) string {
	t.Helper()
	ln := listen(t, "tcp")
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		h := make([]byte, size())
		if _, err := io.ReadFull(c, h); err != nil {
			t.Errorf("upstream: reading the header: %v", err)
		}
		got <- h
		var rw net.Conn = c
		if cert != nil {
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}})
			if err := tc.Handshake(); err != nil {
				t.Errorf("upstream: TLS after the header: %v", err)
				return
			}
			rw = tc
		}
		io.Copy(rw, rw)
		if tc, ok := rw.(*tls.Conn); ok {
			tc.CloseWrite()
		}
	})
	return ln.Addr().String()
}

// TestProxyHeader: the header the upstream receives is byte for byte the
// one the protocol's specification gives for the client's addresses, for
// v1 and v2, for clients on IPv4, IPv6 and a unix socket; go-proxyproto
// parses it back to the same addresses; the client's bytes follow it.
func TestProxyHeader(t *testing.T) {
	for _, version := range []byte{1, 2} {
		for _, network := range []string{"tcp", "tcp6", "unix"} {
			t.Run(fmt.Sprintf("v%d-%s", version, network), func(t *testing.T) {
				var want []byte
				got := make(chan []byte, 1)
				ready := make(chan struct{})
				up := headerUpstream(t, nil, func() int { <-ready; return len(want) }, got)
				f := newFactory(t, fmt.Sprintf("  upstream = %q\n  send_proxy_protocol = \"v%d\"", up, version))
				addr, conns := serveProxy(t, f, network, nil)
				c, err := net.Dial(addr.Network(), addr.String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				// The client's address as the proxy sees it, and where it
				// connected.
				want = expectedHeader(version, c.LocalAddr(), c.RemoteAddr())
				close(ready)
				back, werr := exchange(t, c, []byte("after the header"))
				if werr != nil || string(back) != "after the header" {
					t.Fatalf("echoed %q (%v)", back, werr)
				}
				h := <-got
				if !bytes.Equal(h, want) {
					t.Fatalf("header\n%q\nwant\n%q", h, want)
				}
				parsed, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(h)))
				if err != nil {
					t.Fatalf("go-proxyproto cannot read it: %v", err)
				}
				if network == "unix" {
					if parsed.Command != proxyproto.LOCAL {
						t.Errorf("command %v, want LOCAL", parsed.Command)
					}
				} else {
					src, dst, ok := parsed.TCPAddrs()
					if !ok || src.String() != c.LocalAddr().String() || dst.String() != c.RemoteAddr().String() {
						t.Errorf("parsed %v -> %v, want %v -> %v", src, dst, c.LocalAddr(), c.RemoteAddr())
					}
				}
				if r := (<-conns).wait(t); !framework.IsClean(r) {
					t.Errorf("reason %v", r)
				}
			})
		}
	}
}

// TestProxyHeaderBeforeTLS: with upstream_tls, the header goes first, in
// the clear, and the TLS handshake follows, as HAProxy's send-proxy with
// ssl does.
func TestProxyHeaderBeforeTLS(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer([]string{"upstream.test"})
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCAFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	got := make(chan []byte, 1)
	ready := make(chan struct{})
	up := headerUpstream(t, &cert, func() int { <-ready; return len(want) }, got)
	f := newFactory(t, fmt.Sprintf(`  upstream = %q
  send_proxy_protocol = "v2"
  upstream_tls {
    server_name = "upstream.test"
    ca_file     = %q
  }`, up, caFile))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want = expectedHeader(2, c.LocalAddr(), c.RemoteAddr())
	close(ready)
	data := payload(1<<20, 5)
	back, werr := exchange(t, c, data)
	if werr != nil || !bytes.Equal(back, data) {
		t.Fatalf("echoed %d of %d bytes (%v)", len(back), len(data), werr)
	}
	if h := <-got; !bytes.Equal(h, want) {
		t.Fatalf("header %q, want %q", h, want)
	}
	if r := (<-conns).wait(t); !framework.IsClean(r) {
		t.Errorf("reason %v", r)
	}
}

// TestUpstreamTLS: TLS to superd's echo served with a certificate of a
// test CA: verified against ca_file with server_name (sent as SNI), or
// the upstream's own host (an IP address: no SNI); insecure_skip_verify
// needs no CA; a wrong server_name, or the system's roots, fail the
// handshake, and the client is dropped as for an unreachable upstream.
func TestUpstreamTLS(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer([]string{"echo.test", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile, err := ca.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, tls string
		ok        bool
	}{
		{"ca_file and server_name", fmt.Sprintf("server_name = \"echo.test\"\n    ca_file = %q", caFile), true},
		{"the upstream's address as the name", fmt.Sprintf("ca_file = %q", filepath.Base(caFile)), true},
		{"insecure_skip_verify", "insecure_skip_verify = true", true},
		{"wrong server_name", fmt.Sprintf("server_name = \"other.test\"\n    ca_file = %q", caFile), false},
		{"system roots", "server_name = \"echo.test\"", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := echoUpstream(t, &cert)
			cfg, err := parseService(t, dir, fmt.Sprintf("  upstream = %q\n  upstream_tls {\n    %s\n  }", up, tt.tls))
			if err != nil {
				t.Fatal(err)
			}
			fac, err := New(testEnv(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			f := fac.(*Factory)
			addr, conns := serveProxy(t, f, "tcp", nil)
			if !tt.ok {
				expectReset(t, addr, conns)
				return
			}
			c, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			data := payload(2<<20, 6)
			back, werr := exchange(t, c, data)
			r := (<-conns).wait(t)
			if werr != nil || !bytes.Equal(back, data) {
				t.Errorf("echoed %d of %d bytes (%v)", len(back), len(data), werr)
			}
			if !framework.IsClean(r) {
				t.Errorf("reason %v, want clean", r)
			}
		})
	}
}

// TestUpstreamTLSSNI: server_name is sent as SNI; without it, a host name
// upstream sends its host, and an IP address none.
func TestUpstreamTLSSNI(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer([]string{"localhost", "sni.test", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCAFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t, "tcp")
	port := ln.Addr().(*net.TCPAddr).Port
	sni := make(chan string, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		tc := tls.Server(c, &tls.Config{
			Certificates: []tls.Certificate{cert},
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				sni <- h.ServerName
				return nil, nil
			},
		})
		io.Copy(tc, tc)
		tc.CloseWrite()
	})
	for _, tt := range []struct{ upstream, serverName, want string }{
		{fmt.Sprintf("127.0.0.1:%d", port), "sni.test", "sni.test"},
		{fmt.Sprintf("localhost:%d", port), "", "localhost"},
		{fmt.Sprintf("127.0.0.1:%d", port), "", ""},
	} {
		name := ""
		if tt.serverName != "" {
			name = fmt.Sprintf("server_name = %q\n", tt.serverName)
		}
		f := newFactory(t, fmt.Sprintf("  upstream = %q\n  upstream_tls {\n%s ca_file = %q\n}", tt.upstream, name, caFile))
		addr, conns := serveProxy(t, f, "tcp", nil)
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		back, werr := exchange(t, c, []byte("sni"))
		c.Close()
		if werr != nil || string(back) != "sni" {
			t.Errorf("%s: echoed %q (%v)", tt.upstream, back, werr)
		}
		if got := <-sni; got != tt.want {
			t.Errorf("upstream %s, server_name %q: SNI %q, want %q", tt.upstream, tt.serverName, got, tt.want)
		}
		(<-conns).wait(t)
	}
}
