// This file owns reading and parking: the read loop that delivers input to
// DataReceived, pausing it (flow control, PauseProducing), the peer's end
// of stream, and parking an idle connection in the poller (and waking it;
// serving it in the poller's loop is serve_loop.go's).

package engine

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/superd-dev/superd/framework"
)

// loop runs the read loop until the connection parks or ends.
func (c *Conn) loop() { c.runReader(readers.Get().(*reader)) }

// runReader runs the read loop with r until the connection parks or ends.
func (c *Conn) runReader(r *reader) {
	parked := c.readLoop(c.p, r)
	if r.pendBuf != nil { // the connection ended before its read loop read
		readBuffers.Put(r.pendBuf)
	}
	r.err, r.discarded, r.recvSinceArm = nil, 0, false
	r.pend, r.pendBuf, r.pendErr, r.bulk = false, nil, nil, false
	readers.Put(r)
	if parked {
		return // parked: the poller or unparkLocked starts a reader again
	}
	c.finish()
}

// wake is called by the poller when a parked connection is readable (or
// its peer closed).
func (c *Conn) wake() {
	c.mu.Lock()
	if !c.parked {
		c.mu.Unlock()
		return
	}
	c.parked = false
	c.mu.Unlock()
	go c.loop()
}

// unparkLocked resumes a parked connection's read loop because something
// other than input needs it (close, drain, linger after LoseConnection).
func (c *Conn) unparkLocked() {
	if !c.parked {
		return
	}
	c.parked = false
	getPoller().forget(c, c.fd)
	go c.loop()
}

// tryPark parks the connection if nothing but input can move it on.
func (c *Conn) tryPark() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.disconnecting || c.draining || c.readPaused {
		return false
	}
	if c.parkArmed {
		c.nc.SetReadDeadline(time.Time{})
		c.parkArmed = false
	}
	c.parked = true
	if !getPoller().park(c, c.fd, true) {
		c.parked = false
		c.fd = -1 // do not try again
		// Nor trust TCP_INQ's "nothing left": it does not count a reset
		// queued behind the last input, which only the park deadline
		// (never armed without a poller) would otherwise find.
		c.inq = false
		return false
	}
	return true
}

// parkAfter: a reader that has received something waits in the runtime's
// poller, and parks only once a whole parkAfter has passed with nothing
// received (so between one and two parkAfter after its last input); steady
// traffic never pays for parking, nor for reading the clock on every read.
// A connection that never received anything parks at once, and so does
// any other but a stream's where the poller's loop serves (loopServes):
// the loop serves its next input.
const parkAfter = 500 * time.Millisecond

// errWouldBlock: the socket had nothing to read and the reader wants to
// park rather than wait.
var errWouldBlock = errors.New("would block")

