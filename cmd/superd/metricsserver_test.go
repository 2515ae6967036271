package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// The metrics listener cuts off an idle keep-alive connection and a
// client that never finishes its request, so neither holds a descriptor
// and a goroutine for good. The limits are shortened here; the shipped
// ones must all be set.
func TestMetricsServerCutsIdleAndSlowClients(t *testing.T) {
	for name, d := range map[string]time.Duration{"header": metricsLimits.header, "read": metricsLimits.read,
		"write": metricsLimits.write, "idle": metricsLimits.idle} {
		if d <= 0 {
			t.Errorf("the metrics listener's %s timeout is %v", name, d)
		}
	}
	shipped := metricsLimits
	defer func() { metricsLimits = shipped }()
	metricsLimits.header, metricsLimits.read, metricsLimits.idle = 300*time.Millisecond, time.Second, 300*time.Millisecond

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newMetricsServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	go srv.Serve(ln)
	defer srv.Close()

	closedWithin := func(c net.Conn, r io.Reader) bool {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, r)
		ne, timedOut := err.(net.Error)
		return !(timedOut && ne.Timeout())
	}
	// Idle after one request.
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v", err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	if !closedWithin(idle, br) {
		t.Error("an idle keep-alive connection was still open after 10 s")
	}
	// A request that never ends.
	slow, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "GET / HTTP/1.1\r\nHost: x\r\n")
	if !closedWithin(slow, slow) {
		t.Error("a request left unfinished was still open after 10 s")
	}
}
