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
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/superd-dev/superd/framework"
)

// loopServes: the poller's loop serves parked connections itself
// (serveParked) instead of starting a goroutine for each wake-up: where
// GOMAXPROCS is 1 (see followGOMAXPROCS). Tests set it either way
// (loopServesFixed).
var loopServes atomic.Bool

// loopServesFixed: a test has set loopServes, which GOMAXPROCS then does
// not change.
var loopServesFixed atomic.Bool

// lookAtGOMAXPROCS is how often the poller's loop looks at GOMAXPROCS,
// at most (only when it has events to handle: the mode matters then
// alone). The runtime changes it while superd runs when the CPU limit of
// its cgroup changes (a container resized, systemd's CPUQuota= set on a
// running unit).
const lookAtGOMAXPROCS = time.Second

// followGOMAXPROCS has the loop serve where GOMAXPROCS is 1 (and only
// there: across CPUs the kernel's direct wake-up that serving in the loop
// relies on costs more than it saves), unless a test fixed the mode.
// Connections parked in the other mode carry on: see idlePoller.park.
func followGOMAXPROCS() {
	if !loopServesFixed.Load() {
		loopServes.Store(runtime.GOMAXPROCS(0) == 1)
	}
}

// loopIO is the poller loop's scratch for serving: its read buffer, the
// results of its one read and of its one write, and their callbacks, made
// once, so that serving a message allocates nothing.
type loopIO struct {
	buf      []byte
	r        reader // recvInq's scratch
	c        *Conn
	n, left  int
	err      error
	readFn   func(fd uintptr)
	out      []byte
	wrote    int
	writeErr error
	writeFn  func(fd uintptr) bool
}

func newLoopIO() *loopIO {
	lio := &loopIO{buf: make([]byte, readBufferSize), left: -1}
	lio.readFn = lio.read
	lio.writeFn = lio.write
	return lio
}

// read is the loop's one read of c's socket.
func (lio *loopIO) read(fd uintptr) {
	for {
		if lio.c.inq {
			lio.n, lio.left, lio.err = lio.r.recvInq(int(fd), lio.buf)
		} else {
			lio.n, lio.err = syscall.Read(int(fd), lio.buf)
			lio.left = -1
		}
		if lio.err != syscall.EINTR {
			return
		}
	}
}

// write is the loop's one write of out, which does not wait: what the
// socket does not take is left (wrote short, no error).
func (lio *loopIO) write(fd uintptr) bool {
	for {
		n, errno := syscall.Write(int(fd), lio.out)
		switch errno {
		case syscall.EINTR:
			continue
		case nil:
			lio.wrote = n
		case syscall.EAGAIN:
		default:
			lio.writeErr = os.NewSyscallError("write", errno)
		}
		return true // taken or not, no waiting
	}
}

// serveParked is called by the poller's loop when a parked connection's
// descriptor is ready (hup: more than input, the peer's end or an error).
// It reads once into the loop's buffer and, if nothing but the input asks
// anything of the connection (serveLoopLocked), runs DataReceived, writes
// the reply with one write that does not wait, and parks the connection
// again. Everything else goes to a goroutine running the read loop, with
// what was read, if anything.
func (c *Conn) serveParked(lio *loopIO, hup bool) {
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
	lio.c, lio.n, lio.left, lio.err = c, 0, -1, nil
	if cerr := c.raw.Control(lio.readFn); cerr != nil {
		lio.err = cerr
	}
	lio.c = nil
	buf, n, left, err := lio.buf, lio.n, lio.left, lio.err
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
		// Paused, draining or closed since: the read loop delivers it when
		// it may. It has been received, whether or not it ever is (as the
		// read loop counts what it reads before it waits to deliver).
		c.mu.Unlock()
		c.noteReceived(n)
		c.leaveRead()
		b := readBuffers.Get().(*[]byte)
		go c.loopFrom(b, copy(*b, buf[:n]), nil, false)
		return
	}
	c.serving, c.inCallback, c.cbOwner = true, true, curG()
	c.mu.Unlock()
	c.noteReceived(n)
	perr := c.call(c.p, callData, buf[:n], nil)
	flushed := c.afterCallbackNoWait(lio)
	c.mu.Lock()
	c.serving = false
	if perr == nil && c.serveLoopLocked() && (n == len(buf) || !flushed) {
		// A stream (a read that filled the buffer, or a reply the socket
		// did not take at once): its goroutine serves it better, waiting
		// in the runtime's poller and parking once quiet. The loop lets
		// go of its descriptor, now, while it is still this connection's.
		getPoller().forget(c, c.fd)
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
// protocol has not paused it, no producer call runs elsewhere, the output
// is under the high-water mark, and the protocol does not say it may
// block.
func (c *Conn) serveLoopLocked() bool {
	return !c.closed && !c.disconnecting && !c.draining && !c.readPaused &&
		c.cbOwner == 0 && c.inflight+c.pendingLen() <= framework.HighWaterMark &&
		!c.blocksLocked()
}

// blocksLocked reports whether the protocol says its next callback may
// block (framework.Blocker), so that it is served on its own goroutine
// and not by the loop. Blocks is asked only between callbacks (the caller
// holds mu and nobody has the turn); while a producer call runs elsewhere
// the answer is taken to be yes. A panic in Blocks ends only this
// connection, as one in a callback does (it may be the loop asking, which
// serves every other connection too): the answer is then yes, and the
// connection's own goroutine finds it closed.
func (c *Conn) blocksLocked() (blocks bool) {
	b, ok := c.p.(framework.Blocker)
	if !ok {
		return false
	}
	if c.cbOwner != 0 {
		return true
	}
	defer func() {
		if v := recover(); v != nil {
			c.panickedLocked("protocol Blocks", v)
			blocks = true
		}
	}()
	return b.Blocks()
}

// repark parks the connection again after the loop served it (arm: see
// idlePoller.park), or starts its read loop if anything else needs it
// (the callback closed it, paused it, ...).
func (c *Conn) repark(arm bool) {
	c.mu.Lock()
	ok := c.serveLoopLocked()
	if ok {
		c.parked = true
		if !getPoller().park(c, c.fd, arm) {
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
