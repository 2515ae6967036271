// Package frameworktest helps test a protocol without a socket. Transport
// is an in-memory framework.Transport that records what a protocol does
// with it (its writes, LoseConnection and AbortConnection, pauses of the
// peer and its producer), so a test can call the protocol's callbacks
// itself and look at the outcome:
//
//	tr := &frameworktest.Transport{}
//	p := factory.BuildProtocol(tr.PeerAddr())
//	p.ConnectionMade(tr)
//	p.DataReceived([]byte("hello\r\n"))
//	if got := tr.Take(); got != "hello\r\n" { ... }
//
// It is public so that the authors of services outside this repository
// can test their protocols as superd's own are tested. What it does not
// do is the framework's connection machinery (buffering, flow control,
// timeouts, TLS); to exercise a protocol through that, serve it from a
// real superd (or, within this repository, services/internal/servicetest).
package frameworktest

import (
	"bytes"
	"errors"
	"net"
	"sync"

	"github.com/superd-dev/superd/framework"
)

// Transport is an in-memory framework.Transport. The zero value is ready
// to use, and its methods may be called from several goroutines at once.
//
// Writes are kept, each as its own copy, until the protocol calls
// LoseConnection or AbortConnection; later ones are dropped, as a real
// connection drops them once its output is flushed (which for this
// transport is at once). Empty writes are ignored.
//
// RegisterProducer keeps the producer and, like the framework, neither
// resumes nor pauses it: a test does that with Producer, or from OnWrite
// to model a connection whose output is full.
type Transport struct {
	// Peer and Local are what PeerAddr and LocalAddr return; when nil,
	// 127.0.0.1:1 and 127.0.0.1:2 over tcp.
	Peer, Local net.Addr
	// OnWrite, when set, is called with every write the transport takes,
	// after taking it and without holding the transport's lock, from the
	// goroutine that wrote. b is valid only during the call.
	OnWrite func(b []byte)
	// Discard makes the transport count writes without keeping them: for
	// a protocol that writes a lot, or an allocation count that should
	// see only the protocol's own.
	Discard bool

	mu       sync.Mutex
	writes   [][]byte
	nwrites  int
	lost     int
	aborted  bool
	paused   bool
	pauses   int
	resumes  int
	producer framework.Producer
}

var _ framework.Transport = (*Transport)(nil)

// Write implements framework.Transport.
func (t *Transport) Write(b []byte) {
	if len(b) == 0 {
		return
	}
	t.mu.Lock()
	if t.lost > 0 || t.aborted {
		t.mu.Unlock()
		return
	}
	t.nwrites++
	if !t.Discard {
		t.writes = append(t.writes, bytes.Clone(b))
	}
	onWrite := t.OnWrite
	t.mu.Unlock()
	if onWrite != nil {
		onWrite(b)
	}
}

// WriteString implements framework.Transport.
func (t *Transport) WriteString(s string) { t.Write([]byte(s)) }

// LoseConnection implements framework.Transport; each call is counted (see
// Lost).
func (t *Transport) LoseConnection() {
	t.mu.Lock()
	t.lost++
	t.mu.Unlock()
}

// AbortConnection implements framework.Transport.
func (t *Transport) AbortConnection() {
	t.mu.Lock()
	t.aborted = true
	t.mu.Unlock()
}

// Disconnecting implements framework.Transport: it reports whether
// LoseConnection or AbortConnection has been called.
func (t *Transport) Disconnecting() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lost > 0 || t.aborted
}

// PauseProducing implements framework.Transport.
func (t *Transport) PauseProducing() {
	t.mu.Lock()
	t.paused = true
	t.pauses++
	t.mu.Unlock()
}

// ResumeProducing implements framework.Transport.
func (t *Transport) ResumeProducing() {
	t.mu.Lock()
	t.paused = false
	t.resumes++
	t.mu.Unlock()
}

// RegisterProducer implements framework.Transport. Registering a second
// producer is an error, as it is on a real connection.
func (t *Transport) RegisterProducer(p framework.Producer) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.producer != nil {
		return errors.New("frameworktest: a producer is already registered")
	}
	t.producer = p
	return nil
}

// UnregisterProducer implements framework.Transport.
func (t *Transport) UnregisterProducer() {
	t.mu.Lock()
	t.producer = nil
	t.mu.Unlock()
}

// PeerAddr implements framework.Transport.
func (t *Transport) PeerAddr() net.Addr {
	if t.Peer != nil {
		return t.Peer
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
}

// LocalAddr implements framework.Transport.
func (t *Transport) LocalAddr() net.Addr {
	if t.Local != nil {
		return t.Local
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}
}

// Writes returns the writes kept so far, in order.
func (t *Transport) Writes() [][]byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([][]byte(nil), t.writes...)
}

// Written returns the writes kept so far, joined.
func (t *Transport) Written() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Join(t.writes, nil)
}

// Take returns the writes kept since the last Take, joined, and forgets
// them.
func (t *Transport) Take() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := string(bytes.Join(t.writes, nil))
	t.writes = nil
	return s
}

// WriteCount is the number of writes taken, kept or discarded.
func (t *Transport) WriteCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nwrites
}

// Lost is the number of LoseConnection calls.
func (t *Transport) Lost() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lost
}

// Aborted reports whether AbortConnection has been called.
func (t *Transport) Aborted() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.aborted
}

// Paused reports whether the protocol has paused the peer (PauseProducing
// without a ResumeProducing since).
func (t *Transport) Paused() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.paused
}

// Pauses and Resumes are the numbers of PauseProducing and ResumeProducing
// calls.
func (t *Transport) Pauses() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pauses
}

// Resumes: see Pauses.
func (t *Transport) Resumes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.resumes
}

// Producer returns the registered producer, or nil.
func (t *Transport) Producer() framework.Producer {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.producer
}
