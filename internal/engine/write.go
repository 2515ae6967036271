// This file owns writing and flushing: Write queues output from any
// goroutine, enforces the output limits, and makes sure someone flushes it
// (the reader after a callback, or a short-lived flusher).

package engine

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/superd-dev/superd/framework"
)

// afterCallback ends the callback's turn (telling the producer what was
// decided meanwhile), flushes what the callback wrote (one write, in this
// goroutine), hands any remainder to a background flusher, and finishes a
// graceful close that the callback asked for.
func (c *Conn) afterCallback() {
	c.settleProducer() // before waiting for mu: see settleProducer
	c.mu.Lock()
	c.endTurnLocked()
	c.inCallback = false
	if c.pendingLen() > 0 && !c.flushing && !c.closed {
		c.flushing = true
		c.flushOnceLocked()
		if c.pendingLen() > 0 && !c.closed {
			go c.flushLoop()
		} else {
			c.flushDoneLocked()
		}
	} else if c.disconnecting && !c.flushing {
		c.shutdownWriteLocked()
	} else if c.halfClosing && !c.flushing && c.pendingLen() == 0 {
		c.halfShutLocked()
	}
	c.mu.Unlock()
}

// flushLoop flushes until nothing is pending, then finishes a pending
// graceful close. The caller has set c.flushing.
func (c *Conn) flushLoop() {
	c.mu.Lock()
	for c.pendingLen() > 0 && !c.closed {
		c.flushOnceLocked()
	}
	c.flushDoneLocked()
	c.mu.Unlock()
}

// flushOnceLocked writes everything pending in one call, with mu released
// during the write.
func (c *Conn) flushOnceLocked() {
	box := c.outBox
	out := *box
	c.outBox = nil
	c.inflight = len(out)
	c.mu.Unlock()
	n, err := c.nc.Write(out)
	c.bytesOut.Add(int64(n))
	if n > 0 && c.opts.Sent != nil {
		c.opts.Sent.Add(float64(n))
	}
	c.mu.Lock()
	c.inflight = 0
	if cap(out) <= maxPooledOutput {
		*box = out[:0]
		outBuffers.Put(box)
	}
	if err != nil && !c.closed {
		c.setReason(&lostError{err})
		c.closeLocked(nil)
	}
	c.wakeLocked()
}

// flushDoneLocked releases the write side after a flush: resumes a producer
// paused for the backlog, and completes a graceful close.
func (c *Conn) flushDoneLocked() {
	c.flushing = false
	if c.prod.Load() != nil && c.producerPaused.Load() && !c.closed {
		c.producerPaused.Store(false)
		c.tellProducerLocked()
		if c.flushing {
			return // the producer wrote; that flush takes over from here
		}
	}
	if c.disconnecting && !c.inCallback && c.pendingLen() == 0 {
		c.shutdownWriteLocked()
	} else if c.halfClosing && !c.inCallback && c.pendingLen() == 0 {
		c.halfShutLocked()
	}
	c.wakeLocked()
}

// Write implements framework.Transport.
func (c *Conn) Write(b []byte) {
	if len(b) == 0 {
		return
	}
	c.mu.Lock()
	if c.writeShut || c.halfShut {
		c.mu.Unlock()
		return
	}
	if len(b) >= writeThroughMin && c.mayWriteThroughLocked() {
		c.writeThroughLocked(b)
		return
	}
	c.reserveLocked()
	*c.outBox = append(*c.outBox, b...)
	c.wroteLocked()
}

// writeThroughMin: a write at least this long, made by a callback with
// nothing else queued or in flight, goes to the socket from the caller's
// buffer (writeThroughLocked) instead of being copied into the queue. A
// shorter one is queued, to coalesce with the callback's other writes.
const writeThroughMin = 8 << 10

// mayWriteThroughLocked reports whether a write may go to the socket at
// once: the caller is the goroutine whose callback runs (Write is then
// followed by afterCallback, which flushes whatever is left), the socket is
// read through its descriptor (not TLS), and nothing is queued or being
// written, so the bytes cannot overtake others.
func (c *Conn) mayWriteThroughLocked() bool {
	return c.raw != nil && c.inCallback && !c.flushing && c.outBox == nil && !c.closed &&
		c.cbOwner == curG()
}

