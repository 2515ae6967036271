package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// TestProxyE2E: one superd serves echo over tcp and over tls (a
// certificate of a test CA); a second superd proxies to it: in the clear
// (from tcp and from a tls endpoint), over TLS verified against the CA
// after a first upstream that refuses, with a PROXY v1 header (which the
// echo sends back, since it reads none), and to an upstream nobody
// listens on.
// Payloads of megabytes come back intact, half-closes pass through, the
// bytes are counted on the proxy, and the unreachable upstream is counted
// as dropped{reason="upstream"}.
func TestProxyE2E(t *testing.T) {
	dir := t.TempDir()
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.WriteServerFiles(dir, []string{"echo.test"})
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	echoTCP, echoTLS := freeAddr(t), freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "echo" {
  endpoint "tcp" { address = %q }
  endpoint "tls" {
    address   = %q
    cert_file = %q
    key_file  = %q
  }
}
`, echoTCP, echoTLS, certFile, keyFile))
	startDaemon(t, path, maddr)

	plain, plainTLS, overTLS, withHeader, dead := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	nobody := freeAddr(t) // nothing listens there
	ppath, pmaddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "proxy" "plain" {
  upstream = %q
  endpoint "tcp" { address = %q }
  endpoint "tls" {
    address     = %q
    self_signed = true
  }
}
service "proxy" "tls" {
  upstream = [%q, %q]
  upstream_tls {
    server_name = "echo.test"
    ca_file     = %q
  }
  endpoint "tcp" { address = %q }
}
service "proxy" "header" {
  upstream            = %q
  send_proxy_protocol = "v1"
  endpoint "tcp" { address = %q }
}
service "proxy" "dead" {
  upstream        = %q
  connect_timeout = "1s"
  endpoint "tcp" { address = %q }
}
`, echoTCP, plain, plainTLS, nobody, echoTLS, caFile, overTLS, echoTCP, withHeader, nobody, dead))
	d := startDaemon(t, ppath, pmaddr)

	// exchange writes data, half-closes, and reads everything back.
	exchange := func(addr string, data []byte) (*net.TCPConn, []byte) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			errc <- err
		}()
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		back, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("%s: read: %v", addr, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("%s: write: %v", addr, err)
		}
		return c.(*net.TCPConn), back
	}

	const size = 4 << 20
	data := randomBytes(t, size)
	for _, addr := range []string{plain, overTLS} {
		if _, back := exchange(addr, data); !bytes.Equal(back, data) {
			t.Errorf("%s: %d bytes came back, not the %d sent", addr, len(back), size)
		}
	}
	// A TLS client of the proxy: its close_notify is passed on as the
	// upstream's EOF, and the echo's end comes back as close_notify.
	tc, err := tls.Dial("tcp", plainTLS, &tls.Config{InsecureSkipVerify: true}) // self-signed
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		tc.Write(data)
		tc.CloseWrite()
	}()
	tc.SetReadDeadline(time.Now().Add(60 * time.Second))
	if back, err := io.ReadAll(tc); err != nil || !bytes.Equal(back, data) {
		t.Errorf("over TLS to the proxy: %d bytes came back, not the %d sent (%v)", len(back), size, err)
	}
	tc.Close()

	c, back := exchange(withHeader, []byte("after the header"))
	la, ra := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	want := fmt.Sprintf("PROXY TCP4 %s %s %d %d\r\nafter the header", la.IP, ra.IP, la.Port, ra.Port)
	if string(back) != want {
		t.Errorf("through the header proxy: %q, want %q", back, want)
	}

	if dc, err := net.Dial("tcp", dead); err == nil { // else reset before connect returned
		dc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, _ := io.ReadAll(dc); len(b) != 0 {
			t.Errorf("read %q through a proxy without upstream", b)
		}
		dc.Close()
	}
	d.waitMetric("superd_connections_dropped_total", map[string]string{"service": "dead", "reason": "upstream"}, 1)
	for svc, n := range map[string]float64{"plain": 2, "tls": 1} {
		labels := map[string]string{"service": svc, "factory": "proxy"}
		d.waitMetric("superd_connections_active", labels, 0)
		d.waitMetric("superd_received_bytes_total", labels, n*size)
		d.waitMetric("superd_sent_bytes_total", labels, n*size)
		d.waitMetric("superd_connections_dropped_total", map[string]string{"service": svc, "reason": "upstream"}, 0)
	}
	if !d.logged("no upstream answered") {
		t.Errorf("no log line for the unreachable upstream:\n%s", d.stderr.String())
	}
}