// readLoop reads until the connection ends (false) or parks (true).
func (c *Conn) readLoop(p framework.Protocol, r *reader) (parked bool) {
	for {
		c.mu.Lock()
		// Flow control: no reading while our own output is above the
		// high-water mark (resume once drained) or the protocol paused us.
		// Drained is the end of the flush, or one of its writes done: a
		// producer resumed as the flush ends refills the output before
		// this goroutine sees the end, so waiting for the end alone would
		// starve the reader for as long as the peer reads, and leave its
		// end of stream unseen. A write done means the peer reads, and the
		// reader reads once per write done, so what input adds to the
		// output stays bounded all the same.
		if c.inflight+c.pendingLen() > framework.HighWaterMark {
			sent := c.bytesOut.Load()
			for c.flushing && !c.closed && !c.disconnecting && c.bytesOut.Load() == sent {
				c.waitLocked()
			}
		}
		for c.readPaused && !c.closed && !c.disconnecting && !c.draining {
			c.waitLocked()
		}
		if c.closed {
			c.mu.Unlock()
			return false
		}
		// Input the poller's loop read is delivered before a drain's:
		// it arrived first.
		if c.draining && !c.disconnecting && !r.pend {
			c.mu.Unlock()
			c.drainArrived(p)
			continue
		}
		r.parkNow = false
		if c.fd >= 0 && !c.disconnecting {
			if !c.received || (!r.bulk && loopServes.Load() && !c.blocksLocked()) {
				r.parkNow = true
			} else if !c.parkArmed {
				c.armParkLocked(r)
			}
		}
		c.mu.Unlock()

		handed := r.pend // the poller's loop counted what it read
		buf, n, err := c.read(r)
		if n == readBufferSize {
			r.bulk = true // a stream: see parkAfter
		}
		if n > 0 {
			if handed {
				r.recvSinceArm = true
			} else {
				c.countReceived(r, n)
			}
			// Deliver unless the connection is ending; data that arrived
			// as the protocol paused waits for ResumeProducing, and for
			// any producer call running elsewhere to return.
			c.mu.Lock()
			for {
				c.waitToDeliverLocked(false)
				// A drain that came while paused discards this input,
				// but a Drainer gets it once it reads again: it had
				// arrived. (Waiting released mu: take the turn anew.)
				if !c.draining || !c.readPaused || c.closed || c.disconnecting {
					break
				}
				if _, finishes := p.(framework.Drainer); !finishes {
					break
				}
				c.waitLocked()
			}
			deliver := !c.closed && !c.disconnecting && !(c.draining && c.readPaused)
			c.inCallback = deliver
			if deliver {
				c.cbOwner = curG()
			}
			if !deliver && !c.closed {
				// Closing: the input is discarded, up to a bound.
				r.discarded += n
				if r.discarded > lingerMaxInput {
					c.abortLocked(errClosingInput)
				}
			}
			c.mu.Unlock()
			if deliver {
				if c.call(p, callData, (*buf)[:n], nil) != nil {
					err = nil // the panic already set the reason
				}
				c.afterCallback()
			}
		}
		if buf != nil {
			readBuffers.Put(buf)
		}
		if err != nil {
			if err == io.EOF {
				c.readLost(p)
			}
			next := readFail
			switch {
			case err == errWouldBlock:
				next = readPark
			case errors.Is(err, os.ErrDeadlineExceeded):
				next = c.deadlineFired(r)
			}
			switch next {
			case readPark:
				if c.tryPark() {
					return true
				}
				continue
			case readOn:
				continue
			}
			c.readFailed(err)
			return false
		}
	}
}

// waitToDeliverLocked waits until input can be delivered, or the
// connection is ending: the protocol has not paused the transport (an end
// of stream, eof, and a drain are delivered while paused), and no producer
// call runs on another goroutine. The caller checks which, and takes the
// turn if it delivers. The two waits are one: a reader that waited for its
// turn while paused could wait for ever, since the protocol may need that
// very turn to resume reading (a producer's ResumeProducing that calls the
// transport's).
func (c *Conn) waitToDeliverLocked(eof bool) {
	for !c.closed && !c.disconnecting {
		paused := c.readPaused && !eof && !c.draining
		if !paused && c.cbOwner == 0 {
			return
		}
		c.waitLocked()
	}
}

// readLost hands the peer's end of stream to a framework.HalfCloseableProtocol
// (ReadConnectionLost), then waits, reading nothing, until the connection
// is closing: the protocol called LoseConnection or AbortConnection, or
// superd ended it (a Drain closes it as LoseConnection would: nothing more
// can arrive). Its caller then ends the connection as after any end of
// stream. Protocols that are not half-closeable are not told.
func (c *Conn) readLost(p framework.Protocol) {
	if _, ok := p.(framework.HalfCloseableProtocol); !ok {
		return
	}
	c.mu.Lock()
	c.waitToDeliverLocked(true)
	if c.closed || c.disconnecting || c.draining || c.readEOF {
		c.mu.Unlock()
		return
	}
	c.readEOF = true
	c.inCallback = true
	c.cbOwner = curG()
	c.mu.Unlock()
	c.call(p, callReadLost, nil, nil)
	c.afterCallback()
	c.mu.Lock()
	for !c.closed && !c.disconnecting && !c.draining {
		c.waitLocked()
	}
	drain := !c.closed && !c.disconnecting
	c.mu.Unlock()
	if !drain {
		return
	}
	if _, ok := p.(framework.Drainer); ok {
		c.tellDraining(p) // it finishes what it still writes
		return
	}
	c.LoseConnection()
}

