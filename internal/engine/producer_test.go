// Tests of registered producers: paused above the high-water mark, resumed
// once drained, stopped at the end, and never left paused by calls that
// overlap.

package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// streamProducer writes a payload in chunks from its own goroutine while it
// is not paused, as a streaming producer does.
type streamProducer struct {
	tr      framework.Transport
	payload []byte
	chunk   int

	mu      sync.Mutex
	cond    sync.Cond
	paused  bool
	stopped bool

	written                atomic.Int64
	late                   atomic.Int64 // written while a pause was decided but not delivered
	pauses, resumes, stops atomic.Int32
	inCall                 atomic.Int32
	overlaps               atomic.Int32 // calls made while another ran
	resumeWithoutPause     atomic.Int32
	done                   chan struct{}
	blockResume            chan struct{} // if set, the next Resume waits on it
	resumeEntered          chan struct{}
	resumeBlockedOnce      sync.Once
}

func newStreamProducer(tr framework.Transport, payload []byte, chunk int) *streamProducer {
	p := &streamProducer{tr: tr, payload: payload, chunk: chunk, done: make(chan struct{})}
	p.cond.L = &p.mu
	return p
}

func (p *streamProducer) enter() {
	if p.inCall.Add(1) != 1 {
		p.overlaps.Add(1)
	}
}

func (p *streamProducer) exit() { p.inCall.Add(-1) }

