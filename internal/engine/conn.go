// This file owns the connection itself: the Conn type and its options,
// starting it (NewConn, Run, Serve), running protocol callbacks with a
// panic ending only the connection, its end (finish: ConnectionLost, then
// onDone), and the Transport's accessors.

package engine

import (
	"crypto/tls"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/rawconn"
)

// Flow control: while a connection's unsent output is above
// framework.HighWaterMark, its reader reads at most once per completed
// write of that output (so a peer's end of stream is still seen while a
// producer keeps the output high), and reads freely once it has drained; a
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
// reader then takes over. A busy TCP or unix connection's reader runs
// DataReceived inside the raw read itself and, on TCP, when a read left
// the socket empty (TCP_INQ tells), waits for the next input without a
// read that would find nothing: one system call per message fewer than a
// read loop (see read and serveInline). Where the poller's loop serves
// (one P: see serve_loop.go), the loop is the reader of a parked
// connection while it serves one message, and parks it again. A
// registered producer is called one call at a time with the protocol's
// callbacks, never beside them (see cbOwner).
//
// Output is appended to a pending buffer by Write from any goroutine;
// whoever finds no flush in progress becomes the flusher: the reading
// goroutine after a callback (so a reply costs no extra goroutine), or a
// short-lived goroutine for writes made from elsewhere. Everything pending
// at the moment of a flush goes out in one write system call, so many
// small writes (a chat broadcast) coalesce.
//
// A Conn is what an idle connection costs beside the socket, so it is kept
// small (192 bytes, a size class of the allocator): the options are
// shared, and what only some connections need is made when needed (the
// condition variable, the idle timer, the reader's scratch, which is
// pooled). The fields are ordered by size, so that none is padded.
type Conn struct {
	nc   net.Conn
	raw  syscall.RawConn // nil when reads must go through nc (TLS)
	opts *ConnOptions    // shared by the connections of a service

	mu   sync.Mutex
	cond *sync.Cond // on mu, made on first wait: output drained, pause lifted, or closed

	// outBox holds the output queued and not yet handed to the flusher
	// (pending), in a buffer from outBuffers; nil when nothing is queued.
	outBox   *[]byte
	inflight int // bytes being written by the flusher right now
	reason   error

	// cbOwner is the goroutine (curG) whose turn it is to run the
	// connection's callbacks, the protocol's and the producer's alike;
	// 0: nobody's. Only the owner calls them, so they never overlap (see
	// takeTurnLocked, endTurnLocked and tellProducerLocked).
	cbOwner uintptr

	p           framework.Protocol
	onDone      func(reason error)
	lingerUntil int64 // the linger's read deadline (see monoNow), once our FIN is out

	// The registered producer, and producerPaused: what the connection
	// wants of it (paused while the backlog is high). Both change under mu
	// but are atomic, so that the goroutine whose turn it is can read them
	// without mu: it tells the producer a pause decided by another
	// goroutine's write as soon as its own call returns, without first
	// waiting for mu (which that writer, writing on until paused, keeps
	// busy). See settleProducer.
	prod           atomic.Pointer[registered]
	producerPaused atomic.Bool

	// Idle timeout; nil without one.
	idle *idleState

	// Application bytes moved, for the access log and the status view.
	bytesIn, bytesOut atomic.Int64

	// Parking (see Run and idlePoller): fd is the descriptor for the
	// poller; -1: never park.
	fd int32

	flushing      bool // someone owns the write side of nc
	inCallback    bool // Serve's goroutine is inside a protocol callback
	disconnecting bool // LoseConnection or peer EOF: flush, then close
	writeShut     bool // our FIN was sent (or the socket is closed)
	closed        bool // nc is closed, or aborting
	readPaused    bool
	draining      bool // Drain: deliver what has arrived, then LoseConnection
	halfClosing   bool // LoseWriteConnection: flush, then shut the write side
	halfShut      bool // LoseWriteConnection's end of stream went out
	readEOF       bool // the peer's end of stream was handed to ReadConnectionLost
	lost          bool // ConnectionLost has returned: no callback runs again
	parked        bool // no goroutine: the poller holds the connection
	edgeArmed     bool // last registered with the poller edge-triggered (see idlePoller.park)
	received      bool // something was ever received
	parkArmed     bool // the park deadline is set (see readLoop)
	waiting       bool // someone waits on cond
	inRead        bool // the reader is inside raw.Read (see read)
	serving       bool // the reader delivers input inside raw.Read (see serveInline)
	closeOwed     bool // closeLocked left the close to the reader inside raw.Read
	// inq: TCP_INQ is on, so each read says what the socket still holds
	// (see inq_linux.go); inqTried: the reader has looked (once).
	inq, inqTried bool
}