// armParkLocked sets the park deadline: the read wakes after parkAfter,
// and the reader parks if nothing arrived meanwhile.
func (c *Conn) armParkLocked(r *reader) {
	c.parkArmed, r.recvSinceArm = true, false
	d := parkAfter
	if t := testParkAfter.Load(); t != 0 {
		d = time.Duration(t)
	}
	c.nc.SetReadDeadline(time.Now().Add(d))
}

// testParkAfter, when set by a test, replaces parkAfter: out of reach, it
// shows that something happens without the park deadline's help.
var testParkAfter atomic.Int64

// What the read loop does after a read that got no data.
const (
	readFail = iota // the connection ends (readFailed)
	readPark        // park, if nothing but input can move it on
	readOn          // back to the top of the loop
)

// deadlineFired decides what a read deadline that fired means. Each of our
// deadlines has its own state, checked here under mu in one step, so a
// Drain or LoseConnection from another goroutine racing with the deadline
// is never mistaken for it.
func (c *Conn) deadlineFired(r *reader) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return readFail // the reason is set
	case c.writeShut:
		if monoNow() < c.lingerUntil {
			// An earlier deadline (Drain's, or the park deadline) that
			// fired as the graceful close began: the linger's own
			// deadline is set, so read on until the peer's EOF or it.
			return readOn
		}
		return readFail // the linger is over: the reason is set
	case c.draining && !c.disconnecting:
		return readOn // Drain's: the loop top delivers what has arrived
	case c.disconnecting:
		// A park or Drain deadline that fired as the connection began
		// closing: clear it, so the read waits for the peer while the
		// output drains (the linger sets its own deadline).
		c.parkArmed = false
		c.nc.SetReadDeadline(time.Time{})
		return readOn
	case c.parkArmed && r.recvSinceArm:
		c.armParkLocked(r) // still busy: look again a parkAfter on
		return readOn
	case c.parkArmed:
		return readPark
	}
	return readFail
}

// readNow reads what the socket holds without waiting (n is 0 when it holds
// nothing, or on EOF or error: the read loop meets those next).
func (c *Conn) readNow() (buf *[]byte, n int) {
	c.raw.Control(func(fd uintptr) {
		b := readBuffers.Get().(*[]byte)
		m, err := syscall.Read(int(fd), *b)
		if err != nil || m <= 0 {
			readBuffers.Put(b)
			return
		}
		buf, n = b, m
	})
	return buf, n
}

// countReceived records n bytes just read by the read loop.
func (c *Conn) countReceived(r *reader, n int) {
	c.noteReceived(n)
	r.recvSinceArm = true
}

// noteReceived records n bytes just read.
func (c *Conn) noteReceived(n int) {
	c.bytesIn.Add(int64(n))
	if c.opts.Received != nil {
		c.opts.Received.Add(float64(n))
	}
	if c.idle != nil {
		c.idle.lastRecv.Store(monoNow())
	}
	c.received = true
}

