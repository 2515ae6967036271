// This file owns closing and lingering: LoseConnection's flush-then-FIN,
// the linger for the peer's end of stream, half-close
// (LoseWriteConnection), aborts with a reset, the idle timeout, and the
// reason ConnectionLost is given.

package engine

import (
	"crypto/tls"
	"net"
	"time"

	"github.com/superd-dev/superd/framework"
)

// idleCheck runs when the idle timer fires: it aborts the connection if
// nothing was received for IdleTimeout, else re-arms for the rest. Reads
// only record their time, so the timer is not reset on every read.
func (c *Conn) idleCheck() {
	c.mu.Lock()
	lingering := c.writeShut
	c.mu.Unlock()
	if lingering {
		// Everything was handed to the kernel and our FIN is queued: an
		// abort now would reset what the peer has yet to read. The linger
		// deadline ends the connection with a normal close.
		return
	}
	idle := time.Duration(monoNow() - c.idle.lastRecv.Load())
	if idle >= c.opts.IdleTimeout {
		c.abort(framework.ErrIdleTimeout)
		return
	}
	c.idle.timer.Reset(c.opts.IdleTimeout - idle)
}

// shutdownWriteLocked ends a graceful close: FIN to the peer, then the
// reading goroutine lingers (discarding input) until the peer closes or
// lingerTimeout passes.
func (c *Conn) shutdownWriteLocked() {
	if c.writeShut || c.closed {
		return
	}
	c.writeShut = true
	c.halfClosing = false
	c.setReason(framework.ErrConnectionDone)
	if c.halfShut {
		// LoseWriteConnection sent our end of stream already.
		if c.readEOF {
			c.closeLocked(nil) // and the peer's has arrived: nothing is left
		} else {
			c.writeClosedLocked(nil) // linger for the peer's
		}
		return
	}
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok {
		c.closeLocked(nil)
		return
	}
	if c.raw != nil {
		// Our end of stream goes first; then, if the peer has
		// acknowledged everything else we sent and sent nothing we have
		// not read, the linger can be skipped. Checking before the FIN
		// would leave a window in which a byte of the peer's (a client
		// that keeps talking) makes the close a reset instead of a FIN.
		if testHookQuiet != nil {
			testHookQuiet()
		}
		err := cw.CloseWrite()
		if err == nil && quietAfterFIN(c.raw, c.isUnixSocket()) {
			c.closeLocked(nil)
			return
		}
		c.writeClosedLocked(err)
		return
	}
	if c.raw == nil {
		// TLS: CloseWrite sends close_notify, which waits (crypto/tls gives
		// it 5s) for room in the peer's window: never with mu held, nor in
		// the caller's goroutine (LoseConnection does not block). flushing
		// keeps the write side ours meanwhile.
		c.flushing = true
		go func() {
			err := cw.CloseWrite()
			c.mu.Lock()
			c.flushing = false
			c.writeClosedLocked(err)
			c.mu.Unlock()
		}()
		return
	}
	c.writeClosedLocked(cw.CloseWrite())
}

// testHookQuiet, when set by a test, runs when a graceful close of a
// socket read through its descriptor is about to send its FIN.
var testHookQuiet func()

// halfShutLocked ends a LoseWriteConnection once the output has drained:
// our end of stream goes out, and reading goes on.
func (c *Conn) halfShutLocked() {
	c.halfClosing = false
	if c.halfShut || c.writeShut || c.closed || c.disconnecting {
		return
	}
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok {
		// Nothing to half-close with: close gracefully instead.
		c.disconnecting = true
		c.wakeLocked()
		c.shutdownWriteLocked()
		return
	}
	c.halfShut = true
	if c.raw == nil {
		// TLS: close_notify may wait for room in the peer's window (see
		// shutdownWriteLocked): in a goroutine, with the write side ours.
		c.flushing = true
		go func() {
			err := cw.CloseWrite()
			if err == nil {
				if nc, ok := c.nc.(interface{ NetConn() net.Conn }); ok {
					if tcw, ok := nc.NetConn().(interface{ CloseWrite() error }); ok {
						tcw.CloseWrite()
					}
				}
			}
			c.mu.Lock()
			c.flushing = false
			c.halfShutDoneLocked(err)
			if c.disconnecting && !c.inCallback {
				c.shutdownWriteLocked() // LoseConnection came meanwhile
			}
			c.wakeLocked()
			c.mu.Unlock()
		}()
		return
	}
	c.halfShutDoneLocked(cw.CloseWrite())
}

// halfShutDoneLocked ends the connection if the end of stream could not be
// sent.
func (c *Conn) halfShutDoneLocked(err error) {
	if err != nil && !c.closed {
		c.setReason(&lostError{err})
		c.closeLocked(nil)
	}
}

