//go:build linux

// Tests of the poller loops serving parked connections (serveParked): a
// loop runs DataReceived for many connections on its own goroutine, never
// waits for one peer, and loses no input that arrives while it serves.

package engine

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// exchange writes msg to c and reads its echo back.
func exchange(t testing.TB, c net.Conn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of %q: got %q, %v", msg, got, err)
	}
}

// TestLoopsServeManyConnections: twenty connections exchanging messages in
// turn are served by the loops, whose goroutines run DataReceived for all
// of them (a goroutine per connection would be twenty), and every guarantee
// the recorder checks holds.
func TestLoopsServeManyConnections(t *testing.T) {
	parkDeadlineOutOfReach(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		const conns, rounds = 20, 30
		var mu sync.Mutex
		servedBy := map[uintptr]bool{}
		pairs := make([]*pair, conns)
		srv := make([]*served, conns)
		recs := make([]*recorder, conns)
		ln := listen(t, network)
		defer ln.Close()
		for i := range pairs {
			pairs[i] = dialPairOn(t, ln, pairOpts{})
			r := echoRecorder()
			r.onData = func(r *recorder, b []byte) {
				if r.chunkCount() > 1 { // the first may come before the first park
					mu.Lock()
					servedBy[curG()] = true
					mu.Unlock()
				}
				r.tr.Write(b)
			}
			recs[i] = r
			srv[i] = serve(t, pairs[i].server, ConnOptions{}, r)
		}
		for round := range rounds {
			for i, p := range pairs {
				exchange(t, p.client, fmt.Appendf(nil, "conn %d round %d", i, round))
			}
		}
		for i, p := range pairs {
			p.client.Close()
			recs[i].check(t, srv[i].wait(t, serveWait))
		}
		mu.Lock()
		defer mu.Unlock()
		if len(servedBy) > len(pollers) {
			t.Errorf("DataReceived ran on %d goroutines for %d connections; want at most the %d loops", len(servedBy), conns, len(pollers))
		}
	})
}

// TestLoopDoesNotWaitForOnePeer: a connection whose every input is answered
// with more than its socket takes, from a peer that never reads, does not
// hold up the loop that serves it: the other connections (some on the same
// loop) go on exchanging messages, and the big reply is delivered whole
// once its peer reads.
func TestLoopDoesNotWaitForOnePeer(t *testing.T) {
	parkDeadlineOutOfReach(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		// More than the socket takes at once (its send buffer grows to 4
		// MiB by default, and the peer's receive buffer grows only as it
		// reads).
		const big = 16 << 20
		reply := randBytes(big, 7)
		ln := listen(t, network)
		defer ln.Close()
		stuck := dialPairOn(t, ln, pairOpts{})
		amp := newRecorder()
		amp.onData = func(r *recorder, b []byte) { r.tr.Write(reply) }
		sAmp := serve(t, stuck.server, ConnOptions{MaxPendingOutput: 2 * big}, amp)
		var others []*pair
		for i := range 4 * len(pollers) {
			if i%2 == 1 {
				// A descriptor in between, so the servers'
				// descriptors, and so their loops, differ.
				spare, err := os.Open(os.DevNull)
				if err != nil {
					t.Fatal(err)
				}
				defer spare.Close()
			}
			p := dialPairOn(t, ln, pairOpts{})
			serve(t, p.server, ConnOptions{}, echoRecorder())
			exchange(t, p.client, []byte("hello"))
			others = append(others, p)
		}
		if _, err := stuck.client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return sAmp.c.bytesOut.Load() > 0 }, "the big reply to start")
		for round := range 20 {
			for i, p := range others {
				exchange(t, p.client, fmt.Appendf(nil, "conn %d round %d", i, round))
			}
		}
		stuck.client.SetReadDeadline(time.Now().Add(serveWait))
		got, err := io.ReadAll(io.LimitReader(stuck.client, big))
		if err != nil || !bytes.Equal(got, reply) {
			t.Fatalf("the big reply: %d bytes, %v; want the %d written", len(got), err, big)
		}
		stuck.client.Close()
		amp.check(t, sAmp.wait(t, serveWait))
	})
}

// TestLoopSeesInputArrivingWhileItServes: input that arrives while the
// loop runs DataReceived for the input before it (after the read that
// left the socket empty) is delivered without the park deadline's help:
// the connection is parked again without re-arming its registration, and
// the new input's edge is an event.
func TestLoopSeesInputArrivingWhileItServes(t *testing.T) {
	parkDeadlineOutOfReach(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{})
		entered := make(chan struct{}, 1)
		release := make(chan struct{})
		r := echoRecorder()
		r.keep = true
		r.onData = func(r *recorder, b []byte) {
			if bytes.Equal(b, []byte("first")) {
				entered <- struct{}{}
				<-release
			}
			r.tr.Write(b)
		}
		s := serve(t, p.server, ConnOptions{}, r)
		exchange(t, p.client, []byte("warm")) // parked: the loops serve it from now on
		if _, err := p.client.Write([]byte("first")); err != nil {
			t.Fatal(err)
		}
		<-entered
		if _, err := p.client.Write([]byte("second")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.server) > 0 }, "the second message to be queued")
		close(release)
		got := make([]byte, len("firstsecond"))
		p.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(p.client, got); err != nil || string(got) != "firstsecond" {
			t.Fatalf("echo: %q, %v", got, err)
		}
		p.client.Close()
		r.check(t, s.wait(t, serveWait))
	})
}

// TestAbortWhileLoopServes: an abort from another goroutine while a loop
// runs the connection's DataReceived drops what the callback writes, ends
// the connection with the abort's reason, and the loop goes on serving
// the others.
func TestAbortWhileLoopServes(t *testing.T) {
	parkDeadlineOutOfReach(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		ln := listen(t, network)
		defer ln.Close()
		p := dialPairOn(t, ln, pairOpts{})
		entered := make(chan struct{}, 1)
		release := make(chan struct{})
		r := echoRecorder()
		r.onData = func(r *recorder, b []byte) {
			if bytes.Equal(b, []byte("hold")) {
				entered <- struct{}{}
				<-release
			}
			r.tr.Write(b)
		}
		s := serve(t, p.server, ConnOptions{}, r)
		other := dialPairOn(t, ln, pairOpts{})
		serve(t, other.server, ConnOptions{}, echoRecorder())
		exchange(t, p.client, []byte("warm"))
		exchange(t, other.client, []byte("warm"))
		if _, err := p.client.Write([]byte("hold")); err != nil {
			t.Fatal(err)
		}
		<-entered
		s.c.Abort(errTestCleanup)
		close(release)
		reason := s.wait(t, serveWait)
		if reason != errTestCleanup {
			t.Errorf("Serve returned %v, want the abort's reason", reason)
		}
		r.check(t, reason)
		got, _ := readAll(p.client, 10*time.Second)
		if bytes.Contains(got, []byte("hold")) {
			t.Errorf("the client got %q, written by the callback the abort ran beside", got)
		}
		exchange(t, other.client, []byte("still served"))
	})
}