// read reads into a pooled buffer and returns what it read, or the error
// (n 0 and no error: input was delivered here, see serveInline, and the
// read loop goes round again). With a raw descriptor the buffer is taken
// only once the socket is readable, so idle connections hold none.
//
// With a raw descriptor the reader stays inside one raw.Read for as long
// as input can be delivered there (rawRead, serveInline): after a read
// that left the socket empty it waits for readiness without reading again
// to find EAGAIN, which a read loop outside raw.Read cannot do (each
// raw.Read starts by forgetting readiness seen before it). While it is
// inside, it holds the descriptor: Close would wait for it, so
// closeLocked leaves the close to it (closeOwed), done here on its way
// out.
func (c *Conn) read(r *reader) (*[]byte, int, error) {
	if r.pend {
		r.pend = false
		buf, n, err := r.pendBuf, r.pendN, r.pendErr
		r.pendBuf, r.pendErr = nil, nil
		return buf, n, err
	}
	if c.raw == nil {
		buf := readBuffers.Get().(*[]byte)
		n, err := c.nc.Read(*buf)
		return buf, n, err
	}
	r.buf, r.n, r.err, r.c = nil, 0, nil, c
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, 0, net.ErrClosed
	}
	c.inRead = true
	c.mu.Unlock()
	err := c.raw.Read(r.rawReadFn)
	c.leaveRead()
	r.c = nil
	if err != nil {
		if r.buf != nil {
			readBuffers.Put(r.buf)
			r.buf = nil
		}
		return nil, 0, err
	}
	buf := r.buf
	r.buf = nil
	return buf, r.n, r.err
}

// leaveRead: the reader is out of raw.Read, and closes the socket if
// closeLocked left that to it.
func (c *Conn) leaveRead() {
	c.mu.Lock()
	c.inRead = false
	if c.closeOwed {
		c.closeOwed = false
		c.nc.Close()
	}
	c.mu.Unlock()
}

// rawRead is the reader's raw.Read callback: it reads until it has input
// that the read loop must deliver itself, an end of stream or an error
// (true), or until the socket is empty (false: wait). Input that can be
// delivered at once is delivered here (serveInline).
func (r *reader) rawRead(fd uintptr) bool {
	c := r.c
	if !c.inqTried {
		// Only a connection that parks is served inside the read and so
		// needs to know what a read left (see serveInline).
		c.inqTried = true
		c.inq = c.fd >= 0 && !c.isUnixSocket() && enableInq(int(fd))
	}
	for {
		buf := readBuffers.Get().(*[]byte)
		var n, left int
		var err error
		if c.inq {
			n, left, err = r.recvInq(int(fd), *buf)
		} else {
			n, err = syscall.Read(int(fd), *buf)
			left = -1
		}
		switch {
		case err == syscall.EINTR:
			readBuffers.Put(buf)
			continue
		case err == syscall.EAGAIN:
			readBuffers.Put(buf)
			if testHookReadEmpty != nil {
				testHookReadEmpty()
			}
			if r.parkNow {
				r.err = errWouldBlock
				return true
			}
			return false // wait for readability without holding a buffer
		case err != nil:
			readBuffers.Put(buf)
			r.err = os.NewSyscallError("read", err)
			return true
		case n == 0:
			readBuffers.Put(buf)
			r.err = io.EOF
			return true
		}
		next := c.serveInline(r, buf, n, left)
		switch next {
		case notServed:
			r.buf, r.n = buf, n
			return true
		case servedWait:
			readBuffers.Put(buf)
			return false
		case servedStop:
			readBuffers.Put(buf)
			return true
		}
		readBuffers.Put(buf) // servedMore
	}
}

// testHookReadEmpty, when set by a test, runs when a read of the reader's
// finds the socket empty.
var testHookReadEmpty func()

// What serveInline did with the input, and what rawRead does next.
const (
	notServed  = iota // the read loop delivers it
	servedWait        // delivered, and the socket was left empty: wait for more
	servedMore        // delivered, and the read filled the buffer: read again
	servedStop        // delivered, and the connection needs the read loop
)