// TestProxyValidate: superd factories lists the proxy; a missing ca_file
// is reported by validate at its line and column.
func TestProxyValidate(t *testing.T) {
	out, err := exec.Command(superdBin, "factories").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"proxy\n", "upstream ", "connect_timeout", `default "5s"`, "send_proxy_protocol",
		"block {ca_file, insecure_skip_verify, server_name}"} {
		if !strings.Contains(string(out), s) {
			t.Errorf("superd factories lacks %q:\n%s", s, out)
		}
	}
	path, _ := writeConfig(t, `service "proxy" "p" {
  upstream = "127.0.0.1:7007"
  upstream_tls {
    ca_file = "missing.pem"
  }
  endpoint "tcp" { address = "127.0.0.1:1" }
}
`)
	cmd := exec.Command(superdBin, "validate", "-config", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("validate: exit %d (%v), want 1", code, err)
	}
	want := filepath.Base(path) + `:4,5-28: Invalid value for "upstream_tls.ca_file"`
	if !strings.Contains(stderr.String(), want) || !strings.Contains(stderr.String(), "missing.pem") {
		t.Errorf("validate said:\n%s\nwant a line holding %q", stderr.String(), want)
	}
}

// TestProxyChainE2E: superd to superd with PROXY headers. The front superd
// proxies with a v2 header to the back superd, whose endpoints trust it:
// the back's echo sees the header's client (its access log says so, with
// the front as the proxy) and sends back only the payload; the back's own
// proxy passes the same client on, in a v1 header, to a plain upstream of
// the test, where it arrives byte for byte; an upstream logged with
// reason upstream closes the chain.
func TestProxyChainE2E(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")

	// The last hop: reads the v1 header, then echoes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	header := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		br := bufio.NewReader(c)
		h, _ := br.ReadString('\n')
		header <- h
		io.Copy(c, br)
		c.(*net.TCPConn).CloseWrite()
	}()

	echoB, midB, deadB := freeAddr(t), freeAddr(t), freeAddr(t)
	bpath, bmaddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
access_log {
  path   = %q
  format = "json"
}
service "echo" "echo" {
  access_log = true
  endpoint "tcp" {
    address = %q
    proxy_protocol { trusted = ["127.0.0.1/32"] }
  }
}
service "proxy" "middle" {
  upstream            = %q
  send_proxy_protocol = "v1"
  endpoint "tcp" {
    address = %q
    proxy_protocol { trusted = ["127.0.0.1/32"] }
  }
}
service "proxy" "dead" {
  access_log = true
  upstream   = %q
  endpoint "tcp" { address = %q }
}
`, logPath, echoB, ln.Addr(), midB, freeAddr(t), deadB))
	startDaemon(t, bpath, bmaddr)

	toEcho, toMid := freeAddr(t), freeAddr(t)
	apath, amaddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "proxy" "to-echo" {
  upstream            = %q
  send_proxy_protocol = "v2"
  endpoint "tcp" { address = %q }
}
service "proxy" "to-middle" {
  upstream            = %q
  send_proxy_protocol = "v2"
  endpoint "tcp" { address = %q }
}
`, echoB, toEcho, midB, toMid))
	startDaemon(t, apath, amaddr)

	roundTrip := func(addr string, data []byte) (client string, back []byte) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			c.Write(data)
			c.(*net.TCPConn).CloseWrite()
		}()
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		back, err = io.ReadAll(c)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		return c.LocalAddr().String(), back
	}

	data := randomBytes(t, 1<<20)
	client, back := roundTrip(toEcho, data)
	if !bytes.Equal(back, data) {
		t.Errorf("through front and back: %d bytes came back, not the %d sent (the header must not reach the echo)", len(back), len(data))
	}
	lines := waitAccessLines(t, logPath, 1)
	if l := lines[0]; l["service"] != "echo" || l["peer"] != client || l["proxy"] == nil || l["proxy"] == client {
		t.Errorf("back's access log: %v; want the echo with peer %s, and the front as proxy", l, client)
	}

	client, back = roundTrip(toMid, []byte("two hops"))
	if string(back) != "two hops" {
		t.Errorf("through two proxies: %q", back)
	}
	host, port, _ := net.SplitHostPort(client)
	mhost, mport, _ := net.SplitHostPort(midB)
	if h, want := <-header, fmt.Sprintf("PROXY TCP4 %s %s %s %s\r\n", host, mhost, port, mport); h != want {
		t.Errorf("the last hop got %q, want %q (the first client's address)", h, want)
	}

	if c, err := net.Dial("tcp", deadB); err == nil {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.ReadAll(c)
		c.Close()
	}
	found := false
	for _, l := range waitAccessLines(t, logPath, 2) {
		if l["service"] == "dead" {
			found = true
			if l["reason"] != "upstream" {
				t.Errorf("access log line %v, want reason upstream", l)
			}
		}
	}
	if !found {
		t.Error("no access log line for the proxy without upstream")
	}
}
