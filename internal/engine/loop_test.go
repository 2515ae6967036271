//go:build linux

// Tests of the poller's loop serving parked connections (serveParked,
// loopServes): it runs DataReceived for many connections on its own
// goroutine, never waits for one peer, loses no input that arrives while
// it serves, and hands what it read but may not deliver to the
// connection's own read loop, which delivers it exactly as its own.

package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/superd-dev/superd/framework"
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

// setHook sets one of the loop's test hooks for the test.
func setHook(t *testing.T, hook interface{ Store(*func(*Conn)) }, f func(*Conn)) {
	hook.Store(&f)
	t.Cleanup(func() { hook.Store(nil) })
}

// isParked reports whether c is parked in the poller.
func isParked(c *Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.parked
}

// holdingEcho is an echo recorder whose DataReceived, given exactly word,
// signals entered and waits for release before echoing it. release may be
// called more than once; the test's end calls it too, so that a failing
// test never leaves a callback holding its goroutine (or the loop).
func holdingEcho(t *testing.T, word string) (r *recorder, entered <-chan struct{}, release func()) {
	in := make(chan struct{}, 1)
	let := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(let) }) }
	t.Cleanup(release)
	r = echoRecorder()
	r.onData = func(r *recorder, b []byte) {
		if bytes.Equal(b, []byte(word)) {
			in <- struct{}{}
			<-let
		}
		r.tr.Write(b)
	}
	return r, in, release
}

// TestLoopServesManyConnections: twenty connections exchanging messages in
// turn are served by the loop, whose goroutine runs DataReceived for all
// of them (a goroutine per connection would be twenty), and every
// guarantee the recorder checks holds.
func TestLoopServesManyConnections(t *testing.T) {
	loopServing(t)
	parkDeadlineOutOfReach(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		const conns, rounds = 20, 30
		var mu sync.Mutex
		servedBy := map[uintptr]int{}
		pairs := make([]*pair, conns)
		srv := make([]*served, conns)
		recs := make([]*recorder, conns)
		ln := listen(t, network)
		defer ln.Close()
		for i := range pairs {
			pairs[i] = dialPairOn(t, ln, pairOpts{})
			r := echoRecorder()
			r.onData = func(r *recorder, b []byte) {
				if r.chunkCount() > 1 { // the first comes before the first park
					mu.Lock()
					servedBy[curG()]++
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
		if len(servedBy) != 1 {
			t.Errorf("DataReceived ran on %d goroutines for %d connections (%v); want the loop's alone", len(servedBy), conns, servedBy)
		}
	})
}

// TestLoopDoesNotWaitForOnePeer: a connection whose every input is answered
// with more than its socket takes, from a peer that never reads, does not
// hold up the loop: the other connections go on exchanging messages, and
// the big reply is delivered whole once its peer reads.
func TestLoopDoesNotWaitForOnePeer(t *testing.T) {
	loopServing(t)
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
		for range 4 {
			p := dialPairOn(t, ln, pairOpts{})
			serve(t, p.server, ConnOptions{}, echoRecorder())
			exchange(t, p.client, []byte("hello"))
			others = append(others, p)
		}
		waitFor(t, 5*time.Second, func() bool { return isParked(sAmp.c) }, "the connection to park")
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
	forLoopListeners(t, func(t *testing.T, ln net.Listener) {
		r, entered, release := holdingEcho(t, "first")
		p, s := loopWarm(t, ln, r) // parked: the loop serves it from now on
		if _, err := p.client.Write([]byte("first")); err != nil {
			t.Fatal(err)
		}
		<-entered
		if _, err := p.client.Write([]byte("second")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.server) > 0 }, "the second message to be queued")
		release()
		got := make([]byte, len("firstsecond"))
		p.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(p.client, got); err != nil || string(got) != "firstsecond" {
			t.Fatalf("echo: %q, %v", got, err)
		}
		p.client.Close()
		r.check(t, s.wait(t, serveWait))
	})
}

