// Tests of a connection's life and callbacks: the reasons of a peer's
// close or reset, addresses, byte counters, panics, and a transport used
// after its connection is gone. The helpers shared by every test file
// are in main_test.go.

package engine

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// transports every stream test runs over.
var transports = []struct {
	name    string
	network string
	tls     bool
}{
	{"tcp", "tcp", false},
	{"tcp6", "tcp6", false},
	{"unix", "unix", false},
	{"tls", "tcp", true},
	{"tls-unix", "unix", true},
	{"bare", "bare-tcp", false},
	{"bare-unix", "bare-unix", false},
}

// forTransports runs f as one subtest per transport whose name is in only
// (all of them when only is empty).
func forTransports(t *testing.T, only []string, f func(t *testing.T, network string, useTLS bool)) {
	for _, tr := range transports {
		if len(only) > 0 && !contains(only, tr.name) {
			continue
		}
		t.Run(tr.name, func(t *testing.T) { f(t, tr.network, tr.tls) })
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

const serveWait = 20 * time.Second

// clientSawNoData asserts that the client reads nothing more and then the
// end of the stream: an EOF or a reset.
func clientSawNoData(t *testing.T, c net.Conn) {
	t.Helper()
	got, err := readAll(c, 10*time.Second)
	if len(got) != 0 {
		t.Errorf("client read %d bytes after the abort; want none (%q...)", len(got), truncate(got))
	}
	if err != io.EOF && !isReset(err) {
		t.Errorf("client read ended with %v; want EOF or a reset", err)
	}
}

func truncate(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

func TestPeerCloseIsClean(t *testing.T) {
	forTransports(t, nil, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		r.keep = true
		s := serve(t, p.server, ConnOptions{}, r)
		if _, err := p.client.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 5 }, "5 bytes received")
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) || !errors.Is(reason, framework.ErrConnectionDone) {
			t.Errorf("peer close: reason %v, want clean (framework.ErrConnectionDone)", reason)
		}
		if errors.Is(reason, framework.ErrConnectionLost) {
			t.Errorf("peer close: reason %v also matches framework.ErrConnectionLost", reason)
		}
		r.check(t, reason)
		if got := string(r.bytes()); got != "hello" {
			t.Errorf("received %q, want %q", got, "hello")
		}
	})
}

func TestPeerResetIsLost(t *testing.T) {
	forTransports(t, []string{"tcp", "tcp6", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		tc := p.clientRaw.(*net.TCPConn)
		if err := tc.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		tc.Close()
		reason := s.wait(t, serveWait)
		if !errors.Is(reason, framework.ErrConnectionLost) || framework.IsClean(reason) {
			t.Errorf("peer reset: reason %v, want framework.ErrConnectionLost and not clean", reason)
		}
		if errors.Is(reason, framework.ErrConnectionAborted) {
			t.Errorf("peer reset: reason %v matches framework.ErrConnectionAborted, but nobody aborted", reason)
		}
		r.check(t, reason)
	})
}

func TestAddresses(t *testing.T) {
	forTransports(t, []string{"tcp", "tcp6", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		if got, want := s.c.LocalAddr().String(), p.client.RemoteAddr().String(); got != want {
			t.Errorf("LocalAddr %s, want %s", got, want)
		}
		if network != "unix" {
			if got, want := s.c.PeerAddr().String(), p.client.LocalAddr().String(); got != want {
				t.Errorf("PeerAddr %s, want %s", got, want)
			}
		}
		if got, want := s.c.LocalAddr().Network(), p.client.RemoteAddr().Network(); got != want {
			t.Errorf("LocalAddr network %s, want %s", got, want)
		}
		p.client.Close()
		r.check(t, s.wait(t, serveWait))
	})
}

type countingProducer struct {
	pauses, resumes, stops atomic.Int32
}

func (p *countingProducer) PauseProducing() { p.pauses.Add(1) }

func (p *countingProducer) ResumeProducing() { p.resumes.Add(1) }

func (p *countingProducer) StopProducing() { p.stops.Add(1) }

