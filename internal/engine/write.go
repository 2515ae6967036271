// This file owns writing and flushing: Write queues output from any
// goroutine, enforces the output limits, and makes sure someone flushes it
// (the reader after a callback, or a short-lived flusher).

package engine

import (
	"sync/atomic"

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

// afterCallbackNoWait is afterCallback for the poller's loop, which must
// not wait for one peer: the callback's output goes out with one write
// that does not wait, and what the socket does not take goes to a
// background flusher. It reports whether everything was written.
func (c *Conn) afterCallbackNoWait(lio *loopIO) (flushed bool) {
	c.settleProducer() // before waiting for mu: see settleProducer
	c.mu.Lock()
	c.endTurnLocked()
	c.inCallback = false
	flushed = true
	if c.pendingLen() > 0 && !c.flushing && !c.closed {
		c.flushing = true
		if c.flushNowLocked(lio) {
			c.flushDoneLocked()
		} else {
			flushed = false
			go c.flushLoop()
		}
	} else if c.disconnecting && !c.flushing {
		c.shutdownWriteLocked()
	} else if c.halfClosing && !c.flushing && c.pendingLen() == 0 {
		c.halfShutLocked()
	}
	c.mu.Unlock()
	return flushed
}

// flushNowLocked is flushOnceLocked with one write that does not wait:
// what the socket does not take goes back to the front of the queue. It
// reports whether nothing is left to write, counting what other
// goroutines queued during the write (they left it to this flush).
func (c *Conn) flushNowLocked(lio *loopIO) bool {
	box := c.outBox
	out := *box
	c.outBox = nil
	c.inflight = len(out)
	c.mu.Unlock()
	if h := testHookFlushNow.Load(); h != nil {
		(*h)(c)
	}
	lio.out, lio.wrote, lio.writeErr = out, 0, nil
	if cerr := c.raw.Write(lio.writeFn); cerr != nil {
		lio.writeErr = cerr
	}
	n, err := lio.wrote, lio.writeErr
	lio.out = nil
	c.countSent(n)
	c.mu.Lock()
	c.inflight = 0
	if err == nil && n < len(out) && !c.closed {
		rest := out[:copy(out, out[n:])]
		if c.outBox != nil { // queued during the write: after the rest
			rest = append(rest, *c.outBox...)
			if cap(*c.outBox) <= maxPooledOutput {
				*c.outBox = (*c.outBox)[:0]
				outBuffers.Put(c.outBox)
			}
		}
		*box = rest
		c.outBox = box
		c.wakeLocked()
		return false
	}
	c.writtenLocked(box, out, err)
	return c.pendingLen() == 0 || c.closed
}

// testHookFlushNow, when set by a test, runs as the poller's loop is about
// to write a callback's output (mu released).
var testHookFlushNow atomic.Pointer[func(c *Conn)]

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
	c.countSent(n)
	c.mu.Lock()
	c.inflight = 0
	c.writtenLocked(box, out, err)
}

// countSent records n bytes handed to the socket.
func (c *Conn) countSent(n int) {
	c.bytesOut.Add(int64(n))
	if n > 0 && c.opts.Sent != nil {
		c.opts.Sent.Add(float64(n))
	}
}

// writtenLocked ends a flush's write of out, box's buffer, taken whole
// (or failed): the buffer goes back to its pool, a failed write ends the
// connection, and whoever waits for the output to drain is woken.
func (c *Conn) writtenLocked(box *[]byte, out []byte, err error) {
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
	c.reserveLocked()
	*c.outBox = append(*c.outBox, b...)
	c.wroteLocked()
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

// producerSlack is the least output a connection with a registered
// producer may hold before it is dropped as a slow consumer.
const producerSlack = 4 * framework.HighWaterMark

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
	// A registered producer is paused at the high-water mark, but its
	// pause lands a write or two late (a producer writing from its own
	// goroutine has one write under way; a callback holding the turn
	// delays the call): with max_pending_output as low as the mark, a
	// producer that obeys would be dropped. Its limit is at least
	// producerSlack, still a bound.
	limit := c.maxPendingOutput()
	if c.prod.Load() != nil {
		limit = max(limit, producerSlack)
	}
	if backlog > limit {
		c.abortLocked(framework.ErrSlowConsumer)
		c.mu.Unlock()
		return
	}
	if !c.flushing && !c.inCallback {
		c.flushing = true
		flushersStarted.Add(1)
		go c.flushLoop()
	}
	if c.prod.Load() != nil && backlog > framework.HighWaterMark {
		if !c.producerPaused.Load() {
			c.producerPaused.Store(true)
			c.tellProducerLocked()
		} else if c.cbOwner == curG() {
			// Another goroutine's write decided the pause while this
			// turn ran: this writer is the turn, writing on until paused,
			// and is told now (tellProducerLocked does nothing if it was
			// told already), not once its call returns, which a producer
			// writing until paused never does before the slow consumer
			// limit.
			c.tellProducerLocked()
		}
	}
	c.mu.Unlock()
}