// TestAbortWhileLoopServes: an abort from another goroutine while the loop
// runs the connection's DataReceived drops what the callback writes, ends
// the connection with the abort's reason, and the loop goes on serving
// the others.
func TestAbortWhileLoopServes(t *testing.T) {
	forLoopListeners(t, func(t *testing.T, ln net.Listener) {
		r, entered, release := holdingEcho(t, "hold")
		p, s := loopWarm(t, ln, r)
		other, _ := loopWarm(t, ln, echoRecorder())
		if _, err := p.client.Write([]byte("hold")); err != nil {
			t.Fatal(err)
		}
		<-entered
		s.c.Abort(errTestCleanup)
		release()
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

// loopWarm serves an echo recorder over a pair on network and waits until
// the connection is parked, so that the loop serves its next input.
func loopWarm(t *testing.T, ln net.Listener, r *recorder) (*pair, *served) {
	t.Helper()
	p := dialPairOn(t, ln, pairOpts{})
	s := serve(t, p.server, ConnOptions{}, r)
	exchange(t, p.client, []byte("warm"))
	waitFor(t, 5*time.Second, func() bool { return isParked(s.c) }, "the connection to park")
	return p, s
}

// forLoopListeners runs f, as a subtest, with a listener of each raw
// transport, the loop serving and the park deadline out of reach (what
// the test holds must be the loop's doing, not the deadline's).
func forLoopListeners(t *testing.T, f func(t *testing.T, ln net.Listener)) {
	loopServing(t)
	parkDeadlineOutOfReach(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		ln := listen(t, network)
		defer ln.Close()
		f(t, ln)
	})
}

// loopWarmHooked is loopWarm with a recorder that keeps what it got, and
// f run on the connection just before the loop next reads it (once); the
// channel is closed once f has run.
func loopWarmHooked(t *testing.T, ln net.Listener, f func(c *Conn)) (*pair, *served, *recorder, <-chan struct{}) {
	t.Helper()
	r := echoRecorder()
	r.keep = true
	p, s := loopWarm(t, ln, r)
	ran := make(chan struct{})
	var once sync.Once
	setHook(t, &testHookLoopRead, func(c *Conn) {
		if c == s.c {
			once.Do(func() {
				f(c)
				close(ran)
			})
		}
	})
	return p, s, r, ran
}

// TestLoopReadPausedMeanwhileStaysItsOwn: input the loop read after the
// protocol paused the transport (from another goroutine, between the
// loop's look and its read) is the connection's alone: it is not
// delivered while paused, nor ever, once the connection is aborted while
// still paused, and the next connection's reader (from the same pool)
// reads only its own input.
func TestLoopReadPausedMeanwhileStaysItsOwn(t *testing.T) {
	forLoopListeners(t, func(t *testing.T, ln net.Listener) {
		pa, sa, ra, paused := loopWarmHooked(t, ln, func(c *Conn) {
			c.PauseProducing() // as a producer's other side would
		})
		if _, err := pa.client.Write([]byte("for A only")); err != nil {
			t.Fatal(err)
		}
		<-paused
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, pa.server) == 0 }, "the loop to read A's input")
		sa.c.Abort(errTestCleanup)
		ra.check(t, sa.wait(t, serveWait))
		if got := string(ra.bytes()); got != "warm" {
			t.Errorf("A's protocol got %q; want only \"warm\" (the rest came while paused)", got)
		}
		testHookLoopRead.Store(nil)
		for i := range 10 {
			pb, _ := loopWarm(t, ln, echoRecorder())
			exchange(t, pb.client, fmt.Appendf(nil, "for B %d", i))
		}
	})
}

// TestLoopCountsWhatItHandsOver: input the loop read and handed to the
// connection's goroutine (here: the connection was aborted between the
// loop's look and its read) was received, and is counted, though it is
// never delivered: as the read loop counts what it reads before it waits
// to deliver.
func TestLoopCountsWhatItHandsOver(t *testing.T) {
	forLoopListeners(t, func(t *testing.T, ln net.Listener) {
		p, s, r, aborted := loopWarmHooked(t, ln, func(c *Conn) { c.Abort(errTestCleanup) })
		const late = "arrived as it was aborted"
		if _, err := p.client.Write([]byte(late)); err != nil {
			t.Fatal(err)
		}
		<-aborted
		r.check(t, s.wait(t, serveWait))
		if got := string(r.bytes()); got != "warm" {
			t.Errorf("the protocol got %q; want only \"warm\"", got)
		}
		if got, want := s.c.BytesIn(), int64(len("warm")+len(late)); got != want {
			t.Errorf("BytesIn = %d; want %d (the input the loop read counts)", got, want)
		}
	})
}

