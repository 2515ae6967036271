package engine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/framework"
)

// transports every stream test runs over.
var transports = []struct {
	name    string
	network string
	tls     bool
}{
	{"tcp", "tcp", false},
	{"tcp6", "tcp6", false},
	{"unix", "unix", false},
	{"tls", "tcp", true},
	{"tls-unix", "unix", true},
}

// forTransports runs f as one subtest per transport whose name is in only
// (all of them when only is empty).
func forTransports(t *testing.T, only []string, f func(t *testing.T, network string, useTLS bool)) {
	for _, tr := range transports {
		if len(only) > 0 && !contains(only, tr.name) {
			continue
		}
		t.Run(tr.name, func(t *testing.T) { f(t, tr.network, tr.tls) })
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

const serveWait = 20 * time.Second

// clientSawNoData asserts that the client reads nothing more and then the
// end of the stream: an EOF or a reset.
func clientSawNoData(t *testing.T, c net.Conn) {
	t.Helper()
	got, err := readAll(c, 10*time.Second)
	if len(got) != 0 {
		t.Errorf("client read %d bytes after the abort; want none (%q...)", len(got), truncate(got))
	}
	if err != io.EOF && !isReset(err) {
		t.Errorf("client read ended with %v; want EOF or a reset", err)
	}
}

func truncate(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

// --- 1. Lifecycle and reasons ---

func TestPeerCloseIsClean(t *testing.T) {
	forTransports(t, nil, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		r.keep = true
		s := serve(t, p.server, ConnOptions{}, r)
		if _, err := p.client.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 5 }, "5 bytes received")
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) || !errors.Is(reason, framework.ErrConnectionDone) {
			t.Errorf("peer close: reason %v, want clean (framework.ErrConnectionDone)", reason)
		}
		if errors.Is(reason, framework.ErrConnectionLost) {
			t.Errorf("peer close: reason %v also matches framework.ErrConnectionLost", reason)
		}
		r.check(t, reason)
		if got := string(r.bytes()); got != "hello" {
			t.Errorf("received %q, want %q", got, "hello")
		}
	})
}

func TestPeerResetIsLost(t *testing.T) {
	forTransports(t, []string{"tcp", "tcp6", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		tc := p.clientRaw.(*net.TCPConn)
		if err := tc.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		tc.Close()
		reason := s.wait(t, serveWait)
		if !errors.Is(reason, framework.ErrConnectionLost) || framework.IsClean(reason) {
			t.Errorf("peer reset: reason %v, want framework.ErrConnectionLost and not clean", reason)
		}
		if errors.Is(reason, framework.ErrConnectionAborted) {
			t.Errorf("peer reset: reason %v matches framework.ErrConnectionAborted, but nobody aborted", reason)
		}
		r.check(t, reason)
	})
}

func TestAbortConnectionDropsPending(t *testing.T) {
	forTransports(t, nil, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		var disconnecting bool
		r.onData = func(r *recorder, b []byte) {
			r.tr.Write(randBytes(1<<20, 1)) // pending, never flushed
			r.abort()
			disconnecting = r.tr.Disconnecting()
			r.tr.Write([]byte("after abort")) // dropped
		}
		s := serve(t, p.server, ConnOptions{}, r)
		if _, err := p.client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		clientSawNoData(t, p.client)
		reason := s.wait(t, serveWait)
		if !errors.Is(reason, framework.ErrConnectionAborted) || !errors.Is(reason, framework.ErrConnectionLost) || framework.IsClean(reason) {
			t.Errorf("abort: reason %v, want framework.ErrConnectionAborted", reason)
		}
		for _, other := range []error{framework.ErrSlowConsumer, framework.ErrIdleTimeout, framework.ErrShutdownTimeout} {
			if errors.Is(reason, other) {
				t.Errorf("abort: reason %v also matches %v", reason, other)
			}
		}
		if !disconnecting {
			t.Error("Disconnecting() false right after AbortConnection")
		}
		r.check(t, reason)
	})
}

func TestIdleTimeout(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const idle = 400 * time.Millisecond
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{IdleTimeout: idle}, r)
		// Traffic keeps the connection alive well past the timeout.
		for i := 0; i < 12; i++ {
			if _, err := p.client.Write([]byte{'k'}); err != nil {
				t.Fatalf("keep-alive write %d: %v", i, err)
			}
			waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == i+1 }, "keep-alive byte %d", i)
			time.Sleep(idle / 8) // the client's pace, not synchronisation
		}
		if r.isLost() {
			t.Fatal("connection timed out although the peer kept sending")
		}
		quiet := time.Now()
		reason := s.wait(t, serveWait)
		elapsed := time.Since(quiet)
		if !errors.Is(reason, framework.ErrIdleTimeout) || !errors.Is(reason, framework.ErrConnectionAborted) {
			t.Errorf("idle: reason %v, want framework.ErrIdleTimeout (an abort)", reason)
		}
		if elapsed < idle*3/4 {
			t.Errorf("idle timeout fired %v after the last byte; want about %v", elapsed, idle)
		}
		clientSawNoData(t, p.client)
		r.check(t, reason)
	})
}

// Idle timeout while a write from another goroutine is being flushed in the
// background: the reading goroutine still waits on its read deadline.
func TestIdleTimeoutWithBackgroundFlush(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{IdleTimeout: 300 * time.Millisecond, MaxPendingOutput: 64 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	s.c.Write(randBytes(8<<20, 2)) // more than the socket buffers hold
	reason := s.wait(t, serveWait)
	if !errors.Is(reason, framework.ErrIdleTimeout) {
		t.Errorf("reason %v, want framework.ErrIdleTimeout", reason)
	}
	r.check(t, reason)
}

func TestLoseConnectionFromCallback(t *testing.T) {
	forTransports(t, nil, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		var disconnecting bool
		r.onData = func(r *recorder, b []byte) {
			if bytes.Contains(b, []byte("bye")) {
				r.tr.WriteString("ok\n")
				r.lose()
				r.tr.LoseConnection() // again: a no-op
				disconnecting = r.tr.Disconnecting()
			}
		}
		s := serve(t, p.server, ConnOptions{}, r)
		if _, err := p.client.Write([]byte("hello bye")); err != nil {
			t.Fatal(err)
		}
		got, err := readAll(p.client, 10*time.Second)
		if string(got) != "ok\n" || err != io.EOF {
			t.Errorf("client read %q, %v; want %q, EOF", got, err, "ok\n")
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("LoseConnection: reason %v, want clean", reason)
		}
		if !disconnecting {
			t.Error("Disconnecting() false right after LoseConnection")
		}
		r.check(t, reason)
	})
}