func (p *streamProducer) PauseProducing() {
	p.enter()
	defer p.exit()
	p.pauses.Add(1)
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

func (p *streamProducer) ResumeProducing() {
	p.enter()
	defer p.exit()
	p.mu.Lock()
	if !p.paused {
		p.resumeWithoutPause.Add(1) // a resume for a pause not delivered yet
	}
	p.mu.Unlock()
	if p.blockResume != nil {
		p.resumeBlockedOnce.Do(func() {
			close(p.resumeEntered)
			<-p.blockResume
		})
	}
	p.resumes.Add(1)
	p.mu.Lock()
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *streamProducer) StopProducing() {
	p.enter()
	defer p.exit()
	p.stops.Add(1)
	p.mu.Lock()
	p.stopped = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *streamProducer) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// run writes until the payload is out or the producer is stopped.
func (p *streamProducer) run() {
	defer close(p.done)
	for off := 0; off < len(p.payload); {
		p.mu.Lock()
		for p.paused && !p.stopped {
			p.cond.Wait()
		}
		stopped := p.stopped
		p.mu.Unlock()
		if stopped {
			return
		}
		n := min(p.chunk, len(p.payload)-off)
		p.tr.Write(p.payload[off : off+n])
		off += n
		p.written.Add(int64(n))
		if c, ok := p.tr.(*Conn); ok && c.producerPaused.Load() && !p.isPaused() {
			// The connection wants us paused but has not told us: the
			// pause waits for a call under way on another goroutine.
			p.late.Add(int64(n))
		}
	}
}

// drainProducer reads n bytes from c while prod writes them. It fails fast
// when the producer is left paused with nothing pending (so nothing will
// ever resume it) instead of waiting for a read deadline.
func drainProducer(t *testing.T, c net.Conn, n int, prod *streamProducer, conn *Conn) ([]byte, error) {
	t.Helper()
	got := make([]byte, n)
	var progress atomic.Int64
	done := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(120 * time.Second))
		off := 0
		for off < n {
			k, err := c.Read(got[off:])
			off += k
			progress.Store(int64(off))
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var stuckSince time.Time
	for {
		select {
		case err := <-done:
			if err != nil {
				return nil, fmt.Errorf("client read after %d bytes: %w", progress.Load(), err)
			}
			select {
			case <-prod.done:
			case <-time.After(10 * time.Second):
				return nil, errors.New("the producer did not finish")
			}
			return got, nil
		case <-time.After(10 * time.Millisecond):
		}
		if prod.isPaused() && conn.Pending() == 0 && prod.written.Load() < int64(n) {
			if stuckSince.IsZero() {
				stuckSince = time.Now()
			} else if time.Since(stuckSince) > 2*time.Second {
				conn.Abort(errTestCleanup) // stops the producer, ends the read
				<-done
				<-prod.done
				conn.mu.Lock()
				fwPaused := conn.producerPaused.Load()
				conn.mu.Unlock()
				return nil, fmt.Errorf("producer left paused with nothing pending after writing %d of %d bytes "+
					"(pauses %d, resumes %d, resumes delivered to a running producer %d, Conn.producerPaused %v): "+
					"a ResumeProducing overtook the PauseProducing it answers and nothing will resume the producer",
					prod.written.Load(), n, prod.pauses.Load(), prod.resumes.Load(), prod.resumeWithoutPause.Load(), fwPaused)
			}
		} else {
			stuckSince = time.Time{}
		}
	}
}

func TestRegisterProducer(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const chunk = 16 << 10
		payload := randBytes(8<<20, 17)
		p := dialPair(t, network, pairOpts{tls: useTLS, clientRcv: 64 << 10, serverSnd: 64 << 10})
		r := newRecorder()
		var prod *streamProducer
		var regErr, secondErr error
		r.onMade = func(r *recorder) {
			prod = newStreamProducer(r.tr, payload, chunk)
			regErr = r.tr.RegisterProducer(prod)
			secondErr = r.tr.RegisterProducer(&countingProducer{})
		}
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		if regErr != nil {
			t.Fatalf("RegisterProducer: %v", regErr)
		}
		if secondErr == nil {
			t.Error("registering a second producer did not fail")
		}
		smp := samplePending(s.c)
		go prod.run()

		// The client does not read: the producer is paused once the backlog
		// passes the high-water mark, and stays paused.
		waitFor(t, 20*time.Second, func() bool { return prod.pauses.Load() > 0 }, "PauseProducing")
		stalled := waitStall(t, prod.written.Load, 300*time.Millisecond, 30*time.Second)
		if stalled >= int64(len(payload)) {
			t.Fatal("the producer wrote everything without being paused")
		}
		if !prod.isPaused() {
			t.Error("producer not paused while the client does not read")
		}

		// The client drains: the producer is resumed and finishes.
		got, err := drainProducer(t, p.client, len(payload), prod, s.c)
		if err != nil {
			smp.finish()
			t.Fatal(err)
		}
		<-prod.done
		maxPending := smp.finish()
		if !bytes.Equal(got, payload) {
			t.Fatalf("received data differs at %d", firstDiff(got, payload))
		}
		if prod.resumes.Load() == 0 {
			t.Error("ResumeProducing never called")
		}
		if n := prod.resumeWithoutPause.Load(); n != 0 {
			t.Errorf("ResumeProducing delivered %d time(s) to a producer that was not paused (overtook its PauseProducing)", n)
		}
		if pa, re := prod.pauses.Load(), prod.resumes.Load(); re > pa {
			t.Errorf("%d resumes for %d pauses", re, pa)
		}
		if n := prod.overlaps.Load(); n != 0 {
			t.Errorf("%d producer calls overlapped another", n)
		}
		// The pause comes within the write that passes the mark, unless a
		// producer call is under way on another goroutine (the flusher's
		// ResumeProducing): it then waits for that call to return, since
		// producer calls never overlap, and this producer's own goroutine
		// writes on meanwhile (late). That takes microseconds, unless the
		// goroutine making the call is descheduled (the race detector, a
		// busy machine).
		late := prod.late.Load()
		if limit := int64(framework.HighWaterMark+chunk) + late; maxPending > limit {
			t.Errorf("Pending() reached %d with a paused producer; want at most %d", maxPending, limit)
		}
		t.Logf("pauses %d, resumes %d, max pending %d, written while a pause waited %d",
			prod.pauses.Load(), prod.resumes.Load(), maxPending, late)
		if prod.stops.Load() != 0 {
			t.Error("StopProducing before the connection ended")
		}

		// The connection ends: the producer is stopped, once.
		p.client.Close()
		reason := s.wait(t, serveWait)
		if n := prod.stops.Load(); n != 1 {
			t.Errorf("StopProducing called %d times, want 1", n)
		}
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// Every write of a chunk larger than the high-water mark pauses the producer
// and the flush of a fast reader resumes it: thousands of pause/resume
// cycles. A ResumeProducing delivered before the PauseProducing it answers
// leaves the producer paused forever, with nothing pending to resume it.
func TestProducerNeverLeftPaused(t *testing.T) {
	forTransports(t, []string{"tcp", "unix"}, func(t *testing.T, network string, useTLS bool) {
		const chunk = framework.HighWaterMark + 1
		payload := randBytes(1000*chunk, 53)
		p := dialPair(t, network, pairOpts{})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		prod := newStreamProducer(s.c, payload, chunk)
		if err := s.c.RegisterProducer(prod); err != nil {
			t.Fatal(err)
		}
		// Goroutines contending for the connection's lock, as the other
		// users of a busy chat server do, widen the race window.
		stop := testkit.Repeat(2, func() bool {
			s.c.Pending()
			return true
		})
		go prod.run()
		got, err := drainProducer(t, p.client, len(payload), prod, s.c)
		stop()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("received data differs at %d", firstDiff(got, payload))
		}
		t.Logf("pauses %d, resumes %d", prod.pauses.Load(), prod.resumes.Load())
		if n := prod.resumeWithoutPause.Load(); n != 0 {
			t.Errorf("ResumeProducing delivered %d time(s) to a producer that was not paused (overtook its PauseProducing)", n)
		}
		p.client.Close()
		r.check(t, s.wait(t, serveWait))
	})
}

// A producer paused for a non-reading client is stopped when the connection
// is aborted, and after UnregisterProducer a producer is no longer called.
func TestProducerStoppedWhenConnectionEnds(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

	// An unregistered producer hears nothing.
	gone := &countingProducer{}
	if err := s.c.RegisterProducer(gone); err != nil {
		t.Fatal(err)
	}
	s.c.UnregisterProducer()

	prod := newStreamProducer(s.c, randBytes(8<<20, 19), 16<<10)
	if err := s.c.RegisterProducer(prod); err != nil {
		t.Fatalf("RegisterProducer after UnregisterProducer: %v", err)
	}
	go prod.run()
	waitFor(t, 20*time.Second, func() bool { return prod.pauses.Load() > 0 }, "PauseProducing")
	s.c.AbortConnection()
	select {
	case <-prod.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the paused producer was never stopped")
	}
	reason := s.wait(t, serveWait)
	if prod.stops.Load() != 1 {
		t.Errorf("StopProducing called %d times, want 1", prod.stops.Load())
	}
	if n := gone.pauses.Load() + gone.resumes.Load() + gone.stops.Load(); n != 0 {
		t.Errorf("an unregistered producer was called %d times", n)
	}
	if !errors.Is(reason, framework.ErrConnectionAborted) {
		t.Errorf("reason %v, want framework.ErrConnectionAborted", reason)
	}
	r.check(t, reason)
}

// heldResume sets up a producer whose first ResumeProducing is held inside
// the producer (on the flusher's goroutine) until release is closed: 1 MiB is
// written (pausing it), the client reads exactly that, the flush completes
// and the resume starts.
func heldResume(t *testing.T) (s *served, p *pair, prod *streamProducer, r *recorder) {
	t.Helper()
	p = dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r = newRecorder()
	s = serve(t, p.server, ConnOptions{MaxPendingOutput: 16 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	prod = newStreamProducer(s.c, nil, 0)
	prod.blockResume = make(chan struct{})
	prod.resumeEntered = make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-prod.blockResume:
		default:
			close(prod.blockResume)
		}
	})
	if err := s.c.RegisterProducer(prod); err != nil {
		t.Fatal(err)
	}
	const first = 1 << 20
	s.c.Write(randBytes(first, 43)) // above the high-water mark: paused
	if prod.pauses.Load() != 1 {
		t.Fatalf("pauses %d, want 1", prod.pauses.Load())
	}
	buf := make([]byte, first)
	p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(p.client, buf); err != nil {
		t.Fatal(err)
	}
	select {
	case <-prod.resumeEntered:
	case <-time.After(20 * time.Second):
		t.Fatal("ResumeProducing never called")
	}
	return s, p, prod, r
}

