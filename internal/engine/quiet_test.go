// Tests of the graceful close's quiet check: a socket whose peer has all
// our output, and has sent nothing we have not read, closes at once after
// its FIN; any other lingers for the peer's end of stream.

package engine

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// outputQueued is what c's socket counts as sent and not done with
// (SIOCOUTQ): unacknowledged for TCP, not read by the peer for unix.
func outputQueued(t testing.TB, c net.Conn) int {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := -1
	rc.Control(func(fd uintptr) { n = unacknowledged(fd) })
	if n == -1 {
		t.Skip("a socket's queued output (SIOCOUTQ) is not known on this system")
	}
	return n
}

// lingered reports whether the connection's graceful close lingered for
// the peer's end of stream (its linger deadline was set).
func (s *served) lingered() bool {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.lingerUntil != 0
}

// TestGracefulCloseUnreadOutputLingers: the peer, with a small receive
// buffer, has not read our output, part of which is still in our socket,
// unacknowledged. The graceful close must not find the socket quiet: it
// lingers, and a byte the peer sends after our FIN does not reset the
// connection; the peer reads everything, then the end of stream.
func TestGracefulCloseUnreadOutputLingers(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			const n = 256 << 10
			p := dialPair(t, network, pairOpts{clientRcv: 64 << 10, serverSnd: 1 << 20})
			s := serve(t, p.server, ConnOptions{}, newRecorder())
			out := randBytes(n, 31)
			s.c.Write(out)
			waitFor(t, 5*time.Second, func() bool { return s.c.Pending() == 0 }, "the output is in the kernel")
			if q := outputQueued(t, p.serverRaw); q <= 1 {
				t.Fatalf("SIOCOUTQ %d with the peer's buffer full", q)
			}
			s.c.LoseConnection()
			if _, err := p.client.Write([]byte("late")); err != nil {
				t.Fatalf("client write: %v", err)
			}
			b, err := readAll(p.client, 10*time.Second)
			if len(b) != n || !errors.Is(err, io.EOF) || firstDiff(b, out) != n {
				t.Fatalf("client read %d of %d bytes (first difference at %d), then %v; want everything, then EOF",
					len(b), n, firstDiff(b, out), err)
			}
			p.client.Close()
			if reason := s.wait(t, 10*time.Second); !framework.IsClean(reason) {
				t.Fatalf("reason %v, want a clean close", reason)
			}
			if !s.lingered() {
				t.Error("the close did not linger")
			}
		})
	}
}

// TestGracefulCloseQuietDoesNotLinger: the peer has read everything we sent
// (and, for TCP, acknowledged it). The graceful close finds the socket
// quiet once its FIN is out, and closes at once: Serve returns while the
// peer still holds its end open, without lingering.
func TestGracefulCloseQuietDoesNotLinger(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			const n = 64 << 10
			p := dialPair(t, network, pairOpts{})
			s := serve(t, p.server, ConnOptions{}, newRecorder())
			out := randBytes(n, 37)
			s.c.Write(out)
			got := make([]byte, n)
			p.client.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(p.client, got); err != nil {
				t.Fatalf("client read: %v", err)
			}
			waitFor(t, 5*time.Second, func() bool { return outputQueued(t, p.serverRaw) == 0 },
				"the server's output is acknowledged")
			s.c.LoseConnection()
			b, err := readAll(p.client, 10*time.Second)
			if len(b) != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("client read %d more bytes, then %v; want EOF", len(b), err)
			}
			// The client keeps its end open: a lingering close would
			// wait for it (or lingerTimeout).
			if reason := s.wait(t, 10*time.Second); !framework.IsClean(reason) {
				t.Fatalf("reason %v, want a clean close", reason)
			}
			if s.lingered() {
				t.Error("the close lingered, though the peer had read everything")
			}
		})
	}
}

// TestQuietCloseKeepsAcknowledgedOutput: the peer has not read our output,
// but its socket has it all (acknowledged), so the close is quiet. A byte
// the peer sends after that meets a closed socket (a reset); what the
// peer's socket holds must still be read, whole.
func TestQuietCloseKeepsAcknowledgedOutput(t *testing.T) {
	const n = 16 << 10
	p := dialPair(t, "tcp", pairOpts{clientRcv: 1 << 20})
	s := serve(t, p.server, ConnOptions{}, newRecorder())
	out := randBytes(n, 41)
	s.c.Write(out)
	waitFor(t, 5*time.Second, func() bool { return s.c.Pending() == 0 && outputQueued(t, p.serverRaw) == 0 },
		"the server's output is acknowledged")
	s.c.LoseConnection()
	if reason := s.wait(t, 10*time.Second); !framework.IsClean(reason) {
		t.Fatalf("reason %v, want a clean close", reason)
	}
	if s.lingered() {
		t.Fatal("the close lingered")
	}
	if _, err := p.client.Write([]byte("late")); err != nil {
		t.Fatalf("client write: %v", err)
	}
	rc, err := p.clientRaw.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const tcpClose = 7
	waitFor(t, 5*time.Second, func() bool {
		state := -1
		rc.Control(func(fd uintptr) { state = tcpState(fd) })
		if state == -1 {
			t.Skip("the client's TCP state (TCP_INFO) is not known on this system")
		}
		return state == tcpClose
	}, "the client's socket is reset")
	b, err := readAll(p.client, 10*time.Second)
	if len(b) != n || firstDiff(b, out) != n {
		t.Fatalf("client read %d of %d bytes, then %v", len(b), n, err)
	}
}