func TestLoseConnectionFromOtherGoroutine(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		s.c.WriteString("last words")
		s.c.LoseConnection()
		got, err := readAll(p.client, 10*time.Second)
		if string(got) != "last words" || err != io.EOF {
			t.Errorf("client read %q, %v; want %q, EOF", got, err, "last words")
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// After LoseConnection the server half-closes and waits for the peer's EOF,
// but not forever: a peer that never closes is let go after lingerTimeout.
func TestLoseConnectionLingerBounded(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	start := time.Now()
	s.c.LoseConnection()
	got, err := readAll(p.client, 10*time.Second)
	if len(got) != 0 || err != io.EOF {
		t.Errorf("client read %q, %v; want EOF", got, err)
	}
	// The client keeps its end open (and even sends: discarded).
	p.client.Write([]byte("ignored"))
	reason := s.wait(t, lingerTimeout+10*time.Second)
	if !framework.IsClean(reason) {
		t.Errorf("reason %v, want clean", reason)
	}
	if d := time.Since(start); d > lingerTimeout+3*time.Second {
		t.Errorf("Serve returned %v after LoseConnection; lingerTimeout is %v", d, lingerTimeout)
	}
	r.check(t, reason)
}

func TestAbortShutdownTimeout(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		s.c.Abort(framework.ErrShutdownTimeout)
		s.c.Abort(framework.ErrIdleTimeout) // the first reason stays
		reason := s.wait(t, serveWait)
		if !errors.Is(reason, framework.ErrShutdownTimeout) || !errors.Is(reason, framework.ErrConnectionAborted) ||
			!errors.Is(reason, framework.ErrConnectionLost) || framework.IsClean(reason) {
			t.Errorf("reason %v, want framework.ErrShutdownTimeout (an abort)", reason)
		}
		if errors.Is(reason, framework.ErrIdleTimeout) {
			t.Errorf("reason %v: a second Abort replaced the first reason", reason)
		}
		clientSawNoData(t, p.client)
		r.check(t, reason)
	})
}

func TestAddresses(t *testing.T) {
	forTransports(t, []string{"tcp", "tcp6", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		if got, want := s.c.LocalAddr().String(), p.client.RemoteAddr().String(); got != want {
			t.Errorf("LocalAddr %s, want %s", got, want)
		}
		if network != "unix" {
			if got, want := s.c.PeerAddr().String(), p.client.LocalAddr().String(); got != want {
				t.Errorf("PeerAddr %s, want %s", got, want)
			}
		}
		if got, want := s.c.LocalAddr().Network(), p.client.RemoteAddr().Network(); got != want {
			t.Errorf("LocalAddr network %s, want %s", got, want)
		}
		p.client.Close()
		r.check(t, s.wait(t, serveWait))
	})
}

// --- 2. Echo ---

// writeChunks writes payload to c in pseudo-random chunk sizes, counting
// progress in written, and reports the first error on the returned channel.
func writeChunks(c net.Conn, payload []byte, written *atomic.Int64, maxChunk int) <-chan error {
	done := make(chan error, 1)
	go func() {
		sizes := randBytes(len(payload)/1024+16, 99)
		i := 0
		for off := 0; off < len(payload); {
			n := 1 + int(sizes[i%len(sizes)])*maxChunk/256
			i++
			n = min(n, len(payload)-off)
			w, err := c.Write(payload[off : off+n])
			if written != nil {
				written.Add(int64(w))
			}
			off += w
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestEcho(t *testing.T) {
	forTransports(t, nil, func(t *testing.T, network string, useTLS bool) {
		payload := randBytes(8<<20, 7)
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := echoRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		wdone := writeChunks(p.client, payload, nil, 100<<10)
		got := make([]byte, len(payload))
		p.client.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := io.ReadFull(p.client, got)
		if err != nil {
			p.client.Close()
			<-wdone
			t.Fatalf("echo: read %d of %d bytes: %v", n, len(payload), err)
		}
		if werr := <-wdone; werr != nil {
			t.Fatalf("client write: %v", werr)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo differs from what was sent at byte %d", firstDiff(got, payload))
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
		if r.receivedBytes() != len(payload) {
			t.Errorf("protocol received %d bytes, want %d", r.receivedBytes(), len(payload))
		}
	})
}

// --- 3. Flow control: echo to a client that does not read ---

// waitStall waits until value stops changing for quiet, and returns it.
func waitStall(t *testing.T, value func() int64, quiet, limit time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(limit)
	last, since := value(), time.Now()
	for {
		time.Sleep(5 * time.Millisecond)
		if v := value(); v != last {
			last, since = v, time.Now()
		} else if time.Since(since) >= quiet {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("value still moving after %v (now %d)", limit, last)
		}
	}
}

// sampler polls c.Pending() until stopped and keeps the maximum.
type sampler struct {
	max  atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func samplePending(c *Conn) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if p := int64(c.Pending()); p > s.max.Load() {
				s.max.Store(p)
			}
			select {
			case <-s.stop:
				return
			default:
				time.Sleep(20 * time.Microsecond)
			}
		}
	}()
	return s
}

func (s *sampler) finish() int64 {
	close(s.stop)
	<-s.done
	return s.max.Load()
}

func TestEchoNonReadingClientBounded(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const total = 48 << 20
		payload := randBytes(total, 11)
		// Fixed socket buffers, so how much the kernel holds is bounded.
		p := dialPair(t, network, pairOpts{tls: useTLS,
			clientRcv: 128 << 10, clientSnd: 128 << 10, serverRcv: 128 << 10, serverSnd: 128 << 10})
		r := echoRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		smp := samplePending(s.c)
		var written atomic.Int64
		wdone := writeChunks(p.client, payload, &written, 64<<10)

		// The client writes and never reads: its writes must stall because
		// the server stops reading.
		stalled := waitStall(t, func() int64 { return written.Load() + int64(r.receivedBytes()) }, 400*time.Millisecond, 60*time.Second)
		w, rcv := written.Load(), r.receivedBytes()
		t.Logf("stalled: client wrote %d bytes, server received %d, max pending %d", w, rcv, smp.max.Load())
		_ = stalled
		if w >= total {
			t.Fatalf("the client wrote all %d bytes without reading: no back-pressure", total)
		}
		if w > 16<<20 {
			t.Errorf("the client wrote %d bytes before stalling; want a few socket buffers", w)
		}
		if s.finished() {
			t.Fatalf("connection ended while stalled: %v", s.reason)
		}

		// Now read: everything arrives, in order.
		got := make([]byte, total)
		p.client.SetReadDeadline(time.Now().Add(120 * time.Second))
		n, err := io.ReadFull(p.client, got)
		if err != nil {
			p.client.Close()
			<-wdone
			smp.finish()
			t.Fatalf("read %d of %d bytes: %v", n, total, err)
		}
		if werr := <-wdone; werr != nil {
			t.Fatalf("client write: %v", werr)
		}
		maxPending := smp.finish()
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo differs at byte %d", firstDiff(got, payload))
		}
		if limit := int64(framework.HighWaterMark + readBufferSize); maxPending > limit {
			t.Errorf("Pending() reached %d; want at most framework.HighWaterMark+readBufferSize = %d", maxPending, limit)
		}
		t.Logf("max Pending() %d", maxPending)
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// --- 4. Slow consumer ---

func TestSlowConsumerAborted(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const limit = 1 << 20
		p := dialPair(t, network, pairOpts{tls: useTLS, clientRcv: 64 << 10, serverSnd: 64 << 10})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: limit}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

		// Another goroutine (a chat peer) writes far more than the limit;
		// the client never reads.
		chunk := randBytes(64<<10, 5)
		type result struct{ total, slowest time.Duration }
		res := make(chan result, 1)
		go func() {
			start := time.Now()
			var slowest time.Duration
			for i := 0; i < 512; i++ { // 32 MiB
				t0 := time.Now()
				s.c.Write(chunk)
				slowest = max(slowest, time.Since(t0))
			}
			res <- result{time.Since(start), slowest}
		}()
		var rr result
		select {
		case rr = <-res:
		case <-time.After(30 * time.Second):
			s.c.Abort(errTestCleanup)
			<-res
			t.Fatal("Write blocked: 32 MiB of writes to a non-reading peer did not return within 30s")
		}
		t.Logf("512 writes took %v, the slowest %v", rr.total, rr.slowest)
		if rr.slowest > 2*time.Second {
			t.Errorf("one Write took %v; Write must not block on the network", rr.slowest)
		}
		reason := s.wait(t, serveWait)
		if !errors.Is(reason, framework.ErrSlowConsumer) || !errors.Is(reason, framework.ErrConnectionAborted) {
			t.Errorf("reason %v, want framework.ErrSlowConsumer", reason)
		}
		// The flusher's last write fails at once; nothing stays pending.
		waitFor(t, 5*time.Second, func() bool { return s.c.Pending() == 0 }, "Pending() = 0 after the abort")
		r.check(t, reason)
	})
}

