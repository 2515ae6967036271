// Package framework is superd's programming model, what a service author
// writes against: the Protocol, Transport and Factory interfaces, the
// factory registry, the reasons a connection ends, and the hand-off of a
// connection or listening socket to a factory that serves it itself. The
// guarantees service authors rely on (callback ordering, ConnectionLost
// exactly once, non-blocking writes, flow control) are stated here; the
// machinery that keeps them is superd's own (internal/engine).
//
// The model is Twisted's. A Factory per service builds a Protocol per
// connection; the Protocol receives events; it answers through its Transport.
//
//	type echo struct{ framework.BaseProtocol }
//
//	func (e *echo) DataReceived(data []byte) { e.Transport.Write(data) }
package framework

import "net"

// Protocol handles the events of one connection. The framework calls its
// methods one at a time (never two at once, though not always from the
// same goroutine), in this order:
// ConnectionMade once, DataReceived zero or more times, ConnectionLost once.
// DataReceived is never called after LoseConnection or AbortConnection, nor
// while the transport is paused.
//
// Callbacks should return promptly, as in Twisted: while one runs, the
// connection's output (its own writes and those of other goroutines) is
// queued and sent when it returns, in one write, so a callback that writes
// and then aborts sends nothing. Output queued behind a callback still
// counts against max_pending_output. Slow work (a disk or database call)
// belongs in a goroutine that writes its answer when done.
type Protocol interface {
	// ConnectionMade is called when the connection is ready; t stays valid
	// (and safe to keep) for the life of the connection.
	ConnectionMade(t Transport)
	// DataReceived is called with bytes read from the peer; data is never
	// empty. The slice is only valid until DataReceived returns: copy what
	// you keep.
	DataReceived(data []byte)
	// ConnectionLost is called exactly once, last, whatever ended the
	// connection. IsClean(reason) tells an orderly close from an error.
	ConnectionLost(reason error)
}

// BaseProtocol is an embeddable Protocol whose callbacks do nothing except
// remember the Transport, so a protocol implements only what it needs.
// A protocol that overrides ConnectionMade should call
// BaseProtocol.ConnectionMade(t) first (or set Transport itself).
type BaseProtocol struct {
	Transport Transport
}

// ConnectionMade stores t in p.Transport.
func (p *BaseProtocol) ConnectionMade(t Transport) { p.Transport = t }

// DataReceived discards data.
func (p *BaseProtocol) DataReceived(data []byte) {}

// ConnectionLost does nothing.
func (p *BaseProtocol) ConnectionLost(reason error) {}

// Transport is a protocol's handle on its connection.
//
// Every method is safe to call from any goroutine (a chat protocol writes to
// other users' transports) and none of them blocks on the network.
type Transport interface {
	// Write queues b for sending and returns at once; b may be reused by the
	// caller afterwards. Order is preserved. Writes after the connection is
	// gone, or after its write side was shut down, are dropped.
	Write(b []byte)
	// WriteString is Write for a string, without an intermediate copy.
	WriteString(s string)
	// LoseConnection closes the connection once everything written so far
	// (and anything written before the flush completes) has been sent. No
	// more data is delivered to the protocol. Calling it again does nothing.
	LoseConnection()
	// AbortConnection closes the connection now and drops pending output.
	AbortConnection()
	// Disconnecting reports whether LoseConnection or AbortConnection has
	// been called, or the connection is gone.
	Disconnecting() bool

	// PauseProducing stops reading from the peer: no DataReceived until
	// ResumeProducing.
	PauseProducing()
	// ResumeProducing undoes PauseProducing.
	ResumeProducing()
	// RegisterProducer registers a streaming producer of outgoing data: it is
	// paused while the connection's unsent output is above the high-water
	// mark, resumed once that output has drained, and stopped when the
	// connection ends. Its methods are called one at a time with the
	// protocol's callbacks, never beside them, so a protocol can be its own
	// producer. A write that passes the mark from inside a callback or a
	// producer call pauses the producer within that write, as Twisted does
	// (a ResumeProducing may write until paused); a write from another
	// goroutine while a callback runs pauses it once that callback has
	// returned, so a producer writing from its own goroutine may pass the
	// mark by what it writes meanwhile. Registering a second producer is an
	// error; on a connection already gone, p is stopped instead.
	RegisterProducer(p Producer) error
	// UnregisterProducer forgets the registered producer, if any.
	UnregisterProducer()

	// PeerAddr is the remote address (for unix sockets, usually unnamed).
	PeerAddr() net.Addr
	// LocalAddr is the local address the connection was accepted on.
	LocalAddr() net.Addr
}

