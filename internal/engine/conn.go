package engine

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/superd-dev/superd/framework"
)

// Flow control: reading from a peer pauses while its unsent output is above
// framework.HighWaterMark and resumes once that output has drained; a
// connection whose unsent output passes MaxPendingOutput is aborted as a
// slow consumer.
const (
	// lingerTimeout bounds how long a gracefully closed connection waits for
	// the peer's EOF after our FIN, so the peer reads everything we sent
	// instead of meeting a reset caused by its own unread input.
	lingerTimeout = 2 * time.Second
	// lingerMaxInput bounds, in bytes, what a closing connection still
	// reads and discards (during the linger, or while its last output is
	// flushed): a peer that keeps sending past it is reset.
	lingerMaxInput = 64 << 10
	// readBufferSize is the size of the pooled buffers reads go into (what
	// one DataReceived delivers at most).
	readBufferSize = 32 << 10
	// maxPooledOutput: drained output buffers larger than this go back to
	// the garbage collector rather than to the pool.
	maxPooledOutput = 1 << 20
)

// ConnOptions configures how a connection is served.
type ConnOptions struct {
	// IdleTimeout aborts the connection (framework.ErrIdleTimeout) when
	// nothing has been received for this long; 0 disables it.
	IdleTimeout time.Duration
	// MaxPendingOutput is the hard limit of unsent output
	// (framework.ErrSlowConsumer); 0 means framework.DefaultMaxPendingOutput.
	MaxPendingOutput int
	// Received and Sent count application bytes as they move; nil is fine.
	Received, Sent prometheus.Counter
	// Logger receives protocol panics; nil means slog.Default().
	Logger *slog.Logger
}

var (
	readBuffers = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}
	// outBuffers hold pending output between flushes, so a connection with
	// nothing to send holds no output buffer and steady traffic allocates
	// nothing.
	outBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}
)

// Conn is the framework.Transport of one connection and the machinery that
// drives its framework.Protocol. Create it with NewConn and run it with Run
// (or Serve, which waits for the end).
//
// One goroutine at a time (the reader) reads and calls every protocol
// callback. An idle TCP or unix connection has no reader at all: it is
// parked in the idle poller until its peer sends something, and a new
// reader then takes over. Output is appended to a pending buffer by Write
// from any goroutine; whoever finds no flush in progress becomes the
// flusher: the reading goroutine after a callback (so a reply costs no
// extra goroutine), or a short-lived goroutine for writes made from
// elsewhere. Everything pending at the moment of a flush
// goes out in one write system call, so many small writes (a chat broadcast)
// coalesce.
type Conn struct {
	nc   net.Conn
	raw  syscall.RawConn // nil when reads must go through nc (TLS)
	opts ConnOptions

	mu   sync.Mutex
	cond sync.Cond // on mu: output drained, pause lifted, or closed

	pending  []byte  // queued, not yet handed to the flusher
	outBox   *[]byte // the pool box pending's array came from
	inflight int     // bytes being written by the flusher right now
	flushing bool    // someone owns the write side of nc

	inCallback    bool // Serve's goroutine is inside a protocol callback
	disconnecting bool // LoseConnection or peer EOF: flush, then close
	writeShut     bool // our FIN was sent (or the socket is closed)
	closed        bool // nc is closed, or aborting
	reason        error
	readPaused    bool
	draining      bool // Drain: deliver what has arrived, then LoseConnection
	halfClosing   bool // LoseWriteConnection: flush, then shut the write side
	halfShut      bool // LoseWriteConnection's end of stream went out
	readEOF       bool // the peer's end of stream was handed to ReadConnectionLost

	// Parking (see Run and idlePoller).
	p            framework.Protocol
	onDone       func(reason error)
	fd           int       // descriptor for the poller; -1: never park
	parked       bool      // no goroutine: the poller holds the connection
	received     bool      // something was ever received
	parkArmed    bool      // the park deadline is set (see readLoop)
	recvSinceArm bool      // reader only: something arrived since it was set
	waiting      bool      // someone waits on cond
	lingerUntil  time.Time // the linger's read deadline, once our FIN is out
	discarded    int       // reader only: bytes read and not delivered (see lingerMaxInput)

	// The registered producer. producerPaused is what the connection wants
	// (paused while the backlog is high); producerNotified is what the
	// producer was last told. notifyProducer reconciles the two, one call
	// at a time, under prodMu.
	producer         framework.Producer
	producerPaused   bool
	producerNotified bool
	prodDirty        bool // the wish changed: a notifier must look again
	pauseOverlapped  bool // a pause was delivered while a notifier was busy
	pausesInFlight   int  // such pauses not returned yet: no resume meanwhile
	prodMu           sync.Mutex

	// Idle timeout: the timer checks lastRecv (time since start when
	// something was last received) and re-arms itself.
	start     time.Time
	idleTimer *time.Timer
	lastRecv  atomic.Int64

	// Application bytes moved, for the access log and the status view.
	bytesIn, bytesOut atomic.Int64

	// Filled by rawRead, the reusable callback for raw.Read (a method value
	// made once, so a read allocates nothing).
	rawReadFn func(fd uintptr) bool
	rbuf      *[]byte
	rn        int
	rerr      error
	parkNow   bool // rawRead: on EAGAIN, return errWouldBlock instead of waiting
}