// --- 5. LoseConnection flushes ---

func TestLoseConnectionFlushesEverything(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		payload := randBytes(8<<20, 13)
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		r.onMade = func(r *recorder) {
			r.tr.Write(payload)
			r.lose()
		}
		// One callback writes 8 MiB: above the default hard limit.
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
		got, err := readAll(p.client, 60*time.Second)
		if err != io.EOF {
			t.Errorf("client read ended with %v, want EOF", err)
		}
		if len(got) != len(payload) || !bytes.Equal(got, payload) {
			t.Errorf("client read %d bytes, want exactly %d (first difference at %d)", len(got), len(payload), firstDiff(got, payload))
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// Twisted: write("before,"), loseConnection(), write("after") in one
// callback and the peer receives "before,after".
func TestWriteAfterLoseConnectionInSameCallback(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		r.onData = func(r *recorder, b []byte) {
			r.tr.Write([]byte("before,"))
			r.lose()
			r.tr.WriteString("after")
		}
		s := serve(t, p.server, ConnOptions{}, r)
		if _, err := p.client.Write([]byte("go")); err != nil {
			t.Fatal(err)
		}
		got, err := readAll(p.client, 10*time.Second)
		if string(got) != "before,after" || err != io.EOF {
			t.Errorf("client read %q, %v; want %q, EOF", got, err, "before,after")
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// Twisted (verified): LoseConnection in ConnectionMade means bytes the client
// already sent are never delivered.
func TestLoseConnectionInConnectionMadeDropsInput(t *testing.T) {
	forTransports(t, []string{"tcp", "unix"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{})
		early := []byte("sent before the server looked")
		if _, err := p.client.Write(early); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) == len(early) },
			"the early bytes to reach the server socket")
		r := newRecorder()
		r.onMade = func(r *recorder) {
			r.tr.WriteString("go away")
			r.lose()
		}
		s := serve(t, p.server, ConnOptions{}, r)
		got, err := readAll(p.client, 10*time.Second)
		if string(got) != "go away" || err != io.EOF {
			t.Errorf("client read %q, %v; want %q, EOF", got, err, "go away")
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		if n := r.chunkCount(); n != 0 {
			t.Errorf("DataReceived called %d times after LoseConnection in ConnectionMade", n)
		}
		r.check(t, reason)
	})
}

// --- 6. Writes from other goroutines ---

func TestConcurrentWriters(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const writers, msgs = 16, 1000
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				buf := make([]byte, 0, 32)
				for i := range msgs {
					if g%2 == 0 {
						buf = fmt.Appendf(buf[:0], "%02d:%05d\n", g, i)
						s.c.Write(buf) // buf is reused at once
					} else {
						s.c.WriteString(fmt.Sprintf("%02d:%05d\n", g, i))
					}
				}
			}()
		}
		close(start)

		next := make([]int, writers)
		sc := bufio.NewScanner(p.client)
		p.client.SetReadDeadline(time.Now().Add(60 * time.Second))
		for n := 0; n < writers*msgs; n++ {
			if !sc.Scan() {
				t.Fatalf("after %d messages: %v", n, sc.Err())
			}
			var g, i int
			if _, err := fmt.Sscanf(sc.Text(), "%d:%d", &g, &i); err != nil || g < 0 || g >= writers {
				t.Fatalf("garbled message %q", sc.Text())
			}
			if i != next[g] {
				t.Fatalf("writer %d: message %d arrived when %d was expected", g, i, next[g])
			}
			next[g]++
		}
		wg.Wait()
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// A buffer handed to Write may be reused at once by a writer that is not
// inside a callback (the flush happens later, in another goroutine).
func TestWriteCopiesBuffer(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	var want bytes.Buffer
	buf := make([]byte, 100)
	for i := range 2000 {
		for j := range buf {
			buf[j] = byte(i + j)
		}
		want.Write(buf)
		s.c.Write(buf)
	}
	got := make([]byte, want.Len())
	p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(p.client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("received bytes differ at %d", firstDiff(got, want.Bytes()))
	}
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}