// idleState is the idle timeout's: the timer checks lastRecv (monoNow
// when something was last received) and re-arms itself.
type idleState struct {
	timer    *time.Timer
	lastRecv atomic.Int64
}

// epoch is the origin of monoNow.
var epoch = time.Now()

// monoNow is the monotonic time since the process started, in the 8 bytes
// a connection stores times in (a time.Time takes 24).
func monoNow() int64 { return int64(time.Since(epoch)) }

// reader is the scratch of the goroutine running a connection's read loop
// (there is one at a time), taken from readers while it runs: a parked
// connection holds none.
type reader struct {
	// rawReadFn is r.rawRead, made once per reader, so a read allocates
	// nothing; it fills buf, n and err, and delivers input to c where it
	// can (see read).
	rawReadFn func(fd uintptr) bool
	c         *Conn
	buf       *[]byte
	n         int
	err       error
	discarded int  // bytes read and not delivered (see lingerMaxInput)
	parkNow   bool // rawRead: on EAGAIN, return errWouldBlock instead of waiting
	// recvSinceArm: something arrived since the park deadline was set.
	recvSinceArm bool
	// bulk: a stream's reader (a read filled the buffer, or the poller's
	// loop handed it over as one), which parks only once quiet even
	// where the loop serves (see parkAfter).
	bulk bool
	// pend: read returns pendBuf (pooled), pendN and pendErr first: what
	// the poller's loop read and could not deliver (see loopFrom), counted
	// as received when the loop read it.
	pend    bool
	pendBuf *[]byte
	pendN   int
	pendErr error
	inq     inqScratch // recvInq's, for a socket with TCP_INQ
}

var readers sync.Pool

// The pool's New is set here, not in readers' declaration: rawRead leads,
// through the connection's callbacks, back to the read loop's use of the
// pool, an initialization cycle.
func init() {
	readers.New = func() any {
		r := &reader{}
		r.rawReadFn = r.rawRead
		return r
	}
}

// NewConn wraps an accepted connection. TCP and unix connections are read
// through their raw file descriptor, so an idle connection holds no read
// buffer; anything else (TLS) is read through nc. opts may be nil (every
// option at its default); it is shared, not copied, so that the
// connections of a service hold one between them, and must not change
// once a connection uses it.
func NewConn(nc net.Conn, opts *ConnOptions) *Conn {
	if opts == nil {
		opts = &defaultOptions
	}
	c := &Conn{nc: nc, opts: opts, fd: -1}
	if sc, ok := nc.(syscall.Conn); ok {
		if _, isTCP := nc.(*net.TCPConn); isTCP || isUnix(nc) || isBare(nc) {
			if rc, err := sc.SyscallConn(); err == nil {
				c.raw = rc
				if getPoller() != nil {
					rc.Control(func(fd uintptr) { c.fd = int32(fd) })
				}
			}
		}
	}
	return c
}

// defaultOptions are the options of a connection made without any.
var defaultOptions ConnOptions

// maxPendingOutput is opts.MaxPendingOutput, or its default.
func (c *Conn) maxPendingOutput() int {
	if m := c.opts.MaxPendingOutput; m > 0 {
		return m
	}
	return framework.DefaultMaxPendingOutput
}

// logger is opts.Logger, or its default.
func (c *Conn) logger() *slog.Logger {
	if l := c.opts.Logger; l != nil {
		return l
	}
	return slog.Default()
}

func isUnix(nc net.Conn) bool { _, ok := nc.(*net.UnixConn); return ok }

// isUnixSocket reports whether the connection is a unix socket's.
func (c *Conn) isUnixSocket() bool {
	if bc, ok := c.nc.(*rawconn.Conn); ok {
		return bc.IsUnix()
	}
	return isUnix(c.nc)
}

// isBare: a connection accepted as a bare descriptor (see package rawconn).
func isBare(nc net.Conn) bool { _, ok := nc.(*rawconn.Conn); return ok }

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
		c.idle = &idleState{}
		c.idle.lastRecv.Store(monoNow())
		// Armed only once stored: idleCheck reads c.idle.timer.
		c.idle.timer = time.AfterFunc(time.Hour, c.idleCheck)
		c.idle.timer.Reset(c.opts.IdleTimeout)
	}
	c.mu.Lock()
	c.takeTurnLocked()
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

