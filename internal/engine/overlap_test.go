package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/basic"
)

// A pause decided by another goroutine's write while a producer call runs
// (here the flusher's ResumeProducing, held inside the producer) neither
// runs beside that call nor is lost: the goroutine running the call
// delivers it once the call has returned, before its turn ends. The write
// itself does not wait. Once the client has read that output too, the
// producer is resumed again: it ends neither paused for good nor running
// against a backlog.
func TestPauseDuringResumeIsDeliveredAfterIt(t *testing.T) {
	s, p, prod, r := heldResume(t)
	readN := func(n int) {
		t.Helper()
		buf := make([]byte, n)
		p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(p.client, buf); err != nil {
			t.Fatal(err)
		}
	}

	// Another goroutine writes past the mark while the resume is held.
	const chunk = 1 << 20
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		s.c.Write(randBytes(chunk, 73))
	}()
	select {
	case <-wrote:
	case <-time.After(5 * time.Second):
		t.Fatal("Write waited for the producer's ResumeProducing")
	}
	if !s.wantsProducerPaused() {
		t.Fatal("the connection does not want the producer paused after 1 MiB the client has not read")
	}
	holds(t, 100*time.Millisecond, func() bool { return prod.pauses.Load() == 1 },
		"PauseProducing delivered while ResumeProducing was still running")

	// The resume returns: the pause follows.
	close(prod.blockResume)
	waitFor(t, 10*time.Second, func() bool { return prod.pauses.Load() == 2 && prod.isPaused() },
		"the pause decided during the resume, once the resume has returned")

	// The client reads that output: the producer is resumed.
	readN(chunk)
	waitFor(t, 10*time.Second, func() bool {
		return !prod.isPaused() && prod.inCall.Load() == 0 && !s.wantsProducerPaused() && s.c.Pending() == 0
	}, "the producer resumed once its output drained")
	if n := prod.overlaps.Load(); n != 0 {
		t.Errorf("%d producer calls overlapped another", n)
	}
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}

// fillSendBuffer writes raw bytes under the TLS layer until the socket's
// send buffer is full (the client does not read): the state a connection is
// in after its last flush exactly filled the kernel buffers of a slow reader.
func fillSendBuffer(t *testing.T, p *pair) {
	t.Helper()
	defer p.serverRaw.SetWriteDeadline(time.Time{})
	junk := make([]byte, 4<<10)
	for round := 0; round < 10; round++ {
		p.serverRaw.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			if _, err := p.serverRaw.Write(junk); err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("filling the send buffer: %v", err)
				}
				break
			}
		}
		// Full for good once even an alert-sized write does not fit.
		p.serverRaw.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if n, _ := p.serverRaw.Write(junk[:31]); n == 0 {
			return
		}
	}
	t.Fatal("could not fill the server's send buffer")
}

// closeNotifyUnderWay reports whether the connection is sending the TLS
// close_notify alert (it waits for room in the peer's window, for up to the
// 5 s crypto/tls gives it).
func closeNotifyUnderWay() bool {
	return someGoroutine(func(st string) bool {
		return strings.Contains(st, "superd/internal/engine.") && strings.Contains(st, "crypto/tls.(*Conn).closeNotify")
	})
}

// assertTransportFreeDuringCloseNotify: while the close_notify waits for a
// peer whose window is full, the framework.Transport stays usable from other
// goroutines: a Write (dropped: the connection is closing) returns while the
// alert is still under way, instead of waiting for it with the lock held.
func assertTransportFreeDuringCloseNotify(t *testing.T, s *served) {
	t.Helper()
	waitFor(t, 5*time.Second, closeNotifyUnderWay, "the close_notify to be under way")
	s.c.Write([]byte("a line for a user who is leaving\n"))
	_ = s.c.Disconnecting()
	if !closeNotifyUnderWay() {
		t.Error("Write and Disconnecting returned only once the close_notify was done: they waited for it")
	}
}

