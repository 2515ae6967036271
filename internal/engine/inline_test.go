// Tests of input delivered inside raw.Read (serveInline): the reader waits
// after a short read without reading again, loses no input that comes
// meanwhile, and is woken for a close made elsewhere.

package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rawTransports are the transports read through a raw descriptor.
var rawTransports = []string{"tcp", "tcp6", "unix", "bare", "bare-unix"}

// TestShortReadWaitsWithoutReading: in a ping-pong over TCP, each message
// is read whole by one read that TCP_INQ says left the socket empty, so
// the reader waits for the next one without a read that finds nothing (a
// read loop outside raw.Read makes one such read per message). A unix
// socket cannot say, and reads until it is empty (TestEndOfStreamBehindInput).
func TestShortReadWaitsWithoutReading(t *testing.T) {
	var empty atomic.Int64
	testHookReadEmpty = func() { empty.Add(1) }
	t.Cleanup(func() { testHookReadEmpty = nil })
	forTransports(t, []string{"tcp", "tcp6", "bare"}, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{})
		s := serve(t, p.server, ConnOptions{}, echoRecorder())
		const messages = 300
		empty.Store(0)
		buf := make([]byte, 64)
		for i := range messages {
			msg := fmt.Appendf(nil, "message %d", i)
			if _, err := p.client.Write(msg); err != nil {
				t.Fatal(err)
			}
			p.client.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := p.client.Read(buf)
			if err != nil || !bytes.Equal(buf[:n], msg) {
				t.Fatalf("message %d: echo %q, %v", i, buf[:n], err)
			}
		}
		// A handful come from the first reads (before the connection has
		// received anything, and when a bare descriptor first waits), and
		// from readiness seen just as a read took the input.
		if n := empty.Load(); n > messages/10 {
			t.Errorf("%d reads found the socket empty in %d messages", n, messages)
		}
		p.client.Close()
		s.wait(t, serveWait)
	})
}

// TestInputDuringCallbackDelivered: input that arrives while DataReceived
// runs inside raw.Read is delivered, although the reader then waits
// without reading first: its arrival made the descriptor ready, and the
// wait sees that.
func TestInputDuringCallbackDelivered(t *testing.T) {
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{})
		r, s, release := heldInSecondChunk(t, p)
		if _, err := p.client.Write([]byte("three")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) == 5 }, "the third chunk queued")
		release()
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 11 }, "the third chunk delivered")
		if got := string(r.bytes()); got != "onetwothree" {
			t.Errorf("received %q", got)
		}
		p.client.Close()
		s.wait(t, serveWait)
		r.check(t, s.reason)
	})
}

// heldInSecondChunk serves a recorder (keeping what it receives) over p
// and sends "one" and then "two": the first makes the connection one that
// has received (the park deadline set), so the second is delivered inside
// raw.Read, where DataReceived holds it until release is called (the
// test's cleanup calls it too, before serve's, which waits for the end).
func heldInSecondChunk(t *testing.T, p *pair) (r *recorder, s *served, release func()) {
	t.Helper()
	entered, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(held) }) }
	r = newRecorder()
	r.keep = true
	chunks := 0
	r.onData = func(r *recorder, b []byte) {
		chunks++
		if chunks == 2 {
			close(entered)
			<-held
		}
	}
	s = serve(t, p.server, ConnOptions{}, r)
	t.Cleanup(release)
	if _, err := p.client.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 3 }, "the first chunk")
	if _, err := p.client.Write([]byte("two")); err != nil {
		t.Fatal(err)
	}
	<-entered
	return r, s, release
}

// TestCloseElsewhereWakesReader: a close made on another goroutine while
// the reader waits inside raw.Read is left to the reader (Close would
// wait for it), which a deadline in the past wakes. The connection does
// not park here, so no park deadline would wake it otherwise.
func TestCloseElsewhereWakesReader(t *testing.T) {
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{})
		c := NewConn(p.server, &ConnOptions{Logger: testLogger})
		c.fd = -1 // never park
		r := echoRecorder()
		done := make(chan error, 1)
		go func() { done <- c.Serve(r) }()
		if _, err := p.client.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if got, err := readN(p.client, 4); err != nil || string(got) != "ping" {
			t.Fatalf("echo %q, %v", got, err)
		}
		waitFor(t, 5*time.Second, serveBlockedInRead, "the reader to wait for input")
		errStop := errors.New("stopped elsewhere")
		c.Abort(errStop)
		var reason error
		select {
		case reason = <-done:
			if !errors.Is(reason, errStop) {
				t.Errorf("reason %v, want %v", reason, errStop)
			}
		case <-time.After(10 * time.Second):
			p.client.Close() // the reader then sees an end of stream
			<-done
			t.Fatal("the reader was not woken by the close")
		}
		got, err := readAll(p.client, 10*time.Second)
		if len(got) != 0 || !(isReset(err) || strings.HasSuffix(network, "unix") && err == io.EOF) {
			t.Errorf("client read %q, %v after the abort; want a reset (an end of stream on a unix socket)", got, err)
		}
		r.check(t, reason)
	})
}

// readN reads exactly n bytes, with a deadline.
func readN(c interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}, n int) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, n)
	got := 0
	for got < n {
		m, err := c.Read(buf[got:])
		got += m
		if err != nil {
			return buf[:got], err
		}
	}
	return buf, nil
}

// TestUrgentMarkInputDelivered: TCP stops a read at an urgent mark
// (MSG_OOB) with input still queued behind it, a short read that does not
// leave the socket empty. TCP_INQ says so, and the reader reads again: the
// input is delivered at once, without more input from the peer and
// without the park deadline's help (out of reach here).
func TestUrgentMarkInputDelivered(t *testing.T) {
	if getPoller() == nil {
		t.Skip("no park deadline without the idle poller")
	}
	parkDeadlineOutOfReach(t)
	forTransports(t, []string{"tcp", "bare"}, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{})
		r, s, release := heldInSecondChunk(t, p)
		// Queued behind the chunk being delivered: "abc", the urgent
		// byte (taken out of the stream), "def".
		p.client.Write([]byte("abc"))
		rc, err := p.client.(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.Send(int(fd), []byte("!"), unix.MSG_OOB) })
		if serr != nil {
			t.Fatalf("send MSG_OOB: %v", serr)
		}
		p.client.Write([]byte("def"))
		// SIOCINQ counts only up to the mark: wait instead for the server's
		// socket to have acknowledged everything.
		unacked := func() int {
			n := -1
			rc.Control(func(fd uintptr) { n = unacknowledged(fd) })
			return n
		}
		waitFor(t, 5*time.Second, func() bool { return unacked() == 0 }, "the input queued")
		release()
		waitFor(t, 10*time.Second, func() bool { return r.receivedBytes() == 12 }, "the input behind the urgent mark")
		if got := string(r.bytes()); got != "onetwoabcdef" {
			t.Errorf("received %q", got)
		}
		p.client.Close()
		s.wait(t, serveWait)
	})
}