// finish ends the connection: socket closed, producer stopped,
// ConnectionLost, onDone.
func (c *Conn) finish() {
	if c.idle != nil {
		c.idle.timer.Stop()
	}
	c.mu.Lock()
	c.closeLocked(nil)
	if c.fd >= 0 {
		getPoller().unmap(c, c.fd)
	}
	reason := c.reason
	c.takeTurnLocked()
	c.inCallback = true // writes from here on are dropped anyway
	c.stopProducerLocked()
	c.mu.Unlock()
	c.call(c.p, callLost, nil, reason)
	c.mu.Lock()
	c.stopProducerLocked() // one registered during ConnectionLost
	c.lost = true
	c.cbOwner = 0
	c.wakeLocked()
	c.mu.Unlock()
	if c.onDone != nil {
		c.onDone(reason)
	}
}

// takeTurnLocked waits until no other goroutine runs one of the
// connection's callbacks, then makes the caller the one that does (mu is
// released while waiting). Only the reader waits for its turn; nothing
// that the protocol or another goroutine calls does (see
// tellProducerLocked), so no callback can wait for itself.
func (c *Conn) takeTurnLocked() {
	for c.cbOwner != 0 {
		c.waitLocked()
	}
	c.cbOwner = curG()
}

// endTurnLocked ends the caller's turn. It first gives the producer every
// pause or resume decided while the turn lasted (settleProducerLocked), so
// none is lost, then lets the next goroutine in.
func (c *Conn) endTurnLocked() {
	c.settleProducerLocked()
	c.cbOwner = 0
	c.wakeLocked()
}

// The protocol callbacks, for call.
const (
	callMade = iota
	callData
	callLost
	callReadLost
	callDraining
)

// call runs one protocol callback with a panic ending only this
// connection: it aborts the connection with a *framework.PanicError and
// returns it. The caller has taken its turn and set inCallback, and calls
// afterCallback (which ends the turn).
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
	case callDraining:
		p.(framework.Drainer).ConnectionDraining()
	}
	return nil
}

// panicked ends the connection after a panic in who's code (recovered as
// v, in a deferred call: the stack is still the panicking one) and logs it.
func (c *Conn) panicked(who string, v any) *framework.PanicError {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.panickedLocked(who, v)
}

// panickedLocked is panicked with mu held.
func (c *Conn) panickedLocked(who string, v any) *framework.PanicError {
	pe := &framework.PanicError{Value: v, Stack: debug.Stack()}
	c.logger().Error(who+" panic; closing its connection",
		"peer", c.nc.RemoteAddr().String(), "panic", v, "stack", string(pe.Stack))
	c.abortLocked(pe)
	return pe
}

// waitLocked waits on cond, made on first use: most connections never
// wait.
func (c *Conn) waitLocked() {
	if c.cond == nil {
		c.cond = sync.NewCond(&c.mu)
	}
	c.waiting = true
	c.cond.Wait()
}

func (c *Conn) wakeLocked() {
	if c.waiting {
		c.waiting = false
		c.cond.Broadcast()
	}
}

// BytesIn is the number of application bytes received so far.
func (c *Conn) BytesIn() int64 { return c.bytesIn.Load() }

// BytesOut is the number of application bytes sent so far.
func (c *Conn) BytesOut() int64 { return c.bytesOut.Load() }

// NetConn is the connection the Conn serves, as given to NewConn.
func (c *Conn) NetConn() net.Conn { return c.nc }

// PeerAddr implements framework.Transport.
func (c *Conn) PeerAddr() net.Addr { return c.nc.RemoteAddr() }

// LocalAddr implements framework.Transport.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// Pending returns the number of bytes written but not yet sent.
func (c *Conn) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pendingLen() + c.inflight
}

// OutputRoom implements framework.OutputRoomer.
func (c *Conn) OutputRoom() int {
	return max(framework.HighWaterMark-c.Pending(), 0)
}

// pendingLen is the length of the output queued and not yet handed to the
// flusher.
func (c *Conn) pendingLen() int {
	if c.outBox == nil {
		return 0
	}
	return len(*c.outBox)
}

// PeerCredentials is framework.PeerCredentials of the socket beneath the
// transport: the peer of a unix socket connection.
func (c *Conn) PeerCredentials() (framework.PeerCred, bool) {
	return framework.PeerCredentials(c.nc)
}

// TLSState is framework.TLSState of the connection beneath the transport.
func (c *Conn) TLSState() (tls.ConnectionState, bool) {
	return framework.TLSState(c.nc)
}

var (
	_ framework.Transport  = (*Conn)(nil)
	_ framework.HalfCloser = (*Conn)(nil)
	_ framework.Aborter    = (*Conn)(nil)
)
