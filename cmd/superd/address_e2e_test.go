package main

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// A reload that re-spells an address (127.0.0.1:P to localhost:P) carries
// the socket over: validate and the running supervisor agree that it is
// one socket, so the connection open across the reload keeps working and
// new ones reach the new service under its new endpoint label. A reload to
// an overlapping but different socket (:P) fails and changes nothing.
func TestReloadRespelledAddress(t *testing.T) {
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	conf := func(quote, address string) string {
		return fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "5s"
service "qotd" "q" {
  quote = %q
  endpoint "tcp" { address = %q }
}
`, quote, address)
	}
	path, maddr := writeConfig(t, conf("before", addr))
	d := startDaemon(t, path, maddr)
	quoteOf := func() string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		return string(buf[:n])
	}
	if got := quoteOf(); got != "before\r\n" {
		t.Fatalf("quote before the reload: %q", got)
	}

	rewriteConfig(t, path, maddr, conf("after", "localhost:"+port))
	d.reload("success", 1)
	if got := quoteOf(); got != "after\r\n" {
		t.Fatalf("quote after the reload to localhost:%s: %q", port, got)
	}
	d.waitMetric("superd_connections_total", map[string]string{"service": "q", "endpoint": "tcp:localhost:" + port}, 1)

	rewriteConfig(t, path, maddr, conf("wildcard", ":"+port))
	d.reload("failure", 1)
	if got := quoteOf(); got != "after\r\n" {
		t.Fatalf("quote after the failed reload to :%s: %q", port, got)
	}
}