type countingProducer struct {
	pauses, resumes, stops atomic.Int32
}

func (p *countingProducer) PauseProducing()  { p.pauses.Add(1) }
func (p *countingProducer) ResumeProducing() { p.resumes.Add(1) }
func (p *countingProducer) StopProducing()   { p.stops.Add(1) }

// Everything a goroutine may still do with a transport after its connection
// is gone is harmless: dropped, no panic.
func TestTransportAfterConnectionGone(t *testing.T) {
	forTransports(t, []string{"tcp", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		r.onLost = func(r *recorder, reason error) {
			r.tr.Write([]byte("during ConnectionLost")) // dropped
			r.tr.LoseConnection()
		}
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

		// Writers keep going while the connection ends under them.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					s.c.Write([]byte("spam "))
					s.c.WriteString("more spam ")
				}
			}()
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		close(stop)
		wg.Wait()

		tr := framework.Transport(s.c)
		tr.Write([]byte("late"))
		tr.WriteString("late")
		tr.Write(nil)
		tr.WriteString("")
		tr.LoseConnection()
		tr.AbortConnection()
		tr.PauseProducing()
		tr.ResumeProducing()
		tr.UnregisterProducer()
		s.c.Abort(framework.ErrShutdownTimeout)
		if !tr.Disconnecting() {
			t.Error("Disconnecting() false after the connection ended")
		}
		if n := s.c.Pending(); n != 0 {
			t.Errorf("Pending() = %d after the connection ended", n)
		}
		cp := &countingProducer{}
		tr.RegisterProducer(cp) // on a connection already gone: stopped at once
		if cp.stops.Load() != 1 {
			t.Errorf("RegisterProducer after the end: StopProducing called %d times, want 1", cp.stops.Load())
		}
		if s.reason != reason {
			t.Errorf("reason changed after the end: %v, then %v", reason, s.reason)
		}
		r.check(t, reason)
	})
}

// --- 7. Panics ---

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestPanicEndsOnlyThatConnection(t *testing.T) {
	ln := listen(t, "tcp")
	var logs syncBuffer
	opts := ConnOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	type conn struct {
		r *recorder
		s *served
	}
	conns := make(chan conn, 8)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			r := newRecorder()
			r.onMade = func(r *recorder) {
				if r.tr.PeerAddr() == nil {
					panic("no peer")
				}
			}
			r.onData = func(r *recorder, b []byte) {
				if bytes.Contains(b, []byte("panic")) {
					panic("boom")
				}
				r.tr.Write(b)
			}
			conns <- conn{r, serve(t, nc, opts, r)}
		}
	}()
	defer func() { ln.Close(); <-acceptDone }()

	dial := func() (net.Conn, conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		select {
		case sc := <-conns:
			return c, sc
		case <-time.After(10 * time.Second):
			t.Fatal("no connection accepted")
		}
		return nil, conn{}
	}
	echo := func(c net.Conn, msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, got, err)
		}
	}

	good, goodConn := dial()
	echo(good, "one")
	bad, badConn := dial()
	echo(bad, "fine so far")
	if _, err := bad.Write([]byte("now panic")); err != nil {
		t.Fatal(err)
	}
	reason := badConn.s.wait(t, serveWait)
	var pe *framework.PanicError
	if !errors.As(reason, &pe) || pe.Value != "boom" || len(pe.Stack) == 0 {
		t.Errorf("reason %#v, want a *framework.PanicError with value boom and a stack", reason)
	}
	if framework.IsClean(reason) {
		t.Errorf("a panic is not a clean close: %v", reason)
	}
	badConn.r.check(t, reason)
	if _, err := readAll(bad, 10*time.Second); err == nil {
		t.Error("the panicking connection's client can still read")
	}
	if !strings.Contains(logs.String(), "protocol panic") || !strings.Contains(logs.String(), "boom") {
		t.Errorf("the panic was not logged: %q", logs.String())
	}

	// The other connection, on the same listener, still works, and new
	// connections are served.
	echo(good, "two")
	third, thirdConn := dial()
	echo(third, "three")
	echo(good, "four")
	for _, x := range []struct {
		c  net.Conn
		sc conn
	}{{good, goodConn}, {third, thirdConn}} {
		x.c.Close()
		reason := x.sc.s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("surviving connection ended with %v, want clean", reason)
		}
		x.sc.r.check(t, reason)
	}
}

func TestPanicInConnectionMade(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	if _, err := p.client.Write([]byte("never delivered")); err != nil {
		t.Fatal(err)
	}
	r := newRecorder()
	r.onMade = func(r *recorder) {
		r.tr.WriteString("partial greeting") // dropped by the abort
		panic(errors.New("made failed"))
	}
	s := serve(t, p.server, ConnOptions{}, r)
	reason := s.wait(t, serveWait)
	var pe *framework.PanicError
	if !errors.As(reason, &pe) {
		t.Errorf("reason %v, want a *framework.PanicError", reason)
	}
	if r.chunkCount() != 0 {
		t.Error("DataReceived after ConnectionMade panicked")
	}
	clientSawNoData(t, p.client)
	r.check(t, reason)
}

// --- 8. Pausing and producers ---