// NewConn wraps an accepted connection. TCP and unix connections are read
// through their raw file descriptor, so an idle connection holds no read
// buffer; anything else (TLS) is read through nc.
func NewConn(nc net.Conn, opts ConnOptions) *Conn {
	c := &Conn{nc: nc, opts: opts, fd: -1}
	c.cond.L = &c.mu
	if c.opts.MaxPendingOutput <= 0 {
		c.opts.MaxPendingOutput = framework.DefaultMaxPendingOutput
	}
	if c.opts.Logger == nil {
		c.opts.Logger = slog.Default()
	}
	if sc, ok := nc.(syscall.Conn); ok {
		if _, isTCP := nc.(*net.TCPConn); isTCP || isUnix(nc) {
			if rc, err := sc.SyscallConn(); err == nil {
				c.raw = rc
				c.rawReadFn = c.rawRead
				if getPoller() != nil {
					rc.Control(func(fd uintptr) { c.fd = int(fd) })
				}
			}
		}
	}
	return c
}

func isUnix(nc net.Conn) bool { _, ok := nc.(*net.UnixConn); return ok }

// Run serves p over the connection: ConnectionMade, then DataReceived for
// each chunk read, then ConnectionLost exactly once, then onDone with the
// same reason, after the socket is closed. Run returns when the connection
// has ended, or earlier, when it went idle: an idle TCP or unix connection
// is parked (see idlePoller) and holds no goroutine until its peer sends
// something; a new goroutine then carries on. So onDone may run on another
// goroutine than Run's.
func (c *Conn) Run(p framework.Protocol, onDone func(reason error)) {
	c.p, c.onDone = p, onDone
	if c.opts.IdleTimeout > 0 {
		c.start = time.Now()
		// Armed only once stored: idleCheck reads c.idleTimer.
		c.idleTimer = time.AfterFunc(time.Hour, c.idleCheck)
		c.idleTimer.Reset(c.opts.IdleTimeout)
	}
	c.mu.Lock()
	c.inCallback = true
	c.mu.Unlock()
	if c.call(p, callMade, nil, nil) != nil {
		c.afterCallback()
		c.finish()
		return
	}
	c.afterCallback()
	c.loop()
}

// Serve is Run that waits for the end and returns the reason given to
// ConnectionLost.
func (c *Conn) Serve(p framework.Protocol) error {
	done := make(chan error, 1)
	c.Run(p, func(reason error) { done <- reason })
	return <-done
}