// TestDrainDuringLoopReadDelivers: input the loop read as a drain began
// (between its look and its read) had arrived before the drain, and is
// delivered before the connection closes.
func TestDrainDuringLoopReadDelivers(t *testing.T) {
	forLoopListeners(t, func(t *testing.T, ln net.Listener) {
		p, s, r, _ := loopWarmHooked(t, ln, (*Conn).Drain)
		if _, err := p.client.Write([]byte("last line\n")); err != nil {
			t.Fatal(err)
		}
		got, err := readAll(p.client, 10*time.Second)
		if (err != nil && err != io.EOF) || string(got) != "last line\n" {
			t.Errorf("the client got %q, %v; want the echo, then the end of stream", got, err)
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if reason != framework.ErrConnectionDone {
			t.Errorf("Serve returned %v; want a clean close", reason)
		}
		r.check(t, reason)
		if got := string(r.bytes()); got != "warmlast line\n" {
			t.Errorf("the protocol got %q; want the line sent before the drain", got)
		}
	})
}

// TestLoopWriteSendsOutputQueuedMeanwhile: output another goroutine
// writes while the loop writes a callback's reply is left to that flush
// (a flush is under way), and goes out after the reply.
func TestLoopWriteSendsOutputQueuedMeanwhile(t *testing.T) {
	forLoopListeners(t, func(t *testing.T, ln net.Listener) {
		p, s := loopWarm(t, ln, echoRecorder())
		var once sync.Once
		setHook(t, &testHookFlushNow, func(c *Conn) {
			if c == s.c {
				once.Do(func() {
					done := make(chan struct{})
					go func() { c.Write([]byte(" and more")); close(done) }()
					<-done
				})
			}
		})
		if _, err := p.client.Write([]byte("reply")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len("reply and more"))
		p.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(p.client, got); err != nil || string(got) != "reply and more" {
			t.Fatalf("the client got %q, %v; want the reply, then what was written meanwhile", got, err)
		}
	})
}

// TestLoopLeavesAReusedDescriptorAlone: a connection the loop served ends
// in its callback (a read that filled the buffer, as a stream's would,
// then an abort); its descriptor number goes to a new connection, which
// parks; the loop, carrying on with the old connection, must not touch
// the new one's registration: the new connection is served.
func TestLoopLeavesAReusedDescriptorAlone(t *testing.T) {
	loopServing(t)
	parkDeadlineOutOfReach(t)
	forTransports(t, []string{"tcp", "bare", "unix"}, func(t *testing.T, network string, _ bool) {
		ln := listen(t, network)
		defer ln.Close()
		ra := newRecorder()
		ra.onData = func(r *recorder, b []byte) {
			if len(b) == readBufferSize {
				r.abort()
				return
			}
			r.tr.Write(b)
		}
		pa, sa := loopWarm(t, ln, ra)
		oldFd := sa.c.fd
		// The new connection's client end is made now, so that the server
		// end, accepted once the old descriptor is closed, is the one to
		// get its number.
		client, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		// The hook holds the loop while the test goroutine makes the new
		// connection (a hook must not fail the test: it runs on the loop).
		left, resume := make(chan struct{}), make(chan struct{})
		var once sync.Once
		setHook(t, &testHookLoopLeft, func(c *Conn) {
			if c == sa.c {
				once.Do(func() {
					close(left)
					<-resume
				})
			}
		})
		if _, err := pa.client.Write(randBytes(4*readBufferSize, 3)); err != nil && !isReset(err) {
			t.Fatal(err)
		}
		select {
		case <-left:
		case <-time.After(serveWait):
			t.Fatal("the loop never let go of the aborted connection's descriptor")
		}
		server, err := ln.Accept()
		if err != nil {
			close(resume)
			t.Fatal(err)
		}
		sb := serve(t, server, ConnOptions{}, echoRecorder())
		waitFor(t, 5*time.Second, func() bool { return isParked(sb.c) }, "the new connection to park")
		reused := sb.c.fd == oldFd
		close(resume)
		sa.wait(t, serveWait)
		if !reused {
			t.Skipf("the new connection got another descriptor than %d: nothing to hold", oldFd)
		}
		exchange(t, client, []byte("served"))
	})
}

// TestLoopServingFollowsGOMAXPROCS: the loop serves where GOMAXPROCS is
// 1, and follows it when it changes while superd runs (the runtime
// changes it with the CPU limit of superd's cgroup), unless a test fixed
// the mode; connections carry on across the change.
func TestLoopServingFollowsGOMAXPROCS(t *testing.T) {
	if getPoller() == nil {
		t.Skip("no poller loop on this platform")
	}
	if loopServesFixed.Load() {
		t.Fatal("the mode is fixed outside a test that fixed it")
	}
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() {
		runtime.GOMAXPROCS(orig)
		followGOMAXPROCS()
	})
	if got := loopServes.Load(); got != (orig == 1) {
		t.Errorf("loopServes = %v with GOMAXPROCS %d", got, orig)
	}
	parkSoon(t)
	ln := listen(t, "tcp")
	defer ln.Close()
	p, s := loopWarm(t, ln, echoRecorder())
	for i, procs := range []int{1, 2, 1} {
		runtime.GOMAXPROCS(procs)
		// The loop looks at GOMAXPROCS when it has events to handle (the
		// parked connection's input), at most once a lookAtGOMAXPROCS:
		// echo until it has.
		deadline := time.Now().Add(lookAtGOMAXPROCS + 5*time.Second)
		for loopServes.Load() != (procs == 1) {
			if time.Now().After(deadline) {
				t.Fatalf("loopServes = %v %v after GOMAXPROCS became %d", loopServes.Load(), lookAtGOMAXPROCS+5*time.Second, procs)
			}
			exchange(t, p.client, fmt.Appendf(nil, "round %d", i))
			waitFor(t, 5*time.Second, func() bool { return isParked(s.c) }, "the connection to park")
		}
		exchange(t, p.client, fmt.Appendf(nil, "round %d, mode changed", i))
	}
	setLoopServes(t, false)
	runtime.GOMAXPROCS(1)
	followGOMAXPROCS()
	if loopServes.Load() {
		t.Error("GOMAXPROCS changed a mode a test fixed")
	}
}