func (s *served) wantsProducerPaused() bool {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.producerPaused.Load()
}

// Write is non-blocking and safe from any goroutine, so it must not wait for
// a producer callback running on another goroutine: a ResumeProducing that
// takes an application lock (a chat room's) while another goroutine writes
// under that lock would deadlock.
func TestWriteDoesNotWaitForProducerCallback(t *testing.T) {
	s, p, prod, r := heldResume(t)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		s.c.Write(randBytes(1<<20, 47)) // crosses the high-water mark
	}()
	select {
	case <-wrote:
	case <-time.After(2 * time.Second):
		t.Errorf("Write from another goroutine blocked for 2s while the producer's ResumeProducing " +
			"ran on the flusher's goroutine")
	}
	close(prod.blockResume)
	<-wrote
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}

// A PauseProducing decided while a ResumeProducing is still running on
// another goroutine must leave the producer paused once both calls are over,
// as long as the connection still wants it paused. Delivering the pause in
// the middle of the resume and then letting the resume's effect win would
// leave the producer running against a backlog nothing will drain.
func TestProducerStatePausedAfterOverlappingResume(t *testing.T) {
	s, p, prod, r := heldResume(t)
	// More than the socket buffers hold, and the client reads no more: the
	// connection wants the producer paused for good.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		s.c.Write(randBytes(1<<20, 47))
	}()
	waitFor(t, 5*time.Second, s.wantsProducerPaused, "the connection to want the producer paused")
	close(prod.blockResume)
	<-wrote
	deadline := time.Now().Add(2 * time.Second)
	for !(prod.isPaused() && prod.inCall.Load() == 0) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !prod.isPaused() && s.wantsProducerPaused() {
		t.Errorf("the producer was left running while the connection wants it paused " +
			"(the resume's effect overtook a later pause)")
	}
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}