// TLS, LoseConnection: the close_notify goes out without the connection's
// lock and without blocking the caller.
func TestTLSCloseNotifyOnLoseConnectionLeavesTransportFree(t *testing.T) {
	p := dialPair(t, "unix", pairOpts{tls: true, clientRcv: 32 << 10, serverSnd: 32 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	fillSendBuffer(t, p)
	s.c.LoseConnection() // nothing pending: the write side shuts at once
	if !closeNotifyUnderWay() {
		waitFor(t, 5*time.Second, closeNotifyUnderWay, "the close_notify to be under way")
	}
	// LoseConnection returned, the alert is still on its way.
	assertTransportFreeDuringCloseNotify(t, s)
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}

// TLS, the peer's EOF: the close that follows sends close_notify too, also
// without the lock.
func TestTLSCloseNotifyOnPeerEOFLeavesTransportFree(t *testing.T) {
	p := dialPair(t, "unix", pairOpts{tls: true, clientRcv: 32 << 10, serverSnd: 32 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	fillSendBuffer(t, p)
	if err := p.client.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	assertTransportFreeDuringCloseNotify(t, s)
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}

// Abort during the linger (our FIN is out, the peer has not read all our
// output yet) resets the socket, so the peer loses the unread tail: the
// reason is then the abort's, not the clean framework.ErrConnectionDone
// recorded with the FIN.
func TestAbortDuringLingerReason(t *testing.T) {
	const size = 2 << 20
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 4 << 20})
	payload := randBytes(size, 83)
	r := newRecorder()
	r.onMade = func(r *recorder) {
		r.tr.Write(payload) // fits in the server's send buffer
		r.lose()
	}
	s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
	waitFor(t, 10*time.Second, func() bool {
		s.c.mu.Lock()
		defer s.c.mu.Unlock()
		return s.c.writeShut
	}, "the graceful close to reach the linger")
	s.c.Abort(framework.ErrShutdownTimeout) // e.g. the shutdown drain ran out of time
	reason := s.wait(t, serveWait)
	got, err := readAll(p.client, 30*time.Second)
	if framework.IsClean(reason) && (len(got) != size || err != io.EOF) {
		t.Errorf("ConnectionLost said clean (%v) after Abort(framework.ErrShutdownTimeout), but the client read %d of %d bytes, then %v",
			reason, len(got), size, err)
	}
	r.check(t, reason)
}

// panickyProducer panics when told to pause.
type panickyProducer struct{ countingProducer }

func (p *panickyProducer) PauseProducing() { panic("producer bug") }

// A producer's panic ends only its connection, like a protocol's: the pause
// runs in the goroutine that wrote past the high-water mark (here the test's;
// in chat, another user's reader), and that goroutine carries on.
func TestProducerPanicEndsOnlyItsConnection(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{clientRcv: 32 << 10, serverSnd: 32 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{MaxPendingOutput: 64 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	prod := &panickyProducer{}
	if err := s.c.RegisterProducer(prod); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 16<<10)
	for i := 0; i < 64 && !s.finished(); i++ { // the client does not read
		s.c.Write(chunk) // must not panic here
	}
	reason := s.wait(t, serveWait)
	var pe *framework.PanicError
	if !errors.As(reason, &pe) || pe.Value != "producer bug" {
		t.Errorf("reason %v, want the producer's *framework.PanicError", reason)
	}
	if prod.stops.Load() != 1 {
		t.Errorf("StopProducing called %d times, want 1", prod.stops.Load())
	}
	r.check(t, reason)
}

// selfProducer is a protocol registered as its own transport's producer, as
// a line receiver that pauses and resumes along with its transport is. Its
// state is deliberately unsynchronised: a producer call that overlaps a
// protocol callback is a data race for the race detector. active counts the
// callbacks running, for the same check without it: a PauseProducing may
// only run inside one of the protocol's own writes (nested, as Twisted
// delivers it from write()).
type selfProducer struct {
	t framework.Transport

	active   atomic.Int32
	writing  atomic.Bool // inside one of our own Writes
	overlaps atomic.Int32
	lost     chan error

	// Unsynchronised: every callback touches them.
	calls           int
	paused          bool
	received        int
	pauses, resumes int
	stops           int
}

func (p *selfProducer) enter(nestedOK bool) {
	if n := p.active.Add(1); n != 1 && !(nestedOK && p.writing.Load()) {
		p.overlaps.Add(1)
	}
	p.calls++
}

func (p *selfProducer) exit() { p.active.Add(-1) }

func (p *selfProducer) write(b []byte) {
	p.writing.Store(true)
	p.t.Write(b)
	p.writing.Store(false)
}

func (p *selfProducer) ConnectionMade(t framework.Transport) {
	p.enter(false)
	defer p.exit()
	p.t = t
	if err := t.RegisterProducer(p); err != nil {
		panic(err)
	}
}

// echoes is how many times selfProducer echoes what arrives: one TLS
// record (16 KiB) then passes the high-water mark.
const echoes = 5

// DataReceived echoes five times what arrives, so the output backs up
// faster than the peer reads it. It writes in small pieces, so it runs
// long enough for a flusher to drain the output meanwhile.
func (p *selfProducer) DataReceived(b []byte) {
	p.enter(false)
	defer p.exit()
	p.received += len(b)
	for i := 0; i < echoes; i++ {
		for rest := b; len(rest) > 0; {
			n := min(len(rest), 512)
			p.write(rest[:n])
			rest = rest[n:]
			p.calls++
		}
	}
}

func (p *selfProducer) PauseProducing() {
	p.enter(true)
	defer p.exit()
	p.paused = true
	p.pauses++
}

// ResumeProducing writes a marker, as a line receiver delivers the lines
// it held while paused.
func (p *selfProducer) ResumeProducing() {
	p.enter(false)
	defer p.exit()
	p.write([]byte{'R'})
	p.paused = false
	p.resumes++
}

func (p *selfProducer) StopProducing() {
	p.enter(false)
	defer p.exit()
	p.stops++
}

func (p *selfProducer) ConnectionLost(reason error) {
	p.enter(false)
	p.calls++
	p.exit()
	p.lost <- reason
}

// A protocol that is its own transport's producer is paused and resumed as
// its output backs up and drains, while input keeps arriving: every
// producer call runs one at a time with its DataReceived, never beside it
// (SPEC section 5: a connection's callbacks never overlap). Before producer
// calls were serialised with the protocol's callbacks, the flusher resumed
// the producer on its own goroutine while DataReceived ran on the reader's.
func TestSelfProducerCallbacksNeverOverlap(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		pr := dialPair(t, network, pairOpts{tls: useTLS})
		p := &selfProducer{lost: make(chan error, 1)}
		s := serve(t, pr.server, ConnOptions{}, p)

		const size = 2 << 20
		payload := bytes.Repeat([]byte("0123456789abcdef"), size/16)
		sent := make(chan error, 1)
		go func() {
			_, err := pr.client.Write(payload)
			if err == nil {
				err = pr.client.(interface{ CloseWrite() error }).CloseWrite()
			}
			sent <- err
		}()
		// The client reads as it can, in small pieces, until the server
		// closes after our end of stream.
		var echoed, markers int
		buf := make([]byte, 4<<10)
		pr.client.SetReadDeadline(time.Now().Add(serveWait))
		for {
			n, err := pr.client.Read(buf)
			for _, b := range buf[:n] {
				if b == 'R' {
					markers++
				} else {
					echoed++
				}
			}
			if err != nil {
				break
			}
		}
		if err := <-sent; err != nil {
			t.Fatalf("client write: %v", err)
		}
		var reason error
		select {
		case reason = <-p.lost:
		case <-time.After(serveWait):
			t.Fatal("ConnectionLost never came")
		}
		s.wait(t, serveWait)
		if n := p.overlaps.Load(); n != 0 {
			t.Errorf("%d callbacks overlapped another", n)
		}
		if echoed != echoes*size {
			t.Errorf("echoed %d bytes, want %d", echoed, echoes*size)
		}
		if p.pauses == 0 || p.resumes == 0 {
			t.Errorf("pauses %d, resumes %d: flow control never engaged", p.pauses, p.resumes)
		}
		if p.stops != 1 {
			t.Errorf("StopProducing called %d times, want 1", p.stops)
		}
		t.Logf("%v; pauses %d, resumes %d (markers %d)", reason, p.pauses, p.resumes, markers)
	})
}

// lineEcho is a line receiver registered as its own transport's producer:
// its PauseProducing and ResumeProducing are the receiver's, which pause
// and resume the transport, and the resume delivers the lines that arrived
// meanwhile. lines is deliberately unsynchronised (see selfProducer).
type lineEcho struct {
	basic.LineReceiver
	lines int
}

func (p *lineEcho) ConnectionMade(t framework.Transport) {
	p.Init(t, p)
	if err := t.RegisterProducer(p); err != nil {
		panic(err)
	}
}

func (p *lineEcho) LineReceived(line []byte) {
	p.lines++
	for range echoes {
		p.SendLine(line)
	}
}

// The case the bug report came from: a basic.LineReceiver that is its own
// producer gets LineReceived from its ResumeProducing (the lines held while
// paused) and from DataReceived; the two never run at once, and every line
// is answered.
func TestLineReceiverAsItsOwnProducer(t *testing.T) {
	forTransports(t, []string{"tcp", "tls"}, func(t *testing.T, network string, useTLS bool) {
		pr := dialPair(t, network, pairOpts{tls: useTLS})
		p := &lineEcho{}
		s := serve(t, pr.server, ConnOptions{}, p)

		const lines = 20000
		var in bytes.Buffer
		for i := range lines {
			fmt.Fprintf(&in, "line %05d of the client, long enough to matter\r\n", i)
		}
		sent := make(chan error, 1)
		go func() {
			_, err := pr.client.Write(in.Bytes())
			sent <- err
		}()
		got := 0
		buf := make([]byte, 4<<10)
		pr.client.SetReadDeadline(time.Now().Add(serveWait))
		for got < echoes*lines {
			n, err := pr.client.Read(buf)
			got += bytes.Count(buf[:n], []byte("\n"))
			if err != nil {
				t.Fatalf("client read after %d of %d lines: %v", got, echoes*lines, err)
			}
		}
		if err := <-sent; err != nil {
			t.Fatalf("client write: %v", err)
		}
		pr.client.Close()
		s.wait(t, serveWait)
		if p.lines != lines {
			t.Errorf("LineReceived %d times, want %d", p.lines, lines)
		}
	})
}