// TestLoopTakesOverParkedConnections: a connection parked while
// goroutines served (registered for one event) is served by the loop once
// it serves, and the other way round: the mode can change under parked
// connections (GOMAXPROCS changed) and none of them stops receiving.
func TestLoopTakesOverParkedConnections(t *testing.T) {
	if getPoller() == nil {
		t.Skip("no poller loop on this platform")
	}
	parkSoon(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		for _, from := range []bool{false, true} {
			setLoopServes(t, from)
			ln := listen(t, network)
			p, s := loopWarm(t, ln, echoRecorder())
			setLoopServes(t, !from)
			for i := range 5 {
				exchange(t, p.client, fmt.Appendf(nil, "after the change %d", i))
				waitFor(t, 5*time.Second, func() bool { return isParked(s.c) }, "the connection to park again")
			}
			ln.Close()
		}
	})
}

// blocker is a recorder whose protocol says its callbacks may block
// (framework.Blocker), and which checks that it is asked only between
// callbacks.
type blocker struct {
	*recorder
	asked atomic.Int32
}

func (b *blocker) Blocks() bool {
	b.asked.Add(1)
	if b.active.Load() != 0 {
		b.violate("Blocks asked while a callback runs")
	}
	return true
}

// TestLoopLeavesBlockersToTheirGoroutines: a protocol that says its
// callbacks may block is never served by the loop: while its DataReceived
// waits, the loop goes on serving another connection.
func TestLoopLeavesBlockersToTheirGoroutines(t *testing.T) {
	forLoopListeners(t, func(t *testing.T, ln net.Listener) {
		r, entered, release := holdingEcho(t, "hold")
		b := &blocker{recorder: r}
		pb := dialPairOn(t, ln, pairOpts{})
		sb := serve(t, pb.server, ConnOptions{}, b)
		exchange(t, pb.client, []byte("warm"))
		po, so := loopWarm(t, ln, echoRecorder())
		if _, err := pb.client.Write([]byte("hold")); err != nil {
			t.Fatal(err)
		}
		<-entered
		po.client.Write([]byte("served meanwhile"))
		got, err := readN(po.client, len("served meanwhile"))
		release()
		if err != nil || string(got) != "served meanwhile" {
			t.Fatalf("the other connection, while the blocker's callback waits: %q, %v", got, err)
		}
		if _, err := pb.client.Write([]byte("after")); err != nil {
			t.Fatal(err)
		}
		got = make([]byte, len("holdafter"))
		pb.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(pb.client, got); err != nil || string(got) != "holdafter" {
			t.Fatalf("the blocker's echo: %q, %v", got, err)
		}
		if b.asked.Load() == 0 {
			t.Error("Blocks was never asked")
		}
		pb.client.Close()
		po.client.Close()
		r.check(t, sb.wait(t, serveWait))
		so.wait(t, serveWait)
	})
}

