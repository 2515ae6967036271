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

// replyBlockedInFlush serves a recorder over network whose second chunk
// ("two", delivered inside raw.Read) is answered with far more than the
// socket buffers hold, to a client that does not read: the reader's flush
// of that reply blocks.
func replyBlockedInFlush(t *testing.T, network string, opts ConnOptions) (*pair, *recorder, *served) {
	t.Helper()
	p := dialPair(t, network, pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	chunks := 0
	r.onData = func(r *recorder, b []byte) {
		chunks++
		if chunks == 2 {
			r.tr.Write(randBytes(8<<20, 7))
		}
	}
	opts.MaxPendingOutput = 64 << 20
	s := serve(t, p.server, opts, r)
	p.client.Write([]byte("one"))
	waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 3 }, "the first chunk")
	p.client.Write([]byte("two"))
	return p, r, s
}

// endsWithin fails the test if what (an abort, the idle timeout) has not
// ended s within d; the client's close then fails the blocked write.
func endsWithin(t *testing.T, p *pair, s *served, d time.Duration, what string) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(d):
		p.client.Close()
		<-s.done
		t.Fatalf("%s did not end the connection while its reply was blocked in the reader's flush", what)
	}
}

// TestAbortEndsInlineFlush: an abort from another goroutine (the idle
// timeout, a shutdown's, a slow consumer's) while the reader, inside
// raw.Read, is blocked flushing the reply of a DataReceived to a peer that
// does not read ends the connection at once, as it did before the reader
// served input inside raw.Read: the close must not wait for the peer.
func TestAbortEndsInlineFlush(t *testing.T) {
	goroutineReaders(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		p, r, s := replyBlockedInFlush(t, network, ConnOptions{})
		waitFor(t, 5*time.Second, inlineFlushBlocked, "the reader to block flushing inside raw.Read")
		errStop := errors.New("stopped elsewhere")
		s.c.Abort(errStop)
		endsWithin(t, p, s, 5*time.Second, "the abort")
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
	goroutineReaders(t)
	forTransports(t, []string{"tcp", "bare-unix"}, func(t *testing.T, network string, _ bool) {
		p, r, s := replyBlockedInFlush(t, network, ConnOptions{})
		waitFor(t, 5*time.Second, inlineFlushBlocked, "the reader to block flushing inside raw.Read")
		s.c.Drain()
		holds(t, 100*time.Millisecond, func() bool { return !s.finished() }, "the drain ended the connection before its output was read")
		s.c.Abort(framework.ErrShutdownTimeout)
		endsWithin(t, p, s, 5*time.Second, "the abort")
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
		p, r, s := replyBlockedInFlush(t, network, ConnOptions{IdleTimeout: time.Second})
		endsWithin(t, p, s, 10*time.Second, "the idle timeout")
		if !errors.Is(s.reason, framework.ErrIdleTimeout) {
			t.Errorf("reason %v, want framework.ErrIdleTimeout", s.reason)
		}
		r.check(t, s.reason)
	})
}