// resumeWriter is a push producer in the style Twisted allows: its
// ResumeProducing writes in a loop until it is paused, which relies on
// PauseProducing being delivered from inside its own Write once the backlog
// passes the high-water mark (Twisted calls pauseProducing synchronously,
// re-entrantly, from write()).
type resumeWriter struct {
	tr    framework.Transport
	chunk []byte
	limit int64

	paused, inResume              atomic.Bool
	pauses, resumes, stops        atomic.Int32
	pausesInResume, resumesActive atomic.Int32
	written                       atomic.Int64
}

func (p *resumeWriter) PauseProducing() {
	p.pauses.Add(1)
	if p.inResume.Load() {
		p.pausesInResume.Add(1)
	}
	p.paused.Store(true)
}

func (p *resumeWriter) ResumeProducing() {
	p.resumesActive.Add(1)
	defer p.resumesActive.Add(-1)
	p.resumes.Add(1)
	p.paused.Store(false)
	p.inResume.Store(true)
	p.produce()
	p.inResume.Store(false)
}

func (p *resumeWriter) StopProducing() {
	p.stops.Add(1)
	p.paused.Store(true)
}

func (p *resumeWriter) produce() {
	for !p.paused.Load() && p.written.Load() < p.limit && !p.tr.Disconnecting() {
		p.tr.Write(p.chunk)
		p.written.Add(int64(len(p.chunk)))
	}
}

func TestProducerPausedFromInsideResume(t *testing.T) {
	const chunk = 16 << 10
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{MaxPendingOutput: 4 << 20}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	prod := &resumeWriter{tr: s.c, chunk: randBytes(chunk, 59), limit: 256 << 20}
	if err := s.c.RegisterProducer(prod); err != nil {
		t.Fatal(err)
	}
	// Start producing; the first pause comes from inside our own Write.
	prod.produce()
	if !prod.paused.Load() && !s.finished() {
		t.Fatalf("produce returned without a pause (wrote %d)", prod.written.Load())
	}
	// Let everything written so far drain, so the flusher resumes the
	// producer; then read no more: ResumeProducing writes until the backlog
	// passes the high-water mark and must be paused from inside its Write.
	first := prod.written.Load()
	buf := make([]byte, first)
	p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(p.client, buf); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool {
		return s.finished() || (prod.resumes.Load() > 0 && prod.resumesActive.Load() == 0 && prod.paused.Load())
	}, "the producer to be resumed and paused again, or the connection to end")
	if s.finished() {
		t.Fatalf("connection ended with %v after the producer wrote %d bytes inside ResumeProducing "+
			"(pauses %d, of them inside ResumeProducing %d): PauseProducing was not delivered while the "+
			"producer's ResumeProducing was running", s.reason, prod.written.Load()-first,
			prod.pauses.Load(), prod.pausesInResume.Load())
	}
	if prod.pausesInResume.Load() == 0 {
		t.Errorf("no PauseProducing inside ResumeProducing (pauses %d, resumes %d)", prod.pauses.Load(), prod.resumes.Load())
	}
	if n := s.c.Pending(); n > framework.HighWaterMark+chunk {
		t.Errorf("Pending() = %d with the producer paused, want at most %d", n, framework.HighWaterMark+chunk)
	}
	p.client.Close()
	reason := s.wait(t, serveWait)
	if prod.stops.Load() != 1 {
		t.Errorf("StopProducing called %d times, want 1", prod.stops.Load())
	}
	r.check(t, reason)
}