// loop runs the read loop until the connection parks or ends.
func (c *Conn) loop() {
	if c.readLoop(c.p) {
		return // parked: wake or unparkLocked starts loop again
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
	if !getPoller().park(c, c.fd) {
		c.parked = false
		c.fd = -1 // do not try again
		return false
	}
	return true
}

// finish ends the connection: socket closed, producer stopped,
// ConnectionLost, onDone.
func (c *Conn) finish() {
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	c.mu.Lock()
	c.closeLocked(nil)
	reason := c.reason
	prod := c.producer
	c.producer = nil
	c.inCallback = true // writes from here on are dropped anyway
	c.mu.Unlock()
	if prod != nil {
		c.prodMu.Lock()
		c.callProducer(prod, prodStop)
		c.prodMu.Unlock()
	}
	c.call(c.p, callLost, nil, reason)
	if c.onDone != nil {
		c.onDone(reason)
	}
}

// The protocol callbacks, for call.
const (
	callMade = iota
	callData
	callLost
	callReadLost
)

// call runs one protocol callback with a panic ending only this
// connection: it aborts the connection with a *framework.PanicError and
// returns it.
// The caller has set inCallback and calls afterCallback.
func (c *Conn) call(p framework.Protocol, which int, data []byte, reason error) (perr error) {
	defer func() {
		if v := recover(); v != nil {
			perr = c.panicked("protocol", v)
		}
	}()
	switch which {
	case callMade:
		p.ConnectionMade(c)
	case callData:
		p.DataReceived(data)
	case callLost:
		p.ConnectionLost(reason)
	case callReadLost:
		p.(framework.HalfCloseableProtocol).ReadConnectionLost()
	}
	return nil
}

// panicked ends the connection after a panic in who's code (recovered as
// v, in a deferred call: the stack is still the panicking one) and logs it.
func (c *Conn) panicked(who string, v any) *framework.PanicError {
	pe := &framework.PanicError{Value: v, Stack: debug.Stack()}
	c.opts.Logger.Error(who+" panic; closing its connection",
		"peer", c.nc.RemoteAddr().String(), "panic", v, "stack", string(pe.Stack))
	c.abort(pe)
	return pe
}

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
	idle := time.Since(c.start) - time.Duration(c.lastRecv.Load())
	if idle >= c.opts.IdleTimeout {
		c.abort(framework.ErrIdleTimeout)
		return
	}
	c.idleTimer.Reset(c.opts.IdleTimeout - idle)
}

// afterCallback flushes what the callback wrote (one write, in this
// goroutine), hands any remainder to a background flusher, and finishes a
// graceful close that the callback asked for.
func (c *Conn) afterCallback() {
	c.mu.Lock()
	c.inCallback = false
	if len(c.pending) > 0 && !c.flushing && !c.closed {
		c.flushing = true
		c.flushOnceLocked()
		if len(c.pending) > 0 && !c.closed {
			go c.flushLoop()
		} else {
			c.flushDoneLocked()
		}
	} else if c.disconnecting && !c.flushing {
		c.shutdownWriteLocked()
	} else if c.halfClosing && !c.flushing && len(c.pending) == 0 {
		c.halfShutLocked()
	}
	c.mu.Unlock()
}

// parkAfter: a reader that has received something waits in the runtime's
// poller, and parks only once a whole parkAfter has passed with nothing
// received (so between one and two parkAfter after its last input); steady
// traffic never pays for parking, nor for reading the clock on every read.
// A connection that never received anything parks at once.
const parkAfter = 500 * time.Millisecond

// errWouldBlock: the socket had nothing to read and the reader wants to
// park rather than wait.
var errWouldBlock = errors.New("would block")

