package engine

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// halfRecorder is a recorder that is half-closeable: ReadConnectionLost is
// recorded (and checked: once, after ConnectionMade, before ConnectionLost,
// with no DataReceived after it) and handed to onReadLost.
type halfRecorder struct {
	*recorder
	onReadLost func(h *halfRecorder)
	readLost   atomic.Int32
	dataAfter  atomic.Int32 // DataReceived after ReadConnectionLost
}

func newHalfRecorder() *halfRecorder { return &halfRecorder{recorder: newRecorder()} }

func (h *halfRecorder) DataReceived(b []byte) {
	if h.readLost.Load() != 0 {
		h.dataAfter.Add(1)
	}
	h.recorder.DataReceived(b)
}

func (h *halfRecorder) ReadConnectionLost() {
	h.enter("ReadConnectionLost")
	defer h.exit()
	h.mu.Lock()
	if h.made != 1 || h.lost != 0 {
		h.violations = append(h.violations, "ReadConnectionLost out of order")
	}
	h.events = append(h.events, "readlost")
	h.mu.Unlock()
	if h.readLost.Add(1) != 1 {
		h.violate("ReadConnectionLost called twice")
	}
	if h.onReadLost != nil {
		h.onReadLost(h)
	}
}

func (h *halfRecorder) check(t testing.TB, served error) {
	t.Helper()
	h.recorder.check(t, served)
	if n := h.dataAfter.Load(); n != 0 {
		t.Errorf("DataReceived %d times after ReadConnectionLost", n)
	}
}

// closeWrite half-closes the test's end: a FIN, or close_notify under TLS.
func closeWrite(t testing.TB, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("client CloseWrite: %v", err)
	}
}

// TestReadConnectionLost: a half-closeable protocol learns of the peer's
// end of stream, keeps writing (from the callback and from another
// goroutine) and the peer receives it all before the clean close that
// follows the protocol's LoseConnection.
func TestReadConnectionLost(t *testing.T) {
	forTransports(t, nil, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		h := newHalfRecorder()
		h.keep = true
		reply := randBytes(1<<20, 7) // more than the socket buffers hold
		h.onReadLost = func(h *halfRecorder) {
			h.tr.WriteString("after EOF:")
			go func() {
				h.tr.Write(reply)
				h.tr.LoseConnection()
			}()
		}
		s := serve(t, p.server, ConnOptions{}, h)
		if _, err := p.client.Write([]byte("question")); err != nil {
			t.Fatal(err)
		}
		closeWrite(t, p.client)
		got, err := readAll(p.client, serveWait)
		if err != io.EOF {
			t.Fatalf("client read ended with %v, want EOF", err)
		}
		want := append([]byte("after EOF:"), reply...)
		if !bytes.Equal(got, want) {
			t.Fatalf("client read %d bytes, want the %d written after its EOF", len(got), len(want))
		}
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		h.check(t, reason)
		if string(h.bytes()) != "question" {
			t.Errorf("received %q, want %q", h.bytes(), "question")
		}
		if h.readLost.Load() != 1 {
			t.Errorf("ReadConnectionLost called %d times, want 1", h.readLost.Load())
		}
	})
}

// TestReadConnectionLostThenAbort: an abort after the peer's end of stream
// ends the connection with the abort's reason.
func TestReadConnectionLostThenAbort(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	h := newHalfRecorder()
	h.onReadLost = func(h *halfRecorder) {
		go h.tr.(framework.Aborter).Abort(framework.ErrUpstream)
	}
	s := serve(t, p.server, ConnOptions{}, h)
	closeWrite(t, p.client)
	reason := s.wait(t, serveWait)
	if !errors.Is(reason, framework.ErrUpstream) || !errors.Is(reason, framework.ErrConnectionAborted) {
		t.Errorf("reason %v, want framework.ErrUpstream (an abort)", reason)
	}
	h.check(t, reason)
}

// TestReadConnectionLostDrain: a Drain while the protocol holds a
// half-closed connection closes it gracefully, output flushed.
func TestReadConnectionLostDrain(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	h := newHalfRecorder()
	told := make(chan struct{})
	h.onReadLost = func(h *halfRecorder) {
		h.tr.WriteString("bye")
		close(told)
	}
	s := serve(t, p.server, ConnOptions{}, h)
	closeWrite(t, p.client)
	<-told
	s.c.Drain()
	got, err := readAll(p.client, serveWait)
	if err != io.EOF || string(got) != "bye" {
		t.Fatalf("client read %q, %v; want \"bye\" and EOF", got, err)
	}
	reason := s.wait(t, serveWait)
	if !framework.IsClean(reason) {
		t.Errorf("reason %v, want clean", reason)
	}
	h.check(t, reason)
}

// TestReadConnectionLostIdleTimeout: the idle timeout still applies to a
// half-closed connection (nothing more can be received).
func TestReadConnectionLostIdleTimeout(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	h := newHalfRecorder()
	s := serve(t, p.server, ConnOptions{IdleTimeout: 100 * time.Millisecond}, h)
	closeWrite(t, p.client)
	reason := s.wait(t, serveWait)
	if !errors.Is(reason, framework.ErrIdleTimeout) {
		t.Errorf("reason %v, want framework.ErrIdleTimeout", reason)
	}
	h.check(t, reason)
}

// TestNotHalfCloseableClosesOnEOF: without ReadConnectionLost the peer's
// end of stream still closes the connection (flushed) as before.
func TestNotHalfCloseableClosesOnEOF(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := echoRecorder()
	s := serve(t, p.server, ConnOptions{}, r)
	p.client.Write([]byte("ping"))
	closeWrite(t, p.client)
	got, err := readAll(p.client, serveWait)
	if err != io.EOF || string(got) != "ping" {
		t.Fatalf("client read %q, %v; want \"ping\" and EOF", got, err)
	}
	reason := s.wait(t, serveWait)
	if !framework.IsClean(reason) {
		t.Errorf("reason %v, want clean", reason)
	}
	r.check(t, reason)
}