// chunkProducer is a push producer in chargen's style: its protocol
// registers it in ConnectionMade and starts it, and every ResumeProducing
// writes one chunk, larger than the high-water mark, so the Write pauses it
// again at once. It never asks Disconnecting: when it is called is the
// transport's business.
type chunkProducer struct {
	tr    framework.Transport
	chunk []byte

	resumes, pauses, stops atomic.Int32
	afterStop              atomic.Int32 // calls after StopProducing
	stopped                atomic.Bool
}

func (p *chunkProducer) PauseProducing() {
	if p.stopped.Load() {
		p.afterStop.Add(1)
	}
	p.pauses.Add(1)
}

func (p *chunkProducer) ResumeProducing() {
	if p.stopped.Load() {
		p.afterStop.Add(1)
		return
	}
	p.resumes.Add(1)
	p.tr.Write(p.chunk)
}

func (p *chunkProducer) StopProducing() {
	if p.stopped.Swap(true) {
		p.afterStop.Add(1)
	}
	p.stops.Add(1)
}

// TestPeerHalfCloseStopsProducer: the peer half-closes (its FIN, while it
// goes on reading) a protocol that is not half-closeable, whose producer
// keeps the output busy. The end of stream ends the connection: the peer
// gets what was on its way, then EOF, and the producer is stopped, once,
// and called no more. The peer reads no more than the socket buffers and
// the pending output hold. (It read on for hundreds of MB: the reader did
// not see the end of stream while the resumed producer kept the flush
// going; and once it did, the flush of the last output went on resuming
// the producer, which refilled it for as long as the peer read.)
func TestPeerHalfCloseStopsProducer(t *testing.T) {
	const chunk = framework.HighWaterMark + 16<<10
	p := dialPair(t, "tcp", pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
	prod := &chunkProducer{chunk: randBytes(chunk, 61)}
	r := newRecorder()
	r.onMade = func(r *recorder) {
		prod.tr = r.tr
		if err := r.tr.RegisterProducer(prod); err != nil {
			r.violate("RegisterProducer: %v", err)
			return
		}
		prod.ResumeProducing()
	}
	s := serve(t, p.server, ConnOptions{}, r)
	// A byte first, so the reader waits for the FIN in its read, not in
	// the idle poller: the bound below is about what the end of stream
	// ends, not about how soon a parked connection wakes.
	if _, err := p.client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	// Read a while, so the producer is paused and resumed many times.
	p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(p.client, make([]byte, 4<<20)); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, p.client)
	// What can be on its way: the two socket buffers (the kernel doubles
	// the sizes asked for), and the pending output and the flush under
	// way, a chunk and the high-water mark each: well under a MB. The
	// bound also covers the runtime noticing the FIN late (its network
	// poller is checked only every 10 ms or so while every P is busy), and
	// is still a small part of what the producer sends in 100 ms.
	const bound = 32 << 20
	n, err := io.Copy(io.Discard, io.LimitReader(p.client, bound+1))
	t.Logf("read %d bytes after the half-close", n)
	if err != nil {
		t.Fatalf("client read after %d bytes: %v", n, err)
	}
	if n > bound {
		t.Fatalf("the client read more than %d bytes after its half-close, and no EOF: "+
			"the connection did not end (producer resumed %d times, stopped %d times)",
			bound, prod.resumes.Load(), prod.stops.Load())
	}
	reason := s.wait(t, serveWait)
	if !errors.Is(reason, framework.ErrConnectionDone) {
		t.Errorf("reason %v, want framework.ErrConnectionDone", reason)
	}
	if n := prod.stops.Load(); n != 1 {
		t.Errorf("StopProducing called %d times, want 1", n)
	}
	if n := prod.afterStop.Load(); n != 0 {
		t.Errorf("the producer was called %d times after StopProducing", n)
	}
	r.check(t, reason)
}