func TestPauseResumeProducing(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		r.keep = true
		r.onMade = func(r *recorder) { r.pause() }
		r.onData = func(r *recorder, b []byte) {
			if bytes.Contains(b, []byte("first")) {
				r.pause()
			}
		}
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

		// Paused in ConnectionMade: the data stays in the server's socket.
		if _, err := p.client.Write([]byte("first")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) > 0 }, "data to reach the server socket")
		// A reader that ignored the pause would consume it now.
		holds(t, 50*time.Millisecond, func() bool { return inputQueued(t, p.serverRaw) > 0 && r.chunkCount() == 0 },
			"paused transport read anyway")
		r.resume()
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 5 }, "data after resume")

		// Paused again from DataReceived.
		if _, err := p.client.Write([]byte("second")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) > 0 }, "data to reach the server socket")
		holds(t, 50*time.Millisecond, func() bool { return r.receivedBytes() == 5 }, "paused transport delivered data")
		r.resume()
		r.resume() // idempotent
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 11 }, "data after the second resume")
		if got := string(r.bytes()); got != "firstsecond" {
			t.Errorf("received %q", got)
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// LoseConnection on a paused transport still completes (Twisted: the
// disconnecting transport ignores the pause).
func TestLoseConnectionWhilePaused(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := newRecorder()
	r.onMade = func(r *recorder) {
		r.pause()
		r.tr.WriteString("bye")
		r.lose()
	}
	s := serve(t, p.server, ConnOptions{}, r)
	p.client.Write([]byte("ignored"))
	got, err := readAll(p.client, 10*time.Second)
	if string(got) != "bye" || err != io.EOF {
		t.Errorf("client read %q, %v; want bye, EOF", got, err)
	}
	p.client.Close()
	reason := s.wait(t, serveWait)
	if !framework.IsClean(reason) {
		t.Errorf("reason %v, want clean", reason)
	}
	r.check(t, reason)
}

// PauseProducing is documented as safe from any goroutine: "no DataReceived
// until ResumeProducing". Pausing while Serve's goroutine is already waiting
// in a read must hold back the next chunk too.
func TestPauseProducingFromOtherGoroutine(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	waitFor(t, 5*time.Second, func() bool { return serveWaitingForInput(s.c) }, "Serve's reader to wait for input")
	r.mu.Lock()
	r.paused = true // from now on a DataReceived is a violation
	r.mu.Unlock()
	s.c.PauseProducing()
	if _, err := p.client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	// Give a misbehaving reader time to deliver.
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) && r.chunkCount() == 0 {
		time.Sleep(time.Millisecond)
	}
	if n := r.chunkCount(); n != 0 {
		t.Errorf("DataReceived was called %d time(s) after PauseProducing returned", n)
	}
	r.resume()
	waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 3 }, "data after resume")
	p.client.Close()
	reason := s.wait(t, serveWait)
	r.mu.Lock()
	kept := r.violations[:0]
	for _, v := range r.violations {
		if v != "DataReceived while paused" { // reported above
			kept = append(kept, v)
		}
	}
	r.violations = kept
	r.mu.Unlock()
	r.check(t, reason)
}

// streamProducer writes a payload in chunks from its own goroutine while it
// is not paused, as a streaming producer does.
type streamProducer struct {
	tr      framework.Transport
	payload []byte
	chunk   int

	mu      sync.Mutex
	cond    sync.Cond
	paused  bool
	stopped bool

	written                atomic.Int64
	pauses, resumes, stops atomic.Int32
	inCall                 atomic.Int32
	resumeWithoutPause     atomic.Int32
	done                   chan struct{}
	blockResume            chan struct{} // if set, the next Resume waits on it
	resumeEntered          chan struct{}
	resumeBlockedOnce      sync.Once
}

func newStreamProducer(tr framework.Transport, payload []byte, chunk int) *streamProducer {
	p := &streamProducer{tr: tr, payload: payload, chunk: chunk, done: make(chan struct{})}
	p.cond.L = &p.mu
	return p
}

func (p *streamProducer) enter() {
	p.inCall.Add(1)
}

func (p *streamProducer) exit() { p.inCall.Add(-1) }

