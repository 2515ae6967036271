package proxy

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/internal/testkit"
)

// A drain while the proxy is still reaching its upstream (a TLS upstream
// that has not answered the handshake yet), which has paused reading the
// client: the request that had arrived is delivered once the proxy reads
// again, reaches the upstream, and the answer reaches the client.
func TestDrainWhileReachingUpstream(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	const request = "GET /\r\n"
	ln := listen(t, "tcp")
	handshake := make(chan struct{})
	upstream := make(chan string, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		<-handshake
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, len(request))
		if _, err := io.ReadFull(tc, b); err != nil {
			upstream <- err.Error()
			return
		}
		upstream <- string(b)
		tc.Write([]byte("answer"))
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q\n  upstream_tls {\n    insecure_skip_verify = true\n  }", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-conns
	if _, err := c.Write([]byte(request)); err != nil {
		t.Fatal(err)
	}
	// The request is in superd's socket once superd's kernel acknowledged it.
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		var acked uint64
		raw.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), syscall.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				acked = info.Bytes_acked
			}
		})
		return acked >= uint64(len(request))
	}, "the request acknowledged by superd's kernel")
	s.c.Drain()
	close(handshake)
	if got := <-upstream; got != request {
		t.Errorf("the upstream got %q, want the request", got)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if back, err := io.ReadAll(c); err != nil || string(back) != "answer" {
		t.Errorf("the client read %q, %v; want the answer, then the end of stream", back, err)
	}
	s.wait(t)
}