// Everything a goroutine may still do with a transport after its connection
// is gone is harmless: dropped, no panic.
func TestTransportAfterConnectionGone(t *testing.T) {
	forTransports(t, []string{"tcp", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		r.onLost = func(r *recorder, reason error) {
			r.tr.Write([]byte("during ConnectionLost")) // dropped
			r.tr.LoseConnection()
		}
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

		// Writers keep going while the connection ends under them.
		stop := testkit.Repeat(4, func() bool {
			s.c.Write([]byte("spam "))
			s.c.WriteString("more spam ")
			return true
		})
		p.client.Close()
		reason := s.wait(t, serveWait)
		stop()

		tr := framework.Transport(s.c)
		tr.Write([]byte("late"))
		tr.WriteString("late")
		tr.Write(nil)
		tr.WriteString("")
		tr.LoseConnection()
		tr.AbortConnection()
		tr.PauseProducing()
		tr.ResumeProducing()
		tr.UnregisterProducer()
		s.c.Abort(framework.ErrShutdownTimeout)
		if !tr.Disconnecting() {
			t.Error("Disconnecting() false after the connection ended")
		}
		if n := s.c.Pending(); n != 0 {
			t.Errorf("Pending() = %d after the connection ended", n)
		}
		cp := &countingProducer{}
		tr.RegisterProducer(cp) // on a connection already gone: stopped at once
		if cp.stops.Load() != 1 {
			t.Errorf("RegisterProducer after the end: StopProducing called %d times, want 1", cp.stops.Load())
		}
		if s.reason != reason {
			t.Errorf("reason changed after the end: %v, then %v", reason, s.reason)
		}
		r.check(t, reason)
	})
}

func TestPanicEndsOnlyThatConnection(t *testing.T) {
	ln := listen(t, "tcp")
	var logs testkit.Buffer
	opts := ConnOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	type conn struct {
		r *recorder
		s *served
	}
	conns := make(chan conn, 8)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			r := newRecorder()
			r.onMade = func(r *recorder) {
				if r.tr.PeerAddr() == nil {
					panic("no peer")
				}
			}
			r.onData = func(r *recorder, b []byte) {
				if bytes.Contains(b, []byte("panic")) {
					panic("boom")
				}
				r.tr.Write(b)
			}
			conns <- conn{r, serve(t, nc, opts, r)}
		}
	}()
	defer func() { ln.Close(); <-acceptDone }()

	dial := func() (net.Conn, conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		select {
		case sc := <-conns:
			return c, sc
		case <-time.After(10 * time.Second):
			t.Fatal("no connection accepted")
		}
		return nil, conn{}
	}
	echo := func(c net.Conn, msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, got, err)
		}
	}

	good, goodConn := dial()
	echo(good, "one")
	bad, badConn := dial()
	echo(bad, "fine so far")
	if _, err := bad.Write([]byte("now panic")); err != nil {
		t.Fatal(err)
	}
	reason := badConn.s.wait(t, serveWait)
	var pe *framework.PanicError
	if !errors.As(reason, &pe) || pe.Value != "boom" || len(pe.Stack) == 0 {
		t.Errorf("reason %#v, want a *framework.PanicError with value boom and a stack", reason)
	}
	if framework.IsClean(reason) {
		t.Errorf("a panic is not a clean close: %v", reason)
	}
	badConn.r.check(t, reason)
	if _, err := readAll(bad, 10*time.Second); err == nil {
		t.Error("the panicking connection's client can still read")
	}
	if !strings.Contains(logs.String(), "protocol panic") || !strings.Contains(logs.String(), "boom") {
		t.Errorf("the panic was not logged: %q", logs.String())
	}

	// The other connection, on the same listener, still works, and new
	// connections are served.
	echo(good, "two")
	third, thirdConn := dial()
	echo(third, "three")
	echo(good, "four")
	for _, x := range []struct {
		c  net.Conn
		sc conn
	}{{good, goodConn}, {third, thirdConn}} {
		x.c.Close()
		reason := x.sc.s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("surviving connection ended with %v, want clean", reason)
		}
		x.sc.r.check(t, reason)
	}
}

func TestPanicInConnectionMade(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	if _, err := p.client.Write([]byte("never delivered")); err != nil {
		t.Fatal(err)
	}
	r := newRecorder()
	r.onMade = func(r *recorder) {
		r.tr.WriteString("partial greeting") // dropped by the abort
		panic(errors.New("made failed"))
	}
	s := serve(t, p.server, ConnOptions{}, r)
	reason := s.wait(t, serveWait)
	var pe *framework.PanicError
	if !errors.As(reason, &pe) {
		t.Errorf("reason %v, want a *framework.PanicError", reason)
	}
	if r.chunkCount() != 0 {
		t.Error("DataReceived after ConnectionMade panicked")
	}
	clientSawNoData(t, p.client)
	r.check(t, reason)
}