func (p *streamProducer) PauseProducing() {
	p.enter()
	defer p.exit()
	p.pauses.Add(1)
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

func (p *streamProducer) ResumeProducing() {
	p.enter()
	defer p.exit()
	p.mu.Lock()
	if !p.paused {
		p.resumeWithoutPause.Add(1) // a resume for a pause not delivered yet
	}
	p.mu.Unlock()
	if p.blockResume != nil {
		p.resumeBlockedOnce.Do(func() {
			close(p.resumeEntered)
			<-p.blockResume
		})
	}
	p.resumes.Add(1)
	p.mu.Lock()
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *streamProducer) StopProducing() {
	p.enter()
	defer p.exit()
	p.stops.Add(1)
	p.mu.Lock()
	p.stopped = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *streamProducer) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// run writes until the payload is out or the producer is stopped.
func (p *streamProducer) run() {
	defer close(p.done)
	for off := 0; off < len(p.payload); {
		p.mu.Lock()
		for p.paused && !p.stopped {
			p.cond.Wait()
		}
		stopped := p.stopped
		p.mu.Unlock()
		if stopped {
			return
		}
		n := min(p.chunk, len(p.payload)-off)
		p.tr.Write(p.payload[off : off+n])
		off += n
		p.written.Add(int64(n))
	}
}

// drainProducer reads n bytes from c while prod writes them. It fails fast
// when the producer is left paused with nothing pending (so nothing will
// ever resume it) instead of waiting for a read deadline.
func drainProducer(t *testing.T, c net.Conn, n int, prod *streamProducer, conn *Conn) ([]byte, error) {
	t.Helper()
	got := make([]byte, n)
	var progress atomic.Int64
	done := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(120 * time.Second))
		off := 0
		for off < n {
			k, err := c.Read(got[off:])
			off += k
			progress.Store(int64(off))
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var stuckSince time.Time
	for {
		select {
		case err := <-done:
			if err != nil {
				return nil, fmt.Errorf("client read after %d bytes: %w", progress.Load(), err)
			}
			select {
			case <-prod.done:
			case <-time.After(10 * time.Second):
				return nil, errors.New("the producer did not finish")
			}
			return got, nil
		case <-time.After(10 * time.Millisecond):
		}
		if prod.isPaused() && conn.Pending() == 0 && prod.written.Load() < int64(n) {
			if stuckSince.IsZero() {
				stuckSince = time.Now()
			} else if time.Since(stuckSince) > 2*time.Second {
				conn.Abort(errTestCleanup) // stops the producer, ends the read
				<-done
				<-prod.done
				conn.mu.Lock()
				fwPaused := conn.producerPaused
				conn.mu.Unlock()
				return nil, fmt.Errorf("producer left paused with nothing pending after writing %d of %d bytes "+
					"(pauses %d, resumes %d, resumes delivered to a running producer %d, Conn.producerPaused %v): "+
					"a ResumeProducing overtook the PauseProducing it answers and nothing will resume the producer",
					prod.written.Load(), n, prod.pauses.Load(), prod.resumes.Load(), prod.resumeWithoutPause.Load(), fwPaused)
			}
		} else {
			stuckSince = time.Time{}
		}
	}
}

func TestRegisterProducer(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const chunk = 16 << 10
		payload := randBytes(8<<20, 17)
		p := dialPair(t, network, pairOpts{tls: useTLS, clientRcv: 64 << 10, serverSnd: 64 << 10})
		r := newRecorder()
		var prod *streamProducer
		var regErr, secondErr error
		r.onMade = func(r *recorder) {
			prod = newStreamProducer(r.tr, payload, chunk)
			regErr = r.tr.RegisterProducer(prod)
			secondErr = r.tr.RegisterProducer(&countingProducer{})
		}
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		if regErr != nil {
			t.Fatalf("RegisterProducer: %v", regErr)
		}
		if secondErr == nil {
			t.Error("registering a second producer did not fail")
		}
		smp := samplePending(s.c)
		go prod.run()

		// The client does not read: the producer is paused once the backlog
		// passes the high-water mark, and stays paused.
		waitFor(t, 20*time.Second, func() bool { return prod.pauses.Load() > 0 }, "PauseProducing")
		stalled := waitStall(t, prod.written.Load, 300*time.Millisecond, 30*time.Second)
		if stalled >= int64(len(payload)) {
			t.Fatal("the producer wrote everything without being paused")
		}
		if !prod.isPaused() {
			t.Error("producer not paused while the client does not read")
		}

		// The client drains: the producer is resumed and finishes.
		got, err := drainProducer(t, p.client, len(payload), prod, s.c)
		if err != nil {
			smp.finish()
			t.Fatal(err)
		}
		<-prod.done
		maxPending := smp.finish()
		if !bytes.Equal(got, payload) {
			t.Fatalf("received data differs at %d", firstDiff(got, payload))
		}
		if prod.resumes.Load() == 0 {
			t.Error("ResumeProducing never called")
		}
		if n := prod.resumeWithoutPause.Load(); n != 0 {
			t.Errorf("ResumeProducing delivered %d time(s) to a producer that was not paused (overtook its PauseProducing)", n)
		}
		if pa, re := prod.pauses.Load(), prod.resumes.Load(); re > pa {
			t.Errorf("%d resumes for %d pauses", re, pa)
		}
		if limit := int64(framework.HighWaterMark + chunk); maxPending > limit {
			t.Errorf("Pending() reached %d with a paused producer; want at most %d", maxPending, limit)
		}
		t.Logf("pauses %d, resumes %d, max pending %d", prod.pauses.Load(), prod.resumes.Load(), maxPending)
		if prod.stops.Load() != 0 {
			t.Error("StopProducing before the connection ended")
		}

		// The connection ends: the producer is stopped, once.
		p.client.Close()
		reason := s.wait(t, serveWait)
		if n := prod.stops.Load(); n != 1 {
			t.Errorf("StopProducing called %d times, want 1", n)
		}
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// Every write of a chunk larger than the high-water mark pauses the producer
// and the flush of a fast reader resumes it: thousands of pause/resume
// cycles. A ResumeProducing delivered before the PauseProducing it answers
// leaves the producer paused forever, with nothing pending to resume it.
func TestProducerNeverLeftPaused(t *testing.T) {
	forTransports(t, []string{"tcp", "unix"}, func(t *testing.T, network string, useTLS bool) {
		const chunk = framework.HighWaterMark + 1
		payload := randBytes(1000*chunk, 53)
		p := dialPair(t, network, pairOpts{})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		prod := newStreamProducer(s.c, payload, chunk)
		if err := s.c.RegisterProducer(prod); err != nil {
			t.Fatal(err)
		}
		// Goroutines contending for the connection's lock, as the other
		// users of a busy chat server do, widen the race window.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
						s.c.Pending()
					}
				}
			}()
		}
		go prod.run()
		got, err := drainProducer(t, p.client, len(payload), prod, s.c)
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("received data differs at %d", firstDiff(got, payload))
		}
		t.Logf("pauses %d, resumes %d", prod.pauses.Load(), prod.resumes.Load())
		if n := prod.resumeWithoutPause.Load(); n != 0 {
			t.Errorf("ResumeProducing delivered %d time(s) to a producer that was not paused (overtook its PauseProducing)", n)
		}
		p.client.Close()
		r.check(t, s.wait(t, serveWait))
	})
}

// A producer paused for a non-reading client is stopped when the connection
// is aborted, and after UnregisterProducer a producer is no longer called.
func TestProducerStoppedWhenConnectionEnds(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

	// An unregistered producer hears nothing.
	gone := &countingProducer{}
	if err := s.c.RegisterProducer(gone); err != nil {
		t.Fatal(err)
	}
	s.c.UnregisterProducer()

	prod := newStreamProducer(s.c, randBytes(8<<20, 19), 16<<10)
	if err := s.c.RegisterProducer(prod); err != nil {
		t.Fatalf("RegisterProducer after UnregisterProducer: %v", err)
	}
	go prod.run()
	waitFor(t, 20*time.Second, func() bool { return prod.pauses.Load() > 0 }, "PauseProducing")
	s.c.AbortConnection()
	select {
	case <-prod.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the paused producer was never stopped")
	}
	reason := s.wait(t, serveWait)
	if prod.stops.Load() != 1 {
		t.Errorf("StopProducing called %d times, want 1", prod.stops.Load())
	}
	if n := gone.pauses.Load() + gone.resumes.Load() + gone.stops.Load(); n != 0 {
		t.Errorf("an unregistered producer was called %d times", n)
	}
	if !errors.Is(reason, framework.ErrConnectionAborted) {
		t.Errorf("reason %v, want framework.ErrConnectionAborted", reason)
	}
	r.check(t, reason)
}

// --- 9. Peer half-close ---