// writeThroughLocked writes b with one system call that does not wait and
// queues what the socket did not take, ahead of anything other goroutines
// queued meanwhile; then as wroteLocked (which unlocks mu). The write side
// is ours during the call (flushing), as for a flush.
func (c *Conn) writeThroughLocked(b []byte) {
	c.flushing = true
	c.inflight = len(b)
	c.mu.Unlock()
	if testHookWriteThrough != nil {
		testHookWriteThrough()
	}
	w := writers.Get().(*writer)
	w.b, w.n, w.err = b, 0, nil
	if err := c.raw.Write(w.fn); err != nil && w.err == nil {
		w.err = err
	}
	n, err := w.n, w.err
	w.b = nil
	writers.Put(w)
	c.bytesOut.Add(int64(n))
	if n > 0 && c.opts.Sent != nil {
		c.opts.Sent.Add(float64(n))
	}
	c.mu.Lock()
	c.inflight = 0
	c.flushing = false
	c.wakeLocked()
	if err != nil {
		if !c.closed {
			c.setReason(&lostError{err})
			c.closeLocked(nil)
		}
		c.mu.Unlock()
		return
	}
	if rest := b[n:]; len(rest) > 0 && !c.closed {
		others := c.outBox
		c.outBox = nil
		c.reserveLocked()
		*c.outBox = append(*c.outBox, rest...)
		if others != nil {
			*c.outBox = append(*c.outBox, *others...)
			if cap(*others) <= maxPooledOutput {
				*others = (*others)[:0]
				outBuffers.Put(others)
			}
		}
	}
	c.wroteLocked()
}

// testHookWriteThrough, when set by a test, runs as a write-through
// begins, with mu released.
var testHookWriteThrough func()

// writer is the scratch of one write-through: fn is w.write, made once
// per writer, so that a write allocates nothing.
type writer struct {
	fn  func(fd uintptr) bool
	b   []byte
	n   int
	err error
}

var writers = sync.Pool{New: func() any {
	w := &writer{}
	w.fn = w.write
	return w
}}

// write writes what the socket takes now, without waiting for room.
func (w *writer) write(fd uintptr) bool {
	for w.n < len(w.b) {
		n, err := syscall.Write(int(fd), w.b[w.n:])
		if n > 0 {
			w.n += n
		}
		switch err {
		case nil, syscall.EINTR:
		case syscall.EAGAIN:
			return true // the socket is full: the rest is queued
		default:
			w.err = os.NewSyscallError("write", err)
			return true
		}
	}
	return true
}

// WriteString implements framework.Transport.
func (c *Conn) WriteString(s string) {
	if len(s) == 0 {
		return
	}
	c.mu.Lock()
	if c.writeShut || c.halfShut {
		c.mu.Unlock()
		return
	}
	c.reserveLocked()
	*c.outBox = append(*c.outBox, s...)
	c.wroteLocked()
}

// flushersStarted counts the flushers started for writes made outside a
// connection's own callbacks (a chat line to the other users): see
// serveInline.
var flushersStarted atomic.Uint64

// reserveLocked gives the queue a pooled buffer when it has none.
func (c *Conn) reserveLocked() {
	if c.outBox == nil {
		c.outBox = outBuffers.Get().(*[]byte)
		*c.outBox = (*c.outBox)[:0]
	}
}

// wroteLocked enforces the output limits after a write, makes sure a flush
// will happen, and unlocks mu.
func (c *Conn) wroteLocked() {
	backlog := c.pendingLen() + c.inflight
	if backlog > c.maxPendingOutput() {
		c.abortLocked(framework.ErrSlowConsumer)
		c.mu.Unlock()
		return
	}
	if !c.flushing && !c.inCallback {
		c.flushing = true
		flushersStarted.Add(1)
		go c.flushLoop()
	}
	if c.prod.Load() != nil && !c.producerPaused.Load() && backlog > framework.HighWaterMark {
		c.producerPaused.Store(true)
		c.tellProducerLocked()
	}
	c.mu.Unlock()
}