// writeClosedLocked starts the linger once our FIN (or close_notify) is out,
// or closes if it could not be sent.
func (c *Conn) writeClosedLocked(err error) {
	if c.closed {
		c.wakeLocked()
		return
	}
	if err != nil {
		c.closeLocked(nil)
		return
	}
	c.parkArmed = false
	until := time.Now().Add(lingerTimeout)
	c.lingerUntil = int64(until.Sub(epoch))
	c.nc.SetReadDeadline(until)
	c.unparkLocked() // the reader lingers for the peer's EOF
	c.readPaused = false
	c.wakeLocked()
}

func (c *Conn) setReason(err error) {
	if c.reason == nil {
		c.reason = err
	}
}

// closeLocked closes the socket once, recording reason if none is set.
func (c *Conn) closeLocked(reason error) {
	if reason != nil {
		c.setReason(reason)
	}
	c.setReason(framework.ErrConnectionDone)
	if c.closed {
		return
	}
	c.closed, c.writeShut = true, true
	c.outBox = nil
	c.unparkLocked() // before the close: the poller forgets the descriptor
	if c.inRead {
		// The reader holds the descriptor inside raw.Read: a Close would
		// wait for it, which may be waiting for mu (or be this very
		// goroutine, in a callback). It closes on its way out; one waiting
		// for input is woken by a deadline in the past.
		c.closeOwed = true
		if c.serving {
			// It may be flushing the callback's reply to a peer that
			// does not read (serveInline's afterCallback): a write
			// deadline in the past ends that wait, as the Close would.
			c.nc.SetWriteDeadline(time.Unix(1, 0))
		} else {
			c.nc.SetReadDeadline(time.Unix(1, 0))
		}
	} else {
		if tc, ok := c.nc.(*tls.Conn); ok && (!framework.IsClean(c.reason) || c.flushing) {
			// tls.Conn's Close sends a close_notify first, which waits
			// (crypto/tls gives it 5 s) for room in the peer's window,
			// or for a CloseWrite still under way: with mu held, every
			// Write to the connection would wait with it. A clean close
			// has sent it already (CloseWrite, without mu); a failed
			// connection must not send one (the peer would take the end
			// for an orderly one), nor may a close that cuts a write of
			// another goroutine short wait for it: close beneath TLS
			// first, so the close_notify fails at once.
			tc.NetConn().Close()
		}
		c.nc.Close()
	}
	c.wakeLocked()
}

func (c *Conn) abort(reason error) {
	c.mu.Lock()
	c.abortLocked(reason)
	c.mu.Unlock()
}

// abortLocked closes now with an RST, dropping pending output.
func (c *Conn) abortLocked(reason error) {
	if c.closed {
		return
	}
	if c.writeShut {
		// Lingering: the reset drops whatever the peer has not read yet,
		// so the clean reason recorded with our FIN no longer holds.
		c.reason = nil
	}
	c.setReason(reason)
	nc := c.nc
	if tc, ok := nc.(interface{ NetConn() net.Conn }); ok { // TLS
		nc = tc.NetConn()
	}
	// A TCP socket, or one read through a PROXY header's buffer.
	if tc, ok := nc.(interface{ SetLinger(int) error }); ok {
		tc.SetLinger(0) // RST: the peer learns at once that data was dropped
	}
	if nc != c.nc {
		// Close beneath TLS first, so no close_notify tells the peer
		// that this was an orderly end.
		nc.Close()
	}
	c.closeLocked(nil)
}

// Abort closes the connection now with the given reason (one of the Err*
// reasons of this package, or another error), dropping pending output.
func (c *Conn) Abort(reason error) { c.abort(reason) }

// LoseConnection implements framework.Transport.
func (c *Conn) LoseConnection() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.disconnecting || c.closed {
		return
	}
	c.disconnecting = true
	if c.parkArmed {
		// A park deadline firing now would look like a read failure and
		// cut the flush short.
		c.parkArmed = false
		c.nc.SetReadDeadline(time.Time{})
	}
	c.wakeLocked()
	if !c.flushing && !c.inCallback && c.pendingLen() == 0 {
		c.shutdownWriteLocked()
	}
}

// LoseWriteConnection implements framework.HalfCloser.
func (c *Conn) LoseWriteConnection() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.disconnecting || c.closed || c.halfClosing || c.halfShut {
		return
	}
	c.halfClosing = true
	if !c.flushing && !c.inCallback && c.pendingLen() == 0 {
		c.halfShutLocked()
	}
}

// AbortConnection implements framework.Transport.
func (c *Conn) AbortConnection() { c.abort(framework.ErrConnectionAborted) }

// Disconnecting implements framework.Transport.
func (c *Conn) Disconnecting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.disconnecting || c.closed
}