// readLoop reads until the connection ends (false) or parks (true).
func (c *Conn) readLoop(p framework.Protocol) (parked bool) {
	for {
		c.mu.Lock()
		// Flow control: no reading while our own output is above the
		// high-water mark (resume once drained) or the protocol paused us.
		if c.inflight+len(c.pending) > framework.HighWaterMark {
			for c.flushing && !c.closed && !c.disconnecting {
				c.waiting = true
				c.cond.Wait()
			}
		}
		for c.readPaused && !c.closed && !c.disconnecting && !c.draining {
			c.waiting = true
			c.cond.Wait()
		}
		if c.closed {
			c.mu.Unlock()
			return false
		}
		if c.draining && !c.disconnecting {
			c.mu.Unlock()
			c.drainArrived(p)
			continue
		}
		c.parkNow = false
		if c.fd >= 0 && !c.disconnecting {
			if !c.received {
				c.parkNow = true
			} else if !c.parkArmed {
				c.armParkLocked()
			}
		}
		c.mu.Unlock()

		buf, n, err := c.read()
		if n > 0 {
			c.bytesIn.Add(int64(n))
			if c.opts.Received != nil {
				c.opts.Received.Add(float64(n))
			}
			if c.idleTimer != nil {
				c.lastRecv.Store(int64(time.Since(c.start)))
			}
			c.received, c.recvSinceArm = true, true
			// Deliver unless the connection is ending; data that arrived
			// as the protocol paused waits for ResumeProducing.
			c.mu.Lock()
			for c.readPaused && !c.closed && !c.disconnecting && !c.draining {
				c.waiting = true
				c.cond.Wait()
			}
			deliver := !c.closed && !c.disconnecting && !(c.draining && c.readPaused)
			c.inCallback = deliver
			if !deliver && !c.closed {
				// Closing: the input is discarded, up to a bound.
				c.discarded += n
				if c.discarded > lingerMaxInput {
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
				next = c.deadlineFired()
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
	if c.closed || c.disconnecting || c.draining || c.readEOF {
		c.mu.Unlock()
		return
	}
	c.readEOF = true
	c.inCallback = true
	c.mu.Unlock()
	c.call(p, callReadLost, nil, nil)
	c.afterCallback()
	c.mu.Lock()
	for !c.closed && !c.disconnecting && !c.draining {
		c.waiting = true
		c.cond.Wait()
	}
	drain := !c.closed && !c.disconnecting
	c.mu.Unlock()
	if drain {
		c.LoseConnection()
	}
}

// Drain ends the connection gracefully for a shutdown or a reload: data
// that has already arrived from the peer is still delivered (a line a client
// sent before the shutdown is not lost), then the connection is closed as by
// LoseConnection. Reading stops there: nothing sent after Drain is
// delivered. Safe from any goroutine.
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

// armParkLocked sets the park deadline: the read wakes after parkAfter,
// and the reader parks if nothing arrived meanwhile.
func (c *Conn) armParkLocked() {
	c.parkArmed, c.recvSinceArm = true, false
	c.nc.SetReadDeadline(time.Now().Add(parkAfter))
}

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
func (c *Conn) deadlineFired() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return readFail // the reason is set
	case c.writeShut:
		if time.Now().Before(c.lingerUntil) {
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
	case c.parkArmed && c.recvSinceArm:
		c.armParkLocked() // still busy: look again a parkAfter on
		return readOn
	case c.parkArmed:
		return readPark
	}
	return readFail
}

// drainWindow bounds how long Drain reads a TLS connection: records
// cannot be read without waiting, so the drain reads until nothing more
// comes for this long.
const drainWindow = 50 * time.Millisecond

// drainArrived delivers, for Drain, what is already in the socket's receive
// buffer (read without waiting; over TLS, what arrives within drainWindow),
// then starts the graceful close. It stops as soon as the protocol pauses or
// the connection starts closing (a protocol may answer drained input with
// LoseConnection), and never touches the read deadline once the linger has
// set it.
func (c *Conn) drainArrived(p framework.Protocol) {
	for {
		c.mu.Lock()
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
			n, _ = c.nc.Read(*buf)
			if n == 0 {
				readBuffers.Put(buf)
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
		deliver := !c.closed && !c.disconnecting && !c.readPaused
		c.inCallback = deliver
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
	c.LoseConnection()
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

// read reads once into a pooled buffer. With a raw descriptor the buffer is
// taken only once the socket is readable, so idle connections hold none.
func (c *Conn) read() (*[]byte, int, error) {
	if c.raw == nil {
		buf := readBuffers.Get().(*[]byte)
		n, err := c.nc.Read(*buf)
		return buf, n, err
	}
	c.rbuf, c.rn, c.rerr = nil, 0, nil
	if err := c.raw.Read(c.rawReadFn); err != nil {
		if c.rbuf != nil {
			readBuffers.Put(c.rbuf)
		}
		return nil, 0, err
	}
	return c.rbuf, c.rn, c.rerr
}

func (c *Conn) rawRead(fd uintptr) bool {
	buf := readBuffers.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			readBuffers.Put(buf)
			if c.parkNow {
				c.rerr = errWouldBlock
				return true
			}
			return false // wait for readability without holding a buffer
		case err != nil:
			readBuffers.Put(buf)
			c.rerr = os.NewSyscallError("read", err)
		case n == 0:
			readBuffers.Put(buf)
			c.rerr = io.EOF
		default:
			c.rbuf, c.rn = buf, n
		}
		return true
	}
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
		for c.flushing && !c.closed {
			c.waiting = true
			c.cond.Wait()
		}
		if len(c.pending) > 0 && !c.closed {
			c.flushing = true
			for len(c.pending) > 0 && !c.closed {
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

// flushLoop flushes until nothing is pending, then finishes a pending
// graceful close. The caller has set c.flushing.
func (c *Conn) flushLoop() {
	c.mu.Lock()
	for len(c.pending) > 0 && !c.closed {
		c.flushOnceLocked()
	}
	c.flushDoneLocked()
	c.mu.Unlock()
}

// flushOnceLocked writes everything pending in one call, with mu released
// during the write.
func (c *Conn) flushOnceLocked() {
	out, box := c.pending, c.outBox
	c.pending, c.outBox = nil, nil
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
	if c.producer != nil && c.producerPaused && !c.closed {
		c.producerPaused, c.prodDirty = false, true
		c.mu.Unlock()
		c.notifyProducer()
		c.mu.Lock()
		if c.flushing {
			return // the producer wrote; that flush takes over from here
		}
	}
	if c.disconnecting && !c.inCallback && len(c.pending) == 0 {
		c.shutdownWriteLocked()
	} else if c.halfClosing && !c.inCallback && len(c.pending) == 0 {
		c.halfShutLocked()
	}
	c.wakeLocked()
}

func (c *Conn) wakeLocked() {
	if c.waiting {
		c.waiting = false
		c.cond.Broadcast()
	}
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
	if c.raw != nil && socketQuiet(c.raw) {
		// The peer has acknowledged everything we sent and sent nothing we
		// have not read: a plain close loses nothing, so skip the linger.
		c.closeLocked(nil)
		return
	}
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok {
		c.closeLocked(nil)
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
	c.lingerUntil = time.Now().Add(lingerTimeout)
	c.nc.SetReadDeadline(c.lingerUntil)
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
	c.pending, c.outBox = nil, nil
	c.unparkLocked() // before the close: the poller forgets the descriptor
	c.nc.Close()
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
	if tc, ok := nc.(*net.TCPConn); ok {
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

// --- framework.Transport ---

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
	c.pending = append(c.pending, b...)
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
	c.pending = append(c.pending, s...)
	c.wroteLocked()
}

// reserveLocked gives pending a pooled buffer when it has none.
func (c *Conn) reserveLocked() {
	if c.outBox == nil {
		c.outBox = outBuffers.Get().(*[]byte)
		c.pending = (*c.outBox)[:0]
	}
}

// wroteLocked enforces the output limits after a write, makes sure a flush
// will happen, and unlocks mu.
func (c *Conn) wroteLocked() {
	backlog := len(c.pending) + c.inflight
	if backlog > c.opts.MaxPendingOutput {
		c.abortLocked(framework.ErrSlowConsumer)
		c.mu.Unlock()
		return
	}
	pause := false
	if c.producer != nil && !c.producerPaused && backlog > framework.HighWaterMark {
		c.producerPaused, c.prodDirty = true, true
		pause = true
	}
	if !c.flushing && !c.inCallback {
		c.flushing = true
		go c.flushLoop()
	}
	c.mu.Unlock()
	if pause {
		c.notifyProducer()
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
	if !c.flushing && !c.inCallback && len(c.pending) == 0 {
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
	if !c.flushing && !c.inCallback && len(c.pending) == 0 {
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

// BytesIn is the number of application bytes received so far.
func (c *Conn) BytesIn() int64 { return c.bytesIn.Load() }

// BytesOut is the number of application bytes sent so far.
func (c *Conn) BytesOut() int64 { return c.bytesOut.Load() }

// PeerAddr implements framework.Transport.
func (c *Conn) PeerAddr() net.Addr { return c.nc.RemoteAddr() }

// LocalAddr implements framework.Transport.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// Pending returns the number of bytes written but not yet sent.
func (c *Conn) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) + c.inflight
}

var (
	_ framework.Transport  = (*Conn)(nil)
	_ framework.HalfCloser = (*Conn)(nil)
	_ framework.Aborter    = (*Conn)(nil)
)

// PeerCredentials is framework.PeerCredentials of the socket beneath the
// transport: the peer of a unix socket connection.
func (c *Conn) PeerCredentials() (framework.PeerCred, bool) {
	return framework.PeerCredentials(c.nc)
}

// TLSState is framework.TLSState of the connection beneath the transport.
func (c *Conn) TLSState() (tls.ConnectionState, bool) {
	return framework.TLSState(c.nc)
}
