package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
)

// assertLingers checks that a connection whose graceful close has just
// begun, with output the client has not read, lingers: Serve does not
// return while the client keeps its end open, and a client that sends one
// more message (as a pipelining client would) still reads everything.
func assertLingers(t *testing.T, p *pair, s *served, n int, label string) {
	t.Helper()
	early := false
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if s.finished() {
			early = true
			break
		}
	}
	p.client.Write([]byte("late"))
	b, err := readAll(p.client, 10*time.Second)
	if early || len(b) != n || !errors.Is(err, io.EOF) {
		t.Fatalf("%s: Serve returned before the client closed: %v; client got %d of %d bytes, then %v",
			label, early, len(b), n, err)
	}
	p.client.Close()
	if reason := s.wait(t, 5*time.Second); !framework.IsClean(reason) {
		t.Fatalf("%s: reason %v", label, reason)
	}
}

// startedWithOutputQueued: a TCP connection whose reader waits in a read
// with the park deadline armed, and whose output (n bytes, already handed
// to the kernel) the client has not read yet, so the socket is not quiet and
// a graceful close must linger.
func startedWithOutputQueued(t *testing.T, n int) (*pair, *served) {
	t.Helper()
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 1 << 20})
	s := serve(t, p.server, ConnOptions{MaxPendingOutput: 64 << 20}, newRecorder())
	p.client.Write([]byte("a")) // received: the reader now arms the park deadline
	waitFor(t, 5*time.Second, serveBlockedInRead, "the reader waits in a read")
	s.c.Write(make([]byte, n))
	waitFor(t, 5*time.Second, func() bool { return s.c.Pending() == 0 }, "the output is in the kernel")
	return p, s
}

// TestDrainThenLoseConnectionLingers: Drain wakes the reader with an
// expired deadline; a LoseConnection right behind it, with nothing pending,
// half-closes at once and sets the linger deadline. Drain's deadline, seen
// by the reader only now, must not pass for the end of the linger: closing
// then would skip the linger, and a client that sends anything more would
// get a reset that destroys the output it has not read yet.
func TestDrainThenLoseConnectionLingers(t *testing.T) {
	goroutineReaders(t)
	const n = 256 << 10
	for round := range 5 {
		p, s := startedWithOutputQueued(t, n)
		s.c.Drain()
		s.c.LoseConnection()
		assertLingers(t, p, s, n, fmt.Sprintf("round %d", round))
	}
}

// readerWaitsInDeadlineFired reports whether some goroutine is blocked on
// the mutex after a read deadline fired: leaving raw.Read (leaveRead), or
// inside deadlineFired.
func readerWaitsInDeadlineFired() bool {
	return someGoroutine(func(stack string) bool {
		return (strings.Contains(stack, "engine.(*Conn).deadlineFired(") ||
			strings.Contains(stack, "engine.(*Conn).leaveRead(")) && strings.Contains(stack, "Mutex")
	})
}

// TestParkDeadlineThenLoseConnectionLingers: the same without Drain. The
// park deadline fires; before the reader takes mu in deadlineFired, a
// LoseConnection from another goroutine half-closes and sets the linger
// deadline. The park deadline must not pass for the end of the linger
// either. The test holds mu to place LoseConnection in that window.
func TestParkDeadlineThenLoseConnectionLingers(t *testing.T) {
	goroutineReaders(t)
	if getPoller() == nil {
		t.Skip("no park deadline without the idle poller")
	}
	const n = 256 << 10
	p, s := startedWithOutputQueued(t, n)
	s.c.mu.Lock()
	deadline := time.Now().Add(5 * parkAfter)
	for !readerWaitsInDeadlineFired() {
		if time.Now().After(deadline) {
			s.c.mu.Unlock()
			t.Fatal("the park deadline never fired")
		}
		time.Sleep(time.Millisecond)
	}
	s.c.mu.Unlock()
	s.c.LoseConnection()
	assertLingers(t, p, s, n, "park deadline")
}

// TestLoseConnectionDuringDrainKeepsLingerDeadline: Drain delivers queued
// input; the protocol answers a chunk with LoseConnection, and afterCallback
// half-closes and sets the linger deadline (unread input remains, so the
// socket is not quiet). Drain must leave that deadline alone: a peer that
// keeps its end open is let go after lingerTimeout, not held forever (the
// idle timer stands down once our FIN is out, so nothing else would).
func TestLoseConnectionDuringDrainKeepsLingerDeadline(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	entered, release := make(chan struct{}), make(chan struct{})
	first := true
	r := newRecorder()
	r.onData = func(r *recorder, b []byte) {
		if first {
			first = false
			close(entered)
			<-release
			return
		}
		r.lose() // e.g. a QUIT among the queued input
	}
	s := serve(t, p.server, ConnOptions{IdleTimeout: time.Second}, r)
	p.client.Write([]byte("first"))
	<-entered
	rest := bytes.Repeat([]byte("x"), 3*readBufferSize)
	if _, err := p.client.Write(rest); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.server) >= len(rest) }, "the input is queued")
	s.c.Drain()
	close(release)
	// The client reads our FIN, and keeps its end open.
	if _, err := readAll(p.client, 5*time.Second); !errors.Is(err, io.EOF) {
		t.Fatalf("client: %v, want EOF", err)
	}
	reason := s.wait(t, lingerTimeout+3*time.Second)
	if !framework.IsClean(reason) {
		t.Errorf("reason %v, want clean", reason)
	}
	r.check(t, reason)
}