// OutputRoomer is implemented by transports that tell a push producer how
// much it may write before the connection's unsent output passes the
// high-water mark. The write that passes the mark pauses the producer (the
// rule is Twisted's: paused once the output is strictly above the mark), so
// a producer that never writes more than OutputRoom()+1 bytes at a time
// holds at most the mark and one byte, not the mark and a whole write.
// superd's connections implement it; a transport that does not leaves the
// producer to its own chunk size.
type OutputRoomer interface {
	// OutputRoom is HighWaterMark less the unsent output, and 0 once the
	// output has reached the mark.
	OutputRoom() int
}

// HalfCloseableProtocol is implemented by protocols that go on writing
// after the peer has closed its side of the connection (Twisted's
// IHalfCloseableProtocol). When the peer's end of stream arrives, the
// framework calls ReadConnectionLost, like any other callback, instead of
// closing: no DataReceived follows, but the connection stays open for
// writing until the protocol calls LoseConnection or AbortConnection (or
// superd ends it: idle timeout, drain, shutdown). Protocols that do not
// implement it see the connection close once the peer's end of stream has
// arrived and their output is flushed.
type HalfCloseableProtocol interface {
	Protocol
	ReadConnectionLost()
}

// Drainer is implemented by protocols that finish a drain (shutdown,
// reload) themselves rather than being closed at once: a proxy, whose
// client's last request may still be on its way to the upstream and the
// answer on its way back. Once what had arrived is delivered (after the
// protocol resumes reading, if it had paused), superd calls
// ConnectionDraining, like any other callback, instead of LoseConnection:
// no more input is read, though the peer has not ended its stream (so it
// is not ReadConnectionLost: a proxy must not pass it on as an end of
// stream), and the protocol calls LoseConnection once its work in flight
// is done. shutdown_timeout bounds it.
type Drainer interface {
	Protocol
	ConnectionDraining()
}

// Blocker is implemented by protocols whose callbacks may block for a
// while (a network round trip, a write to a pipe): while Blocks reports
// true, superd delivers the connection's input on a goroutine of its own.
// Where superd runs on one CPU, one event loop otherwise serves every
// plain TCP and unix connection, and a callback that blocks there holds
// all of them up. Blocks is called between callbacks, never beside one,
// and must only read the protocol's own state: it must not call the
// transport.
type Blocker interface {
	Protocol
	Blocks() bool
}

// HalfCloser is implemented by transports that can close their write side
// alone (superd's stream transports do), as Twisted's loseWriteConnection.
type HalfCloser interface {
	// LoseWriteConnection sends the peer an end of stream (a FIN; under
	// TLS a close_notify and a FIN) once everything written so far has
	// been sent; reading goes on. Writes made before that moment are sent,
	// later ones are dropped. LoseConnection afterwards closes the
	// connection: at once if the peer's end of stream has arrived, else
	// once it arrives (or after a short linger).
	LoseWriteConnection()
}

// Aborter is implemented by transports that can be aborted with a reason
// of the protocol's choosing (superd's stream transports do):
// AbortConnection with, for example, ErrUpstream, which superd counts as a
// drop with that reason.
type Aborter interface {
	Abort(reason error)
}

// Producer is a source of outgoing data that can be paused, resumed and
// stopped, as Twisted's push producers are.
type Producer interface {
	PauseProducing()
	ResumeProducing()
	StopProducing()
}

// Factory builds one Protocol per accepted connection of a service and holds
// the state its connections share.
type Factory interface {
	// BuildProtocol returns the protocol for a new connection from addr, or
	// nil to refuse it (the connection is closed at once and no callback
	// runs). It may be called from many goroutines at once.
	BuildProtocol(addr net.Addr) Protocol
}

// FactoryStarter is implemented by factories that acquire shared resources.
// StartFactory runs once, before the first endpoint of the service accepts;
// an error stops the service from starting.
type FactoryStarter interface {
	StartFactory() error
}

// FactoryStopper is implemented by factories that release shared resources.
// StopFactory runs once, after the last endpoint has closed and the last
// connection has ended.
type FactoryStopper interface {
	StopFactory() error
}

// Reopener is implemented by factories that hold files, which they reopen on
// SIGUSR1 (for log rotation).
type Reopener interface {
	Reopen() error
}

// Interrupter is implemented by factories whose protocols may wait, inside
// a callback, on something outside their connection (a pipe nobody reads,
// a stalled disk). When a drain runs out of time superd aborts the
// connections, whose end waits for their callbacks to return; it then
// calls Interrupt, which must make such waits fail soon, and keep failing
// them from then on, so that the connections end and StopFactory runs.
type Interrupter interface {
	Interrupt()
}

// FactoryFunc adapts a function to the Factory interface.
type FactoryFunc func(addr net.Addr) Protocol

// BuildProtocol calls f(addr).
func (f FactoryFunc) BuildProtocol(addr net.Addr) Protocol { return f(addr) }

// ForProtocol returns a Factory that builds a fresh protocol with newProtocol
// for every connection, like Twisted's Factory.forProtocol.
func ForProtocol(newProtocol func() Protocol) Factory {
	return FactoryFunc(func(net.Addr) Protocol { return newProtocol() })
}
