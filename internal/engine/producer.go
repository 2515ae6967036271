// This file owns the registered producer: RegisterProducer and
// UnregisterProducer, and pausing, resuming and stopping it as the
// connection's output backs up and drains.

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
// panic ends only this connection: the producer runs on whichever goroutine
// wrote past the high-water mark or flushed below it (another connection's
// reader, a flusher), which must not pay for it.
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

// notifyProducer tells the producer the state the connection wants, until
// what it was told matches, one call at a time under prodMu. It never waits
// for prodMu (Write must not wait for producer code running elsewhere): a
// caller that finds a notifier at work leaves resumes to it (prodDirty makes
// sure it looks again), but delivers a pause at once, as Twisted does from
// write() (the notifier may be this goroutine, inside a ResumeProducing that
// writes in a loop until paused). So that no resume is overtaken by such a
// pause, the notifier sends no resume while one is on its way
// (pausesInFlight), and the pauser, once its pause has landed, has the
// latest wish re-sent: it becomes the notifier, or leaves prodDirty to the
// one at work. Must be called without mu held.
func (c *Conn) notifyProducer() {
	for {
		if !c.prodMu.TryLock() {
			c.mu.Lock()
			p := c.producer
			pause := p != nil && c.producerPaused && !c.producerNotified
			if pause {
				c.pauseOverlapped = true
				c.pausesInFlight++
			}
			c.mu.Unlock()
			if !pause {
				return
			}
			c.callProducer(p, prodPause)
			// No resume is sent while this pause is on its way (it could
			// land after the resume and have the last word): now that it
			// has landed, send what is wanted, or leave it to the notifier
			// at work (it sees prodDirty once done).
			c.mu.Lock()
			c.pausesInFlight--
			c.prodDirty = true
			c.mu.Unlock()
			if !c.prodMu.TryLock() {
				return
			}
		}
		for {
			c.mu.Lock()
			if c.pauseOverlapped {
				c.pauseOverlapped = false
				c.producerNotified = !c.producerPaused // re-send the wish
			}
			c.prodDirty = false
			p, want := c.producer, c.producerPaused
			act := p != nil && want != c.producerNotified && (want || c.pausesInFlight == 0)
			if act {
				c.producerNotified = want
			}
			c.mu.Unlock()
			if !act {
				break
			}
			if want {
				c.callProducer(p, prodPause)
			} else {
				c.callProducer(p, prodResume)
			}
		}
		c.prodMu.Unlock()
		c.mu.Lock()
		again := c.prodDirty
		c.mu.Unlock()
		if !again {
			return
		}
	}
}

// RegisterProducer implements framework.Transport.
func (c *Conn) RegisterProducer(p framework.Producer) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		p.StopProducing()
		return nil
	}
	if c.producer != nil {
		c.mu.Unlock()
		return errors.New("framework: a producer is already registered")
	}
	c.producer, c.producerPaused, c.producerNotified = p, false, false
	c.mu.Unlock()
	return nil
}

// UnregisterProducer implements framework.Transport.
func (c *Conn) UnregisterProducer() {
	c.mu.Lock()
	c.producer, c.producerPaused, c.producerNotified = nil, false, false
	c.mu.Unlock()
}