// flood writes to c as fast as it takes it, without reading, until a write
// fails or d passes; it reports the write error (nil when d passed).
func flood(c net.Conn, d time.Duration) <-chan error {
	done := make(chan error, 1)
	c.SetWriteDeadline(time.Now().Add(d))
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					err = nil
				}
				done <- err
				return
			}
		}
	}()
	return done
}

// TestClosingInputBounded: once a connection is closing (LoseConnection,
// as after an over-long line), what the peer still sends is read and
// discarded, so its unread input cannot turn our FIN into a reset. A peer
// that keeps sending regardless must not be read without bound, for as long
// as the linger (or a stalled flush) lasts: past lingerMaxInput discarded
// bytes the connection is reset.
func TestClosingInputBounded(t *testing.T) {
	const floodFor = 4 * lingerTimeout
	check := func(t *testing.T, s *served, r *recorder, rx prometheus.Counter, flooded <-chan error) {
		t.Helper()
		reason := s.wait(t, lingerTimeout+5*time.Second)
		if framework.IsClean(reason) || !errors.Is(reason, framework.ErrConnectionLost) {
			t.Errorf("reason %v, want a lost connection", reason)
		}
		r.check(t, reason)
		read, delivered := int(testutil.ToFloat64(rx)), r.receivedBytes()
		if discarded := read - delivered; discarded > lingerMaxInput+readBufferSize {
			t.Errorf("read %d bytes after the close began (%d read, %d delivered); the bound is %d",
				discarded, read, delivered, lingerMaxInput)
		}
		select {
		case err := <-flooded:
			if err == nil {
				t.Errorf("the flooding client was never reset")
			}
		case <-time.After(floodFor + 5*time.Second):
			t.Errorf("the flooding client is still writing")
		}
	}

	// An over-long line: the protocol answers and closes; our FIN is out,
	// and the linger reads the peer's flood.
	t.Run("linger", func(t *testing.T) {
		forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
			rx := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_received_bytes_total", Help: "x"})
			p := dialPair(t, network, pairOpts{tls: useTLS})
			r := newRecorder()
			r.onData = func(r *recorder, b []byte) {
				r.tr.WriteString("line too long\r\n")
				r.lose()
			}
			// The flood is queued at the server before it reads, so input
			// is still unread when the protocol closes: otherwise a
			// close that finds the socket quiet skips the linger (rightly)
			// and there is nothing to bound.
			flooded := flood(p.client, floodFor)
			waitQueued(t, p.serverRaw, 2*readBufferSize)
			s := serve(t, p.server, ConnOptions{Received: rx}, r)
			check(t, s, r, rx, flooded)
		})
	})

	// A user kicked while its output is stalled (it never reads): the
	// flush cannot finish, and the reader discards the peer's input meanwhile.
	t.Run("stalled-flush", func(t *testing.T) {
		forTransports(t, []string{"tcp", "unix"}, func(t *testing.T, network string, useTLS bool) {
			rx := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_received_bytes_total", Help: "x"})
			p := dialPair(t, network, pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
			r := newRecorder()
			s := serve(t, p.server, ConnOptions{Received: rx}, r)
			waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
			s.c.Write(make([]byte, 2<<20)) // from another goroutine, like a chat broadcast
			s.c.LoseConnection()
			check(t, s, r, rx, flood(p.client, floodFor))
		})
	})
}

// waitQueued waits until at least n bytes wait unread in c's receive queue.
func waitQueued(t *testing.T, c net.Conn, n int) {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool {
		queued := 0
		raw.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), inqRequest) })
		return queued >= n
	}, "%d bytes queued at the server", n)
}

// A graceful close that finds the socket quiet sends its FIN before it
// closes: a byte of the peer's that arrives right after the check (a
// client that keeps talking, on a busy host) must not turn the close into
// a reset. The hook makes one arrive exactly there.
func TestQuietCloseWithLateInputSendsFIN(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			p := dialPair(t, network, pairOpts{})
			s := serve(t, p.server, ConnOptions{}, newRecorder())
			// Parked (it never received anything), the reader reads only
			// once the close below lets go of the lock: the late bytes
			// stay in the kernel meanwhile.
			waitFor(t, 5*time.Second, func() bool {
				s.c.mu.Lock()
				defer s.c.mu.Unlock()
				return s.c.parked
			}, "the reader parks")
			hooked := false
			testHookQuiet = func() {
				hooked = true
				if _, err := p.client.Write([]byte("late")); err != nil {
					t.Errorf("client write: %v", err)
					return
				}
				waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) > 0 }, "the late bytes reach the server's socket")
			}
			defer func() { testHookQuiet = nil }()
			s.c.LoseConnection()
			if !hooked {
				t.Fatal("the close did not find the socket quiet")
			}
			b, err := readAll(p.client, 10*time.Second)
			if len(b) != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("client read %q, then %v; want an end of stream (a FIN, not a reset)", b, err)
			}
			p.client.Close()
			if reason := s.wait(t, 10*time.Second); !framework.IsClean(reason) {
				t.Fatalf("reason %v, want a clean close", reason)
			}
		})
	}
}
