package framework

import (
	"context"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ConnHandler is implemented by factories that serve a connection
// themselves instead of building a Protocol for it: the exec factory hands
// the socket to a child process. Everything that happens before a protocol
// would exist still applies (allow/deny, every limit, the TLS handshake),
// the connection counts as active until ServeConn returns, and the
// supervisor tells the handler when the service begins draining and when
// its time is up (HandedConn.Stopping and Killed).
type ConnHandler interface {
	// ServeConn serves one connection until it is over, and closes it.
	// It calls c.Served once the connection is being served (for exec:
	// the program started). It returns nil for a clean end,
	// ErrShutdownTimeout when it ended because Killed was done,
	// ErrIdleTimeout when it enforced IdleTimeout, another error
	// (counted as lost), or, without calling Served, a *RejectError
	// (counted as a rejection). It is called from many goroutines at once.
	ServeConn(c *HandedConn) error
}

// RejectError is returned by a ConnHandler that could not serve a
// connection at all; Reason is the rejection reason counted
// (superd_connections_rejected_total), such as "spawn".
type RejectError struct {
	Reason string
	Err    error
}

func (e *RejectError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *RejectError) Unwrap() error { return e.Err }

// HandedConn is a connection given to a ConnHandler.
type HandedConn struct {
	// Conn is the socket straight from accept, or, where superd must stay
	// in the stream, the stream after superd's layer (a *tls.Conn whose
	// handshake is done). The socket is a *net.TCPConn or *net.UnixConn,
	// or superd's own connection on the descriptor it accepted: a
	// syscall.Conn whose IsUnix() tells which, with a *net.TCPAddr or
	// *net.UnixAddr as RemoteAddr, and PeerCredentials for a unix peer.
	Conn net.Conn
	// SourceConns is the number of open connections of the service from
	// the same source, this one included (0 for unix peers).
	SourceConns int
	// IdleTimeout is the service's idle_timeout (0: none); it can only be
	// enforced where the handler sits in the stream.
	IdleTimeout time.Duration
	// ShutdownTimeout is the configuration's shutdown_timeout when the
	// connection was handed over (0: none). A handler that ends a
	// connection itself, at IdleTimeout, gives what serves it that long
	// to finish before it forces the end, as a drain does between
	// Stopping and Killed.
	ShutdownTimeout time.Duration
	// Received and Sent count application bytes as they move.
	Received, Sent prometheus.Counter
	// Stopping is done when the service begins draining (shutdown, or a
	// reload that replaces or removes it): finish soon. Killed is done
	// when the drain has run out of time: end now (Killed is never done
	// before Stopping). They belong to the service and are shared by all
	// the connections it hands over, so watching them costs a connection
	// nothing until they are done: context.AfterFunc registers a function
	// without a goroutine. Done() serves a select.
	Stopping, Killed context.Context
	// Served is set by superd: the handler calls it once, when the
	// connection is being served, from which point it is counted as
	// handed to a protocol (superd_connections_total, _active).
	Served func()

	// Set by the handler before ServeConn returns, for the access log:
	// the bytes the connection moved, and the program that served it
	// (its pid, and its exit: "0", "1", "SIGKILL", ...).
	BytesIn, BytesOut int64
	PID               int
	Exit              string

	running atomic.Int64
	live    atomic.Pointer[func() (in, out int64)]
}

// SetLiveBytes gives the status view the bytes the connection has moved so
// far while the handler serves it: f is called from other goroutines, at
// any time until SetLiveBytes(nil), which the handler calls before what f
// reads goes away. BytesIn and BytesOut are still set at the end.
func (c *HandedConn) SetLiveBytes(f func() (in, out int64)) {
	if f == nil {
		c.live.Store(nil)
		return
	}
	c.live.Store(&f)
}

// LiveBytes is what the function SetLiveBytes recorded says now; 0 and 0
// without one.
func (c *HandedConn) LiveBytes() (in, out int64) {
	if f := c.live.Load(); f != nil {
		return (*f)()
	}
	return 0, 0
}

// SetRunningPID records the program serving the connection while it runs
// (the status view lists it); 0 when it has exited.
func (c *HandedConn) SetRunningPID(pid int) { c.running.Store(int64(pid)) }

// RunningPID is the pid recorded by SetRunningPID.
func (c *HandedConn) RunningPID() int { return int(c.running.Load()) }

// ListenerHandler is implemented by factories that can serve a listening
// socket themselves rather than its connections (inetd's wait mode,
// systemd's Accept=no). When ServesListeners reports true, superd never
// accepts on the service's endpoints: it waits until one has a connection
// (or a datagram) waiting, calls ServeListener, and watches the socket
// again only once ServeListener has returned.
type ListenerHandler interface {
	ServesListeners() bool
	// ServeListener serves what is waiting on the listening socket and
	// returns when it is done (for exec, when its child has exited, after
	// any restart back-off: it must never let superd call it again in a
	// busy loop). It must not close l.File. A *RejectError is counted as a
	// rejection.
	ServeListener(l *HandedListener) error
}

// HandedListener is a listening socket given to a ListenerHandler.
type HandedListener struct {
	// File is the listening socket, in blocking mode for the duration of
	// the call (a program expects that of a socket it is given).
	File *os.File
	// Endpoint is the endpoint's label, such as "tcp:127.0.0.1:7079".
	Endpoint string
	// Stopping and Killed are as for HandedConn (for this call).
	Stopping, Killed context.Context
}

// EndpointChecker is implemented by factories that serve only some kinds
// of endpoint (for example, exec in wait mode cannot serve tls). validate
// reports the error at the endpoint block.
type EndpointChecker interface {
	CheckEndpoint(kind string) error
}
