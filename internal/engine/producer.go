// This file owns the registered producer: RegisterProducer and
// UnregisterProducer, and pausing, resuming and stopping it as the
// connection's output backs up and drains, one call at a time with the
// protocol's callbacks.

package engine

import (
	"errors"

	"github.com/superd-dev/superd/framework"
)

// The producer callbacks, for callProducer.
const (
	prodPause = iota
	prodResume
	prodStop
)

// callProducer runs one producer callback. Like a protocol callback, a
// panic ends only this connection: the producer may run on whichever
// goroutine wrote past the high-water mark or flushed below it (another
// connection's reader, a flusher), which must not pay for it.
func (c *Conn) callProducer(p framework.Producer, which int) {
	defer func() {
		if v := recover(); v != nil {
			c.panicked("producer", v)
		}
	}()
	switch which {
	case prodPause:
		p.PauseProducing()
	case prodResume:
		p.ResumeProducing()
	case prodStop:
		p.StopProducing()
	}
}

// tellProducerLocked has the producer told what the connection now wants
// of it (producerPaused), without overlapping any callback of the
// connection and without waiting for one:
//
//   - no callback is running: the caller takes the turn and tells it;
//   - the caller is the goroutine running a callback (a protocol or a
//     producer writing past the high-water mark): a pause is delivered at
//     once, inside the write, as Twisted's write() calls pauseProducing,
//     so a ResumeProducing that writes until paused stops at the mark; a
//     resume never is (it waits for the callback to return), so producer
//     calls nest one deep at most and never recurse;
//   - another goroutine is running one (this is a write from elsewhere,
//     or a flusher that drained meanwhile): that goroutine tells it before
//     its turn ends (endTurnLocked).
//
// mu is held, and released while the producer runs.
func (c *Conn) tellProducerLocked() {
	switch c.cbOwner {
	case 0:
		c.cbOwner = curG()
		c.endTurnLocked()
	case curG():
		if r := c.prod.Load(); r != nil && c.producerPaused.Load() && !r.notified && !c.closed {
			r.notified = true
			c.mu.Unlock()
			c.callProducer(r.p, prodPause)
			c.mu.Lock()
		}
	}
}

// registered is one registration of a producer. notified is what the
// producer was last told (true: paused); only the goroutine whose turn it
// is reads or writes it. A new registration starts afresh.
type registered struct {
	p        framework.Producer
	notified bool
}

// settleProducer tells the producer what the connection wants until what
// it was last told matches: each call may change the wish (a
// ResumeProducing writes past the mark, a flusher drains meanwhile), so it
// looks again after each. The caller has the turn and does not hold mu:
// the wish and the registration are read atomically, so a pause that a
// producer writing from its own goroutine needs reaches it as soon as the
// call under way returns, while that goroutine keeps mu busy.
func (c *Conn) settleProducer() {
	for {
		r := c.prod.Load()
		if r == nil {
			return
		}
		want := c.producerPaused.Load()
		if want == r.notified {
			return
		}
		r.notified = want
		if want {
			c.callProducer(r.p, prodPause)
		} else {
			c.callProducer(r.p, prodResume)
		}
	}
}

// settleProducerLocked is settleProducer for a caller that holds mu (and
// the turn): it returns with mu held and the producer told what the
// connection wanted as of then. A connection that is closed no longer
// pauses or resumes its producer: finish stops it.
func (c *Conn) settleProducerLocked() {
	for {
		r := c.prod.Load()
		if r == nil || c.closed || c.producerPaused.Load() == r.notified {
			return
		}
		c.mu.Unlock()
		c.settleProducer()
		c.mu.Lock()
	}
}

// stopProducerLocked stops and forgets the registered producer, if any. The
// caller (finish) has the turn; mu is held, and released while the
// producer runs.
func (c *Conn) stopProducerLocked() {
	for r := c.prod.Load(); r != nil; r = c.prod.Load() {
		c.prod.Store(nil)
		c.mu.Unlock()
		c.callProducer(r.p, prodStop)
		c.mu.Lock()
	}
}

// RegisterProducer implements framework.Transport. On a connection that is
// already closed, p is stopped: by finish, in its turn, if ConnectionLost
// has not returned yet, else at once (no callback runs any more).
func (c *Conn) RegisterProducer(p framework.Producer) error {
	c.mu.Lock()
	if c.prod.Load() != nil {
		c.mu.Unlock()
		return errors.New("framework: a producer is already registered")
	}
	if c.lost {
		c.mu.Unlock()
		c.callProducer(p, prodStop)
		return nil
	}
	c.prod.Store(&registered{p: p})
	c.producerPaused.Store(false)
	c.mu.Unlock()
	return nil
}

// UnregisterProducer implements framework.Transport.
func (c *Conn) UnregisterProducer() {
	c.mu.Lock()
	c.prod.Store(nil)
	c.producerPaused.Store(false)
	c.mu.Unlock()
}