func TestPeerHalfCloseGetsFullEcho(t *testing.T) {
	forTransports(t, []string{"tcp", "tcp6", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		payload := randBytes(8<<20, 23)
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := echoRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		wdone := make(chan error, 1)
		go func() {
			werr := <-writeChunks(p.client, payload, nil, 64<<10)
			if werr == nil {
				werr = p.client.(interface{ CloseWrite() error }).CloseWrite()
			}
			wdone <- werr
		}()
		got, err := readAll(p.client, 60*time.Second)
		if werr := <-wdone; werr != nil {
			t.Fatalf("client write/CloseWrite: %v", werr)
		}
		if err != io.EOF {
			t.Errorf("client read ended with %v, want EOF", err)
		}
		if !bytes.Equal(got, payload) {
			t.Errorf("echo: got %d bytes, want %d (first difference at %d)", len(got), len(payload), firstDiff(got, payload))
		}
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// --- 10. Byte counters ---

func TestByteCounters(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		rx := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_received_bytes_total", Help: "x"})
		tx := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_sent_bytes_total", Help: "x"})
		payload := randBytes(3<<20+17, 29)
		const greeting = "hello there\n"
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := echoRecorder()
		r.onMade = func(r *recorder) { r.tr.WriteString(greeting) }
		s := serve(t, p.server, ConnOptions{Received: rx, Sent: tx}, r)
		wdone := writeChunks(p.client, payload, nil, 64<<10)
		got := make([]byte, len(greeting)+len(payload))
		p.client.SetReadDeadline(time.Now().Add(60 * time.Second))
		if _, err := io.ReadFull(p.client, got); err != nil {
			t.Fatal(err)
		}
		if werr := <-wdone; werr != nil {
			t.Fatal(werr)
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		r.check(t, reason)
		if v := testutil.ToFloat64(rx); v != float64(len(payload)) {
			t.Errorf("Received counter %v, want %d", v, len(payload))
		}
		if v := testutil.ToFloat64(tx); v != float64(len(got)) {
			t.Errorf("Sent counter %v, want %d", v, len(got))
		}
	})
}

// --- Regression tests for bugs found while writing these tests ---
//
// Each of these failed against some version of conn.go: the idle timeout
// could not fire while Serve's goroutine flushed; an idle drop during a
// graceful close was reported as a network error; TLS aborts sent
// close_notify; producer notifications could overtake each other, were not
// delivered from inside ResumeProducing, or made Write wait for a producer
// callback on another goroutine; an idle abort during the linger reset the
// socket while reporting a clean close. (TestPauseProducingFromOtherGoroutine
// and TestProducerNeverLeftPaused, above, are of the same kind.)

// The spec's idle_timeout closes "a connection that has received nothing
// for this long". A protocol that wrote more than the socket buffers hold to
// a peer that neither reads nor sends must still time out: here ConnectionMade
// writes 4 MiB, which Serve's goroutine flushes itself after the callback.
func TestIdleTimeoutWhileCallbackFlushBlocks(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	r.onMade = func(r *recorder) { r.tr.Write(randBytes(4<<20, 31)) }
	s := serve(t, p.server, ConnOptions{IdleTimeout: 300 * time.Millisecond, MaxPendingOutput: 16 << 20}, r)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.c.Abort(errTestCleanup)
		<-s.done
		t.Fatalf("idle timeout of 300ms did not fire within 5s: Serve's goroutine is blocked " +
			"writing ConnectionMade's output to a peer that neither reads nor sends")
	}
	if !errors.Is(s.reason, framework.ErrIdleTimeout) {
		t.Errorf("reason %v, want framework.ErrIdleTimeout", s.reason)
	}
	r.check(t, s.reason)
}

// LoseConnection while the flush is stuck on a peer that sends nothing: the
// idle deadline armed before LoseConnection still fires, and the drop must be
// reported as an idle timeout (a drop reason), not as a network error.
func TestIdleTimeoutDuringGracefulCloseReason(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{IdleTimeout: 300 * time.Millisecond, MaxPendingOutput: 16 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	waitFor(t, 5*time.Second, func() bool { return serveWaitingForInput(s.c) }, "Serve's reader to wait for input")
	s.c.Write(randBytes(4<<20, 37))
	s.c.LoseConnection()
	reason := s.wait(t, serveWait)
	if !errors.Is(reason, framework.ErrIdleTimeout) {
		t.Errorf("reason %v (clean %v, lost %v), want framework.ErrIdleTimeout", reason, framework.IsClean(reason), errors.Is(reason, framework.ErrConnectionLost))
	}
	r.check(t, reason)
}

// AbortConnection must not look like an orderly close to the peer. Over TLS
// an orderly close is the close_notify alert: an aborted connection (dropped
// output, a slow consumer, an idle timeout) must end without one, or the
// peer takes a truncated stream for a complete one.
func TestAbortOverTLSIsNotCleanForPeer(t *testing.T) {
	for _, reasonName := range []string{"AbortConnection", "SlowConsumer"} {
		t.Run(reasonName, func(t *testing.T) {
			p := dialPair(t, "tcp", pairOpts{tls: true})
			r := newRecorder()
			r.onData = func(r *recorder, b []byte) {
				if reasonName == "AbortConnection" {
					r.tr.Write(randBytes(1<<20, 41))
					r.abort()
				} else {
					r.tr.Write(randBytes(2<<20, 41)) // above MaxPendingOutput
					r.mu.Lock()
					r.closing = true
					r.mu.Unlock()
				}
			}
			s := serve(t, p.server, ConnOptions{MaxPendingOutput: 1 << 20}, r)
			if _, err := p.client.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			got, err := readAll(p.client, 10*time.Second)
			reason := s.wait(t, serveWait)
			if !errors.Is(reason, framework.ErrConnectionAborted) {
				t.Errorf("reason %v, want an abort", reason)
			}
			if err == io.EOF {
				t.Errorf("the TLS client read %d bytes then a clean EOF (close_notify) although the server aborted (%v)", len(got), reason)
			}
			r.check(t, reason)
		})
	}
}

// heldResume sets up a producer whose first ResumeProducing is held inside
// the producer (on the flusher's goroutine) until release is closed: 1 MiB is
// written (pausing it), the client reads exactly that, the flush completes
// and the resume starts.
func heldResume(t *testing.T) (s *served, p *pair, prod *streamProducer, r *recorder) {
	t.Helper()
	p = dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r = newRecorder()
	s = serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	prod = newStreamProducer(s.c, nil, 0)
	prod.blockResume = make(chan struct{})
	prod.resumeEntered = make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-prod.blockResume:
		default:
			close(prod.blockResume)
		}
	})
	if err := s.c.RegisterProducer(prod); err != nil {
		t.Fatal(err)
	}
	const first = 1 << 20
	s.c.Write(randBytes(first, 43)) // above the high-water mark: paused
	if prod.pauses.Load() != 1 {
		t.Fatalf("pauses %d, want 1", prod.pauses.Load())
	}
	buf := make([]byte, first)
	p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(p.client, buf); err != nil {
		t.Fatal(err)
	}
	select {
	case <-prod.resumeEntered:
	case <-time.After(20 * time.Second):
		t.Fatal("ResumeProducing never called")
	}
	return s, p, prod, r
}

func (s *served) wantsProducerPaused() bool {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.producerPaused
}

