// This file owns Drain: for a shutdown or a reload, deliver what has
// already arrived from the peer, then close gracefully.

package engine

import (
	"time"

	"github.com/superd-dev/superd/framework"
)

// Drain ends the connection gracefully for a shutdown or a reload: data
// that has already arrived from the peer is still delivered (a line a client
// sent before the shutdown is not lost), then the connection is closed as by
// LoseConnection, or a framework.Drainer is told (ConnectionDraining) and
// closes it when its work in flight is done. Reading stops there: nothing
// sent after Drain is delivered. Safe from any goroutine.
func (c *Conn) Drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.disconnecting || c.draining {
		return
	}
	c.draining = true
	c.wakeLocked()
	c.parkArmed = false
	c.nc.SetReadDeadline(time.Unix(1, 0)) // wake a read waiting for data
	c.unparkLocked()
}

// drainWindow bounds how long Drain reads a TLS connection: records
// cannot be read without waiting, so the drain reads until nothing more
// comes for this long.
const drainWindow = 50 * time.Millisecond

// testHookDrainRead, when set by a test, runs before each read of a TLS
// drain, once its window is set.
var testHookDrainRead func()

// drainArrived delivers, for Drain, what is already in the socket's receive
// buffer (read without waiting; over TLS, what arrives within drainWindow),
// then starts the graceful close. It stops as soon as the protocol pauses or
// the connection starts closing (a protocol may answer drained input with
// LoseConnection), and never touches the read deadline once the linger has
// set it.
func (c *Conn) drainArrived(p framework.Protocol) {
	_, finishes := p.(framework.Drainer)
	for {
		c.mu.Lock()
		for finishes && c.readPaused && !c.closed && !c.disconnecting {
			// What has arrived is the protocol's, once it reads again.
			c.waitLocked()
		}
		if c.closed || c.disconnecting || c.readPaused {
			c.mu.Unlock()
			break
		}
		if c.raw == nil {
			if kernelHolds(c.nc) {
				// Bytes of the peer's are in the kernel: read them (the
				// window only guards a record whose end is still on its
				// way).
				c.nc.SetReadDeadline(time.Now().Add(drainWindow))
			} else {
				// Nothing in the kernel: only what crypto/tls holds.
				c.nc.SetReadDeadline(time.Unix(1, 0))
			}
		}
		c.mu.Unlock()
		var buf *[]byte
		var n int
		if c.raw != nil {
			buf, n = c.readNow()
		} else {
			buf = readBuffers.Get().(*[]byte)
			if testHookDrainRead != nil {
				testHookDrainRead()
			}
			n, _ = c.nc.Read(*buf)
			if n == 0 {
				readBuffers.Put(buf)
				if kernelQueueKnown && kernelHolds(c.nc) {
					// The window ran out with the peer's bytes in the
					// kernel: they had arrived, but this reader had not
					// run (a busy host) or a record's end was on its way.
					// Read them with a new window: each turn takes what
					// the kernel holds, so this ends.
					continue
				}
			}
		}
		if n == 0 {
			break
		}
		c.bytesIn.Add(int64(n))
		if c.opts.Received != nil {
			c.opts.Received.Add(float64(n))
		}
		c.mu.Lock()
		c.waitToDeliverLocked(false)
		deliver := !c.closed && !c.disconnecting && !c.readPaused
		c.inCallback = deliver
		if deliver {
			c.cbOwner = curG()
		}
		c.mu.Unlock()
		if deliver {
			c.call(p, callData, (*buf)[:n], nil)
			c.afterCallback()
		}
		readBuffers.Put(buf)
		if !deliver {
			break
		}
	}
	c.mu.Lock()
	if !c.writeShut {
		c.nc.SetReadDeadline(time.Time{}) // Drain's, or the window's
	}
	c.mu.Unlock()
	if finishes {
		c.tellDraining(p)
		return
	}
	c.LoseConnection()
}

// tellDraining calls a framework.Drainer's ConnectionDraining, then waits,
// reading nothing, until the connection is closing: the protocol ended it
// once its work in flight was done, or superd aborted it
// (shutdown_timeout).
func (c *Conn) tellDraining(p framework.Protocol) {
	c.mu.Lock()
	c.waitToDeliverLocked(true)
	if !c.closed && !c.disconnecting {
		c.inCallback = true
		c.cbOwner = curG()
		c.mu.Unlock()
		c.call(p, callDraining, nil, nil)
		c.afterCallback()
		c.mu.Lock()
	}
	for !c.closed && !c.disconnecting {
		c.waitLocked()
	}
	c.mu.Unlock()
}