// panickyBlocker's Blocks panics once armed.
type panickyBlocker struct {
	*recorder
	armed atomic.Bool
}

func (b *panickyBlocker) Blocks() bool {
	if b.armed.Load() {
		panic("Blocks failed")
	}
	return false
}

// TestBlocksPanicEndsOnlyItsConnection: a panic in Blocks, asked by the
// loop (which serves every parked connection), ends that connection with a
// PanicError, as one in a callback does; the process and the other
// connections carry on.
func TestBlocksPanicEndsOnlyItsConnection(t *testing.T) {
	forLoopListeners(t, func(t *testing.T, ln net.Listener) {
		b := &panickyBlocker{recorder: echoRecorder()}
		pb := dialPairOn(t, ln, pairOpts{})
		sb := serve(t, pb.server, ConnOptions{}, b)
		exchange(t, pb.client, []byte("warm"))
		waitFor(t, 5*time.Second, func() bool { return isParked(sb.c) }, "the connection to park")
		po, so := loopWarm(t, ln, echoRecorder())
		b.armed.Store(true)
		if _, err := pb.client.Write([]byte("boom")); err != nil {
			t.Fatal(err)
		}
		var pe *framework.PanicError
		if reason := sb.wait(t, serveWait); !errors.As(reason, &pe) || pe.Value != "Blocks failed" {
			t.Fatalf("the connection whose Blocks panicked ended with %v, want its PanicError", reason)
		}
		exchange(t, po.client, []byte("still served"))
		po.client.Close()
		so.wait(t, serveWait)
	})
}

// TestLoopModeFlipsUnderTraffic: the serving mode (the loop, or each
// connection's goroutine) changes every few milliseconds while eight
// connections exchange messages and park between them: every echo comes
// back whole and in order, on every transport.
func TestLoopModeFlipsUnderTraffic(t *testing.T) {
	loopServing(t)
	parkSoon(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		ln := listen(t, network)
		defer ln.Close()
		const conns, rounds = 8, 200
		var ps []*pair
		var ss []*served
		var rs []*recorder
		for range conns {
			r := echoRecorder()
			p, s := loopWarm(t, ln, r)
			ps, ss, rs = append(ps, p), append(ss, s), append(rs, r)
		}
		stop := make(chan struct{})
		flipped := make(chan struct{})
		go func() {
			defer close(flipped)
			for i := 0; ; i++ {
				select {
				case <-stop:
					loopServes.Store(true)
					return
				case <-time.After(time.Duration(1+i%7) * time.Millisecond):
				}
				loopServes.Store(i%2 == 1)
			}
		}()
		var g errgroup.Group
		for i, p := range ps {
			g.Go(func() error {
				for round := range rounds {
					msg := fmt.Appendf(nil, "c%d r%d", i, round)
					if _, err := p.client.Write(msg); err != nil {
						return err
					}
					got, err := readN(p.client, len(msg))
					if err != nil || !bytes.Equal(got, msg) {
						return fmt.Errorf("connection %d, round %d: got %q, %v", i, round, got, err)
					}
					if round%17 == 0 {
						time.Sleep(15 * time.Millisecond) // long enough to park
					}
				}
				return nil
			})
		}
		err := g.Wait()
		close(stop)
		<-flipped
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range ps {
			p.client.Close()
			rs[i].check(t, ss[i].wait(t, serveWait))
		}
	})
}
