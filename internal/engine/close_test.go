// Tests of closing: LoseConnection's flush, aborts, the idle timeout, the
// peer's end of stream, and the reasons ConnectionLost is given.

package engine

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

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
