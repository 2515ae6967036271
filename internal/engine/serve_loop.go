// This file owns serving in the poller's loop: where superd runs on one
// CPU, the loop that holds the parked connections reads a ready one
// itself, runs DataReceived, writes the reply without waiting and parks
// the connection again, as an event loop does (gnet, Twisted's reactor).
// Whatever must wait (a pause, an end of stream, a close or drain, a reply
// the socket does not take at once, a stream's bulk) goes to the
// connection's goroutine, which carries on as read.go says.
//
// Why one CPU only: the loop's gain is that, busy, it waits blocked in
// epoll_wait and is woken by the kernel directly, without a round through
// the runtime's poller and scheduler per message. On one CPU that is
// +30-50% on a one-connection echo; across CPUs each message then wakes a
// thread asleep on another (virtual) CPU, and the same wait costs two
// thirds of that connection's rate, while 64 connections gain nothing
// (BENCHMARKS.md, "Event loops"). So with more than one P the poller only
// wakes goroutines, as it always did.

package engine

import (
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/superd-dev/superd/framework"
)

// loopServes: the poller's loop serves parked connections itself
// (serveParked) instead of starting a goroutine for each wake-up. Set
// when the poller starts, to GOMAXPROCS == 1; tests set it either way.
var loopServes atomic.Bool

// serveParked is called by the poller's loop when a parked connection's
// descriptor is ready (hup: more than input, the peer's end or an error).
// It reads once into buf (the loop's) and, if nothing but the input asks
// anything of the connection (serveLoopLocked), runs DataReceived, writes
// the reply with one write that does not wait, and parks the connection
// again. Everything else goes to a goroutine running the read loop, with
// what was read, if anything.
func (c *Conn) serveParked(buf []byte, lr *reader, hup bool) {
	c.mu.Lock()
	if !c.parked {
		c.mu.Unlock()
		return // a stale event: a goroutine serves it now
	}
	c.parked = false
	if hup || !c.serveLoopLocked() {
		c.mu.Unlock()
		go c.loop()
		return
	}
	// The loop is the reader now: a close meanwhile is left to it (see
	// closeLocked), so the descriptor stays this connection's.
	c.inRead = true
	c.mu.Unlock()
	if h := testHookLoopRead.Load(); h != nil {
		(*h)(c)
	}
	n, left, err := 0, -1, error(nil)
	if cerr := c.raw.Control(func(fd uintptr) {
		for {
			if c.inq {
				n, left, err = lr.recvInq(int(fd), buf)
			} else {
				n, err = syscall.Read(int(fd), buf)
			}
			if err != syscall.EINTR {
				return
			}
		}
	}); cerr != nil {
		err = cerr
	}
	switch {
	case err == syscall.EAGAIN: // an event for input already read
		c.leaveRead()
		c.repark(false)
		return
	case err != nil:
		c.leaveRead()
		go c.loopFrom(nil, 0, os.NewSyscallError("read", err), false)
		return
	case n <= 0:
		c.leaveRead()
		go c.loopFrom(nil, 0, io.EOF, false)
		return
	}
	c.mu.Lock()
	if !c.serveLoopLocked() {
		// Paused or draining since: the read loop delivers it when it may.
		c.mu.Unlock()
		c.leaveRead()
		b := readBuffers.Get().(*[]byte)
		go c.loopFrom(b, copy(*b, buf[:n]), nil, false)
		return
	}
	c.serving, c.inCallback, c.cbOwner = true, true, curG()
	c.mu.Unlock()
	c.noteReceived(n)
	perr := c.call(c.p, callData, buf[:n], nil)
	flushed := c.afterCallbackNoWait()
	c.mu.Lock()
	c.serving = false
	if perr == nil && c.serveLoopLocked() && (n == len(buf) || !flushed) {
		// A stream (a read that filled the buffer, or a reply the socket
		// did not take at once): its goroutine serves it better, waiting
		// in the runtime's poller and parking once quiet. The loop lets
		// go of its descriptor, now, while it is still this connection's.
		thePoller.forget(c, c.fd)
		c.mu.Unlock()
		c.leaveRead()
		go c.loopFrom(nil, 0, nil, true)
		return
	}
	c.mu.Unlock()
	c.leaveRead()
	if h := testHookLoopLeft.Load(); h != nil {
		(*h)(c)
	}
	// Parked again without a system call when the read left the socket
	// empty: what comes next is a new edge, and an event.
	c.repark(left != 0)
}

// Test hooks, set by a test before the loop serves: testHookLoopRead runs
// just before the loop reads a connection it serves, testHookLoopLeft
// once it has delivered the input and let go of the descriptor.
// (Atomic: the loop's goroutine outlives the tests that set them.)
var testHookLoopRead, testHookLoopLeft atomic.Pointer[func(c *Conn)]

// serveLoopLocked reports whether the poller's loop may deliver input
// itself: the connection is open and not closing or draining, the
// protocol has not paused it, no producer call runs elsewhere, and the
// output is under the high-water mark.
func (c *Conn) serveLoopLocked() bool {
	return !c.closed && !c.disconnecting && !c.draining && !c.readPaused &&
		c.cbOwner == 0 && c.inflight+c.pendingLen() <= framework.HighWaterMark
}

// repark parks the connection again after the loop served it (arm: see
// idlePoller.park), or starts its read loop if anything else needs it
// (the callback closed it, paused it, ...).
func (c *Conn) repark(arm bool) {
	c.mu.Lock()
	ok := c.serveLoopLocked()
	if ok {
		c.parked = true
		if !thePoller.park(c, c.fd, arm) {
			c.parked = false
			ok = false
		}
	}
	c.mu.Unlock()
	if !ok {
		go c.loop()
	}
}

// loopFrom runs the read loop, from what the poller's loop read and could
// not deliver itself: buf (pooled) and n, or err. bulk: a stream's, which
// waits in the runtime's poller and parks only once quiet.
func (c *Conn) loopFrom(buf *[]byte, n int, err error, bulk bool) {
	r := readers.Get().(*reader)
	r.pend, r.pendBuf, r.pendN, r.pendErr = buf != nil || err != nil, buf, n, err
	r.bulk = bulk
	c.runReader(r)
}