// TestPauseDecidedElsewhereReachesProducer: a producer writing until
// paused from inside a callback (Twisted's write calls pauseProducing) is
// paused by its own next Write when another goroutine's write (a chat
// line) is the one that passed the high-water mark meanwhile: otherwise it
// is told only once its call returns, which it never does before the slow
// consumer limit aborts the connection.
func TestPauseDecidedElsewhereReachesProducer(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const chunk = 16 << 10
		p := dialPair(t, network, pairOpts{tls: useTLS, clientRcv: 16 << 10, serverSnd: 16 << 10})
		var prodp atomic.Pointer[elsewhereWriter]
		r := newRecorder()
		r.onData = func(r *recorder, b []byte) {
			if prodp.Load() != nil {
				return
			}
			prod := &elsewhereWriter{resumeWriter: resumeWriter{tr: r.tr, chunk: randBytes(chunk, 61), limit: 64 << 20}}
			prodp.Store(prod)
			if err := r.tr.RegisterProducer(prod); err != nil {
				r.violate("RegisterProducer: %v", err)
				return
			}
			prod.produce()
		}
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: 4 << 20}, r)
		p.client.Write([]byte("go"))
		waitFor(t, 10*time.Second, func() bool {
			prod := prodp.Load()
			return s.finished() || (prod != nil && prod.pauses.Load() > 0)
		}, "the producer paused, or the connection ended")
		prod := prodp.Load()
		if s.finished() {
			t.Fatalf("connection ended (%v) after the producer wrote %d bytes without being paused", s.reason, prod.written.Load())
		}
		if w := prod.written.Load(); w > 2*chunk {
			t.Errorf("the producer wrote %d bytes before its pause, want at most %d", w, 2*chunk)
		}
		p.client.Close()
		r.check(t, s.wait(t, serveWait))
	})
}

// elsewhereWriter is a resumeWriter whose first write is followed by
// another goroutine's, which takes the backlog past the high-water mark.
type elsewhereWriter struct {
	resumeWriter
	once sync.Once
}

func (p *elsewhereWriter) produce() {
	for !p.paused.Load() && p.written.Load() < p.limit && !p.tr.Disconnecting() {
		p.tr.Write(p.chunk)
		p.written.Add(int64(len(p.chunk)))
		p.once.Do(func() {
			done := make(chan struct{})
			go func() { p.tr.Write(make([]byte, framework.HighWaterMark)); close(done) }()
			<-done
		})
	}
}

// TestProducerHighWaterMarkBoundary: Twisted's rule, exactly. A registered
// producer is paused by the write that takes the unsent output strictly
// above framework.HighWaterMark (HighWaterMark bytes do not pause it), once
// (the connection resumes only what it paused, so it pauses only what is
// running); it is resumed once, when the output has drained completely.
func TestProducerHighWaterMarkBoundary(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls", "bare"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		prod := &countingProducer{}
		var atMark, aboveMark, again atomic.Int32 // set by ConnectionMade
		r.onMade = func(r *recorder) {
			// Inside a callback nothing is flushed, so the output is
			// exactly what was written.
			if err := r.tr.RegisterProducer(prod); err != nil {
				r.violate("RegisterProducer: %v", err)
			}
			r.tr.Write(make([]byte, framework.HighWaterMark))
			atMark.Store(prod.pauses.Load())
			r.tr.Write([]byte{1})
			aboveMark.Store(prod.pauses.Load())
			r.tr.Write([]byte{2})
			again.Store(prod.pauses.Load())
		}
		s := serve(t, p.server, ConnOptions{}, r)
		got := make([]byte, framework.HighWaterMark+2)
		p.client.SetReadDeadline(time.Now().Add(serveWait))
		if _, err := io.ReadFull(p.client, got); err != nil {
			t.Fatalf("client read: %v", err)
		}
		if atMark.Load() != 0 || aboveMark.Load() != 1 || again.Load() != 1 {
			t.Errorf("pauses after HighWaterMark, +1, +2 bytes: %d, %d, %d; want 0, 1, 1",
				atMark.Load(), aboveMark.Load(), again.Load())
		}
		waitFor(t, 5*time.Second, func() bool { return prod.resumes.Load() == 1 }, "one resume once the output drained")
		if n := s.c.Pending(); n != 0 {
			t.Errorf("resumed with %d bytes unsent", n)
		}
		holds(t, 50*time.Millisecond, func() bool { return prod.resumes.Load() == 1 && prod.pauses.Load() == 1 },
			"pauses %d, resumes %d after the drain; want 1 and 1", prod.pauses.Load(), prod.resumes.Load())
		p.client.Close()
		reason := s.wait(t, serveWait)
		r.check(t, reason)
		if prod.stops.Load() != 1 {
			t.Errorf("StopProducing %d times at the end, want 1", prod.stops.Load())
		}
	})
}