// Write is non-blocking and safe from any goroutine, so it must not wait for
// a producer callback running on another goroutine: a ResumeProducing that
// takes an application lock (a chat room's) while another goroutine writes
// under that lock would deadlock.
func TestWriteDoesNotWaitForProducerCallback(t *testing.T) {
	s, p, prod, r := heldResume(t)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		s.c.Write(randBytes(1<<20, 47)) // crosses the high-water mark
	}()
	select {
	case <-wrote:
	case <-time.After(2 * time.Second):
		t.Errorf("Write from another goroutine blocked for 2s while the producer's ResumeProducing " +
			"ran on the flusher's goroutine")
	}
	close(prod.blockResume)
	<-wrote
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}

// A PauseProducing decided while a ResumeProducing is still running on
// another goroutine must leave the producer paused once both calls are over,
// as long as the connection still wants it paused. Delivering the pause in
// the middle of the resume and then letting the resume's effect win would
// leave the producer running against a backlog nothing will drain.
func TestProducerStatePausedAfterOverlappingResume(t *testing.T) {
	s, p, prod, r := heldResume(t)
	// More than the socket buffers hold, and the client reads no more: the
	// connection wants the producer paused for good.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		s.c.Write(randBytes(1<<20, 47))
	}()
	waitFor(t, 5*time.Second, s.wantsProducerPaused, "the connection to want the producer paused")
	close(prod.blockResume)
	<-wrote
	deadline := time.Now().Add(2 * time.Second)
	for !(prod.isPaused() && prod.inCall.Load() == 0) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !prod.isPaused() && s.wantsProducerPaused() {
		t.Errorf("the producer was left running while the connection wants it paused " +
			"(the resume's effect overtook a later pause)")
	}
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}

// resumeWriter is a push producer in the style Twisted allows: its
// ResumeProducing writes in a loop until it is paused, which relies on
// PauseProducing being delivered from inside its own Write once the backlog
// passes the high-water mark (Twisted calls pauseProducing synchronously,
// re-entrantly, from write()).
type resumeWriter struct {
	tr    framework.Transport
	chunk []byte
	limit int64

	paused, inResume              atomic.Bool
	pauses, resumes, stops        atomic.Int32
	pausesInResume, resumesActive atomic.Int32
	written                       atomic.Int64
}

func (p *resumeWriter) PauseProducing() {
	p.pauses.Add(1)
	if p.inResume.Load() {
		p.pausesInResume.Add(1)
	}
	p.paused.Store(true)
}

func (p *resumeWriter) ResumeProducing() {
	p.resumesActive.Add(1)
	defer p.resumesActive.Add(-1)
	p.resumes.Add(1)
	p.paused.Store(false)
	p.inResume.Store(true)
	p.produce()
	p.inResume.Store(false)
}

func (p *resumeWriter) StopProducing() {
	p.stops.Add(1)
	p.paused.Store(true)
}

func (p *resumeWriter) produce() {
	for !p.paused.Load() && p.written.Load() < p.limit && !p.tr.Disconnecting() {
		p.tr.Write(p.chunk)
		p.written.Add(int64(len(p.chunk)))
	}
}

func TestProducerPausedFromInsideResume(t *testing.T) {
	const chunk = 16 << 10
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{MaxPendingOutput: 4 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	prod := &resumeWriter{tr: s.c, chunk: randBytes(chunk, 59), limit: 256 << 20}
	if err := s.c.RegisterProducer(prod); err != nil {
		t.Fatal(err)
	}
	// Start producing; the first pause comes from inside our own Write.
	prod.produce()
	if !prod.paused.Load() && !s.finished() {
		t.Fatalf("produce returned without a pause (wrote %d)", prod.written.Load())
	}
	// Let everything written so far drain, so the flusher resumes the
	// producer; then read no more: ResumeProducing writes until the backlog
	// passes the high-water mark and must be paused from inside its Write.
	first := prod.written.Load()
	buf := make([]byte, first)
	p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(p.client, buf); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool {
		return s.finished() || (prod.resumes.Load() > 0 && prod.resumesActive.Load() == 0 && prod.paused.Load())
	}, "the producer to be resumed and paused again, or the connection to end")
	if s.finished() {
		t.Fatalf("connection ended with %v after the producer wrote %d bytes inside ResumeProducing "+
			"(pauses %d, of them inside ResumeProducing %d): PauseProducing was not delivered while the "+
			"producer's ResumeProducing was running", s.reason, prod.written.Load()-first,
			prod.pauses.Load(), prod.pausesInResume.Load())
	}
	if prod.pausesInResume.Load() == 0 {
		t.Errorf("no PauseProducing inside ResumeProducing (pauses %d, resumes %d)", prod.pauses.Load(), prod.resumes.Load())
	}
	if n := s.c.Pending(); n > framework.HighWaterMark+chunk {
		t.Errorf("Pending() = %d with the producer paused, want at most %d", n, framework.HighWaterMark+chunk)
	}
	p.client.Close()
	reason := s.wait(t, serveWait)
	if prod.stops.Load() != 1 {
		t.Errorf("StopProducing called %d times, want 1", prod.stops.Load())
	}
	r.check(t, reason)
}

// The reason handed to ConnectionLost must agree with what the peer saw. A
// LoseConnection whose output sits in the kernel (sent, not yet read) while
// the server lingers for the peer's EOF is a clean close only if the peer
// then gets every byte and the EOF; an idle timer that resets the socket
// during that linger drops the unread tail, so it must not report "clean".
func TestIdleTimerDuringLingerReasonMatchesPeer(t *testing.T) {
	const size = 2 << 20
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 4 << 20})
	payload := randBytes(size, 61)
	r := newRecorder()
	r.onMade = func(r *recorder) {
		r.tr.Write(payload) // fits in the server's send buffer
		r.lose()
	}
	s := serve(t, p.server, ConnOptions{IdleTimeout: 300 * time.Millisecond, MaxPendingOutput: 16 << 20}, r)
	// The client reads only once the server has decided how it ended.
	reason := s.wait(t, serveWait)
	got, err := readAll(p.client, 30*time.Second)
	switch {
	case framework.IsClean(reason):
		if len(got) != size || err != io.EOF || !bytes.Equal(got, payload) {
			t.Errorf("ConnectionLost said clean (%v), but the client read %d of %d bytes, then %v",
				reason, len(got), size, err)
		}
	case errors.Is(reason, framework.ErrIdleTimeout):
		// Dropped as idle, and said so.
	default:
		t.Errorf("reason %v, want clean or framework.ErrIdleTimeout", reason)
	}
	r.check(t, reason)
}