// TestLoseWriteConnection: the protocol ends its output (the peer sees
// everything, then EOF) and goes on receiving; writes after the end of
// stream went out are dropped; the peer's own end of stream then closes
// the connection cleanly once the protocol calls LoseConnection.
func TestLoseWriteConnection(t *testing.T) {
	forTransports(t, nil, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		h := newHalfRecorder()
		h.keep = true
		greeting := randBytes(1<<20, 9)
		h.onMade = func(r *recorder) {
			r.tr.Write(greeting)
			r.tr.(framework.HalfCloser).LoseWriteConnection()
			r.tr.WriteString("!") // before the flush completes: still sent
		}
		h.onReadLost = func(h *halfRecorder) {
			h.tr.WriteString("dropped") // after our end of stream
			h.tr.LoseConnection()
		}
		s := serve(t, p.server, ConnOptions{}, h)
		got, err := readAll(p.client, serveWait)
		if err != io.EOF {
			t.Fatalf("client read ended with %v, want EOF", err)
		}
		if want := append(bytes.Clone(greeting), '!'); !bytes.Equal(got, want) {
			t.Fatalf("client read %d bytes, want %d", len(got), len(want))
		}
		// The server still reads after its end of stream.
		payload := randBytes(256<<10, 10)
		if _, err := p.client.Write(payload); err != nil {
			t.Fatalf("client write after the server's EOF: %v", err)
		}
		waitFor(t, serveWait, func() bool { return h.receivedBytes() == len(payload) }, "payload received after LoseWriteConnection")
		closeWrite(t, p.client)
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		h.check(t, reason)
		if !bytes.Equal(h.bytes(), payload) {
			t.Errorf("server received %d bytes, not the %d sent", len(h.bytes()), len(payload))
		}
		if got, _ := readAll(p.client, time.Second); len(got) != 0 {
			t.Errorf("client read %q after EOF", got)
		}
	})
}

// TestLoseWriteConnectionThenLoseConnection: LoseConnection after
// LoseWriteConnection, before the peer's end of stream, still closes the
// connection (after the linger) with a clean reason.
func TestLoseWriteConnectionThenLoseConnection(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := newRecorder()
	r.onMade = func(r *recorder) {
		r.tr.WriteString("hi")
		r.tr.(framework.HalfCloser).LoseWriteConnection()
		r.tr.LoseConnection()
	}
	s := serve(t, p.server, ConnOptions{}, r)
	got, err := readAll(p.client, serveWait)
	if err != io.EOF || string(got) != "hi" {
		t.Fatalf("client read %q, %v; want \"hi\" and EOF", got, err)
	}
	p.client.Close()
	reason := s.wait(t, serveWait)
	if !framework.IsClean(reason) {
		t.Errorf("reason %v, want clean", reason)
	}
	r.check(t, reason)
}

// drainRecorder is a protocol that finishes a drain itself
// (framework.Drainer), recording when it was told.
type drainRecorder struct {
	*recorder
	drainings    atomic.Int32
	receivedThen atomic.Int32 // bytes received when ConnectionDraining came
}

func (d *drainRecorder) ConnectionDraining() {
	d.receivedThen.Store(int32(d.receivedBytes()))
	d.drainings.Add(1)
}

// TestDrainTellsDrainer: a Drain of a framework.Drainer delivers what had
// arrived, also while it had paused reading, then calls ConnectionDraining
// (once) and leaves the connection to it: output it writes afterwards
// reaches the peer, and its LoseConnection ends the connection cleanly.
// (A Drainer paused with its input still in the kernel is waited for: the
// proxy's TestDrainWhileReachingUpstream.)
func TestDrainTellsDrainer(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	d := &drainRecorder{recorder: newRecorder()}
	s := serve(t, p.server, ConnOptions{}, d)
	if _, err := p.client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return d.receivedBytes() == 3 }, "the first input delivered")
	d.tr.PauseProducing()
	if _, err := p.client.Write([]byte("def")); err != nil {
		t.Fatal(err)
	}
	// In superd's kernel (or read and held for the resume) once acknowledged.
	rc, err := p.clientRaw.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool {
		acked := int64(-1)
		rc.Control(func(fd uintptr) { acked = acknowledged(fd) })
		if acked == -1 {
			t.Skip("what the peer acknowledged (TCP_INFO) is not known on this system")
		}
		return acked >= 6
	}, "the second input acknowledged")
	s.c.Drain()
	d.tr.ResumeProducing()
	waitFor(t, 5*time.Second, func() bool { return d.drainings.Load() == 1 }, "ConnectionDraining")
	if got := d.receivedThen.Load(); got != 6 {
		t.Errorf("ConnectionDraining came with %d bytes delivered, want 6 (what had arrived while paused too)", got)
	}
	d.tr.WriteString("answer")
	d.tr.LoseConnection()
	closeWrite(t, p.client)
	got, err := readAll(p.client, serveWait)
	if err != io.EOF || string(got) != "answer" {
		t.Fatalf("client read %q, %v; want \"answer\" and EOF", got, err)
	}
	if reason := s.wait(t, serveWait); !framework.IsClean(reason) {
		t.Errorf("reason %v, want clean", reason)
	}
	if n := d.drainings.Load(); n != 1 {
		t.Errorf("ConnectionDraining called %d times", n)
	}
}
