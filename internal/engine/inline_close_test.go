// Tests of closing a connection whose reader serves input inside raw.Read
// (serveInline) and is blocked flushing a reply.

package engine

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// inlineFlushBlocked reports whether the reader is blocked writing a reply
// inside raw.Read: the flush after a DataReceived served inline waits for
// room in the send buffer.
func inlineFlushBlocked() bool {
	return someGoroutine(func(stack string) bool {
		return strings.Contains(stack, "[IO wait") && strings.Contains(stack, "flushOnceLocked") &&
			strings.Contains(stack, "serveInline")
	})
}

// TestAbortEndsInlineFlush: an abort from another goroutine (the idle
// timeout, a shutdown's, a slow consumer's) while the reader, inside
// raw.Read, is blocked flushing the reply of a DataReceived to a peer that
// does not read ends the connection at once, as it did before the reader
// served input inside raw.Read: the close must not wait for the peer.
func TestAbortEndsInlineFlush(t *testing.T) {
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
		r := newRecorder()
		chunks := 0
		r.onData = func(r *recorder, b []byte) {
			chunks++
			if chunks == 2 {
				r.tr.Write(randBytes(8<<20, 7)) // far more than the socket buffers hold
			}
		}
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 64 << 20}, r)
		p.client.Write([]byte("one"))
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 3 }, "the first chunk")
		p.client.Write([]byte("two"))
		waitFor(t, 5*time.Second, inlineFlushBlocked, "the reader to block flushing inside raw.Read")
		errStop := errors.New("stopped elsewhere")
		s.c.Abort(errStop)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			p.client.Close() // the blocked write then fails
			<-s.done
			t.Fatal("the abort did not end the connection while its reply was blocked in the reader's flush")
		}
		if !errors.Is(s.reason, errStop) {
			t.Errorf("reason %v, want %v", s.reason, errStop)
		}
		r.check(t, s.reason)
	})
}

// TestShutdownAbortEndsInlineFlush: a shutdown drains a connection whose
// reply is blocked in the reader's flush inside raw.Read, then, the peer
// still not reading, aborts it (ErrShutdownTimeout): that ends it.
func TestShutdownAbortEndsInlineFlush(t *testing.T) {
	forTransports(t, []string{"tcp", "bare-unix"}, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
		r := newRecorder()
		chunks := 0
		r.onData = func(r *recorder, b []byte) {
			chunks++
			if chunks == 2 {
				r.tr.Write(randBytes(8<<20, 7))
			}
		}
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 64 << 20}, r)
		p.client.Write([]byte("one"))
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 3 }, "the first chunk")
		p.client.Write([]byte("two"))
		waitFor(t, 5*time.Second, inlineFlushBlocked, "the reader to block flushing inside raw.Read")
		s.c.Drain()
		holds(t, 100*time.Millisecond, func() bool { return !s.finished() }, "the drain ended the connection before its output was read")
		s.c.Abort(framework.ErrShutdownTimeout)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			p.client.Close() // the blocked write then fails
			<-s.done
			t.Fatal("the abort did not end the connection while its reply was blocked in the reader's flush")
		}
		if !errors.Is(s.reason, framework.ErrShutdownTimeout) {
			t.Errorf("reason %v, want framework.ErrShutdownTimeout", s.reason)
		}
		r.check(t, s.reason)
	})
}

// TestIdleTimeoutEndsInlineFlush: the idle timeout of a connection whose
// reply is blocked in the reader's flush (inside raw.Read) ends it.
func TestIdleTimeoutEndsInlineFlush(t *testing.T) {
	forTransports(t, []string{"tcp", "bare"}, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
		r := newRecorder()
		chunks := 0
		r.onData = func(r *recorder, b []byte) {
			chunks++
			if chunks == 2 {
				r.tr.Write(randBytes(8<<20, 7))
			}
		}
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 64 << 20, IdleTimeout: time.Second}, r)
		p.client.Write([]byte("one"))
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 3 }, "the first chunk")
		p.client.Write([]byte("two"))
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			p.client.Close()
			<-s.done
			t.Fatal("the idle timeout did not end the connection while its reply was blocked in the reader's flush")
		}
		if !errors.Is(s.reason, framework.ErrIdleTimeout) {
			t.Errorf("reason %v, want framework.ErrIdleTimeout", s.reason)
		}
		r.check(t, s.reason)
	})
}
