package engine

import (
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// latePauseProducer records its state; its first ResumeProducing and the
// PauseProducing armed with holdNextPause wait until released, standing in
// for a goroutine that is descheduled (or waits for the producer's own
// lock) between the framework's decision and the call taking effect.
type latePauseProducer struct {
	paused                 atomic.Bool
	pauses, resumes, stops atomic.Int32
	inCall                 atomic.Int32

	resumeEntered, resumeRelease chan struct{}
	holdNextPause                atomic.Bool
	pauseEntered, pauseRelease   chan struct{}
}

func (p *latePauseProducer) PauseProducing() {
	p.inCall.Add(1)
	defer p.inCall.Add(-1)
	if p.holdNextPause.CompareAndSwap(true, false) {
		close(p.pauseEntered)
		<-p.pauseRelease
	}
	p.pauses.Add(1)
	p.paused.Store(true)
}

func (p *latePauseProducer) ResumeProducing() {
	p.inCall.Add(1)
	defer p.inCall.Add(-1)
	if p.resumes.Add(1) == 1 {
		close(p.resumeEntered)
		<-p.resumeRelease
	}
	p.paused.Store(false)
}

func (p *latePauseProducer) StopProducing() { p.stops.Add(1) }

// A pause delivered outside prodMu (the notifier is busy in a
// ResumeProducing) may take effect after the notifier's final
// ResumeProducing, if the backlog drains in between. The producer must
// still end up resumed: no resume is sent while such a pause is on its way,
// and the wish is re-sent once it has landed.
func TestLatePauseDoesNotLeaveProducerPaused(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	prod := &latePauseProducer{
		resumeEntered: make(chan struct{}), resumeRelease: make(chan struct{}),
		pauseEntered: make(chan struct{}), pauseRelease: make(chan struct{}),
	}
	var relResume, relPause sync.Once
	releaseResume := func() { relResume.Do(func() { close(prod.resumeRelease) }) }
	releasePause := func() { relPause.Do(func() { close(prod.pauseRelease) }) }
	t.Cleanup(func() { releaseResume(); releasePause() })
	if err := s.c.RegisterProducer(prod); err != nil {
		t.Fatal(err)
	}
	readN := func(n int) {
		t.Helper()
		buf := make([]byte, n)
		p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(p.client, buf); err != nil {
			t.Fatal(err)
		}
	}

	// 1. Past the high-water mark: paused. The client drains it; the
	// flusher (A) resumes the producer under prodMu, and that resume is
	// held inside the producer.
	const chunk = 1 << 20
	s.c.Write(randBytes(chunk, 71))
	if prod.pauses.Load() != 1 {
		t.Fatalf("pauses %d, want 1", prod.pauses.Load())
	}
	readN(chunk)
	select {
	case <-prod.resumeEntered:
	case <-time.After(20 * time.Second):
		t.Fatal("ResumeProducing never called")
	}

	// 2. Another goroutine (B) writes past the mark while A is busy: it
	// delivers the pause itself, but is slow about it.
	prod.holdNextPause.Store(true)
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		s.c.Write(randBytes(chunk, 73))
	}()
	select {
	case <-prod.pauseEntered:
	case <-time.After(5 * time.Second):
		t.Fatal("the overlapping PauseProducing was never called")
	}

	// 3. The client drains B's output: the connection no longer wants the
	// producer paused (the flusher's resume finds prodMu busy).
	readN(chunk)
	waitFor(t, 10*time.Second, func() bool { return !s.wantsProducerPaused() && s.c.Pending() == 0 },
		"B's output flushed and the connection wanting the producer running")

	// 4. A's resume returns; A re-sends the wish (a resume) and leaves:
	// only B is still in notifyProducer.
	releaseResume()
	waitFor(t, 5*time.Second, func() bool {
		n := 0
		someGoroutine(func(st string) bool {
			if strings.Contains(st, "engine.(*Conn).notifyProducer(") {
				n++
			}
			return false
		})
		return n == 1
	}, "the notifier to finish")

	// 5. B's pause finally takes effect.
	releasePause()
	<-bDone

	// The connection wants the producer running and has nothing pending: a
	// correct notifier resumes it again.
	deadline := time.Now().Add(2 * time.Second)
	for prod.paused.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if prod.paused.Load() && !s.wantsProducerPaused() && s.c.Pending() == 0 {
		t.Errorf("producer left paused for good: connection wants it running (producerPaused=false), "+
			"nothing pending, pauses %d, resumes %d", prod.pauses.Load(), prod.resumes.Load())
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