func TestByteCounters(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		rx := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_received_bytes_total", Help: "x"})
		tx := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_sent_bytes_total", Help: "x"})
		payload := randBytes(3<<20+17, 29)
		const greeting = "hello there\n"
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := echoRecorder()
		r.onMade = func(r *recorder) { r.tr.WriteString(greeting) }
		s := serve(t, p.server, ConnOptions{Received: rx, Sent: tx}, r)
		wdone := writeChunks(p.client, payload, nil, 64<<10)
		got := make([]byte, len(greeting)+len(payload))
		p.client.SetReadDeadline(time.Now().Add(60 * time.Second))
		if _, err := io.ReadFull(p.client, got); err != nil {
			t.Fatal(err)
		}
		if werr := <-wdone; werr != nil {
			t.Fatal(werr)
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		r.check(t, reason)
		if v := testutil.ToFloat64(rx); v != float64(len(payload)) {
			t.Errorf("Received counter %v, want %d", v, len(payload))
		}
		if v := testutil.ToFloat64(tx); v != float64(len(got)) {
			t.Errorf("Sent counter %v, want %d", v, len(got))
		}
	})
}

// TestConnectionLostAfterSocketClosed: ConnectionLost runs once the socket
// is closed (Twisted's connectionLost, and Run's promise: "ConnectionLost
// exactly once, then onDone ... after the socket is closed"), whatever
// ended the connection. A closed socket refuses a deadline.
func TestConnectionLostAfterSocketClosed(t *testing.T) {
	type ending struct {
		name string
		only []string
		opts ConnOptions
		// setup customises the recorder before Serve; start ends the
		// connection once it is served.
		setup func(r *recorder)
		start func(t *testing.T, p *pair, s *served, r *recorder)
	}
	sendX := func(t *testing.T, p *pair, s *served, r *recorder) {
		if _, err := p.client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	endings := []ending{
		{name: "LoseConnection", setup: func(r *recorder) {
			r.onData = func(r *recorder, b []byte) { r.tr.Write(b); r.lose() }
		}, start: sendX},
		{name: "LoseConnectionElsewhere", start: func(t *testing.T, p *pair, s *served, r *recorder) {
			waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
			s.c.WriteString("bye")
			s.c.LoseConnection()
		}},
		{name: "AbortConnection", setup: func(r *recorder) {
			r.onData = func(r *recorder, b []byte) { r.tr.Write(b); r.abort() }
		}, start: sendX},
		{name: "PeerClose", start: func(t *testing.T, p *pair, s *served, r *recorder) {
			waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
			p.client.Close()
		}},
		{name: "PeerReset", only: []string{"tcp", "tcp6", "tls", "bare"}, start: func(t *testing.T, p *pair, s *served, r *recorder) {
			waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
			p.clientRaw.(*net.TCPConn).SetLinger(0)
			p.clientRaw.Close()
		}},
		{name: "IdleTimeout", opts: ConnOptions{IdleTimeout: 100 * time.Millisecond}, start: func(*testing.T, *pair, *served, *recorder) {}},
		{name: "Panic", setup: func(r *recorder) {
			r.onData = func(r *recorder, b []byte) { panic("test panic") }
		}, start: sendX},
		{name: "SlowConsumer", opts: ConnOptions{MaxPendingOutput: 1 << 20}, setup: func(r *recorder) {
			r.onData = func(r *recorder, b []byte) { r.tr.Write(make([]byte, 2<<20)) }
		}, start: sendX},
		{name: "Drain", start: func(t *testing.T, p *pair, s *served, r *recorder) {
			waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
			s.c.Drain()
		}},
	}
	for _, e := range endings {
		t.Run(e.name, func(t *testing.T) {
			forTransports(t, e.only, func(t *testing.T, network string, useTLS bool) {
				p := dialPair(t, network, pairOpts{tls: useTLS})
				r := newRecorder()
				if e.setup != nil {
					e.setup(r)
				}
				var open error = errTestCleanup // stays non-nil unless ConnectionLost ran
				r.onLost = func(r *recorder, reason error) {
					open = p.serverRaw.SetReadDeadline(time.Now().Add(time.Hour))
				}
				s := serve(t, p.server, e.opts, r)
				e.start(t, p, s, r)
				// The client reads (and then closes) so that a graceful
				// close completes without waiting for the linger.
				go func() {
					readAll(p.client, serveWait)
					p.client.Close()
				}()
				reason := s.wait(t, serveWait)
				r.check(t, reason)
				if open == nil {
					t.Errorf("the socket was still open in ConnectionLost (reason %v)", reason)
				}
			})
		})
	}
}