// serveInline delivers input inside raw.Read when nothing but the input
// itself asks anything of the reader (serveInlineLocked); otherwise the
// read loop delivers it, with every wait and check of its own. left is
// what the read left in the socket, as TCP_INQ tells it (bytes, or 1 for
// the peer's FIN), or -1 where nothing tells.
//
// When the read left nothing, the reader waits rather than reading again:
// input that comes after the read makes the descriptor ready again, which
// the wait sees, since raw.Read forgets readiness only when it starts.
// Otherwise it reads again: what is still queued, or the end of stream,
// came before the read, and its readiness is spent. Without TCP_INQ (a
// unix socket, an older kernel) a read cannot tell: a short read does not
// mean an empty socket (the peer's FIN or shutdown, taken with the last
// bytes; a unix socket stops after a message carrying descriptors), so
// the reader reads again after every delivery, until the socket is empty.
func (c *Conn) serveInline(r *reader, buf *[]byte, n, left int) int {
	c.mu.Lock()
	if !c.serveInlineLocked() {
		c.mu.Unlock()
		return notServed
	}
	c.serving, c.inCallback, c.cbOwner = true, true, curG()
	c.mu.Unlock()
	c.countReceived(r, n)
	started := flushersStarted.Load()
	perr := c.call(c.p, callData, (*buf)[:n], nil)
	c.afterCallback()
	c.mu.Lock()
	c.serving = false
	on := perr == nil && c.serveInlineLocked()
	c.mu.Unlock()
	switch {
	case !on:
		return servedStop
	case left != 0:
		// More is queued, the peer's end of stream is, or nothing says
		// (see above).
		return servedMore
	case flushersStarted.Load() != started:
		// The callback gave the scheduler other work (writes to other
		// connections: a chat line): the readiness of input that came
		// meanwhile is seen only once that work is done, when the
		// runtime next polls, so a peer that sends without waiting
		// (the next lines) would wait for it. Read now instead.
		return servedMore
	}
	return servedWait
}

// serveInlineLocked reports whether input may be delivered inside
// raw.Read: the connection is open and not closing or draining, the
// protocol has not paused it, no producer call runs elsewhere, the output
// is under the high-water mark, and the park deadline (if the connection
// parks) is set.
func (c *Conn) serveInlineLocked() bool {
	return !c.closed && !c.disconnecting && !c.draining && !c.readPaused &&
		c.cbOwner == 0 && c.inflight+c.pendingLen() <= framework.HighWaterMark &&
		(c.fd < 0 || c.parkArmed)
}

// readFailed decides what a failed read means and ends the connection.
func (c *Conn) readFailed(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed || c.writeShut:
		// We closed it (abort, or our FIN is out and we were only
		// lingering): the reason is already set.
	case errors.Is(err, io.EOF):
		// The peer closed. Output written before we noticed is still
		// delivered, then the connection closes cleanly.
		c.disconnecting = true
		if _, ok := c.p.(framework.HalfCloseableProtocol); !ok {
			// The end of stream ends the connection (Twisted's
			// connectionLost): the producer is stopped now, in its turn,
			// rather than by finish once the flush is over, so the flush
			// does not resume it as the output drains, and it does not
			// refill the output for as long as the peer reads.
			c.takeTurnLocked()
			c.stopProducerLocked()
			c.endTurnLocked()
		}
		for c.flushing && !c.closed {
			c.waitLocked()
		}
		if c.pendingLen() > 0 && !c.closed {
			c.flushing = true
			for c.pendingLen() > 0 && !c.closed {
				c.flushOnceLocked()
			}
			c.flushing = false
		}
		if cw, ok := c.nc.(interface{ CloseWrite() error }); ok && c.raw == nil && !c.closed {
			// TLS: the close sends close_notify, which may wait (crypto/tls
			// gives it 5 s) for room in the peer's window; send it here,
			// without mu, so closeLocked's Close finds it sent.
			c.flushing = true
			c.mu.Unlock()
			cw.CloseWrite()
			c.mu.Lock()
			c.flushing = false
			c.wakeLocked()
		}
		c.setReason(framework.ErrConnectionDone)
	default:
		c.setReason(&lostError{err})
	}
	c.closeLocked(nil)
}

// PauseProducing implements framework.Transport.
func (c *Conn) PauseProducing() {
	c.mu.Lock()
	c.readPaused = true
	c.mu.Unlock()
}

// ResumeProducing implements framework.Transport.
func (c *Conn) ResumeProducing() {
	c.mu.Lock()
	c.readPaused = false
	c.wakeLocked()
	c.mu.Unlock()
}
