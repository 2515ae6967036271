package engine

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// blockingCollector collects data; its first DataReceived waits for a
// signal, so the test can queue more input in the socket meanwhile.
type blockingCollector struct {
	framework.BaseProtocol
	entered chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	got     bytes.Buffer
	lost    chan error
}

func (b *blockingCollector) DataReceived(data []byte) {
	b.mu.Lock()
	b.got.Write(data)
	b.mu.Unlock()
	b.once.Do(func() {
		close(b.entered)
		<-b.release
	})
}

func (b *blockingCollector) ConnectionLost(reason error) { b.lost <- reason }

// TestDrainDeliversWhatHasArrived: input already in the socket when Drain is
// called reaches the protocol (a logfile line sent before SIGTERM is
// written), then the connection closes cleanly.
func TestDrainDeliversWhatHasArrived(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = t.TempDir() + "/d.sock"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			client, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			nc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			p := &blockingCollector{entered: make(chan struct{}), release: make(chan struct{}), lost: make(chan error, 1)}
			c := NewConn(nc, nil)
			go c.Serve(p)

			client.Write([]byte("first\n"))
			<-p.entered // the protocol is busy; more input queues in the socket
			rest := bytes.Repeat([]byte("queued line\n"), 1000)
			if _, err := client.Write(rest); err != nil {
				t.Fatal(err)
			}
			// Wait until the kernel holds it all on the server side.
			deadline := time.Now().Add(5 * time.Second)
			for inputQueued(t, nc) < len(rest) {
				if time.Now().After(deadline) {
					t.Fatalf("only %d of %d bytes queued", inputQueued(t, nc), len(rest))
				}
				time.Sleep(time.Millisecond)
			}
			c.Drain()
			close(p.release)
			select {
			case reason := <-p.lost:
				if !framework.IsClean(reason) {
					t.Errorf("reason %v, want clean", reason)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("connection did not end after Drain")
			}
			p.mu.Lock()
			got := p.got.String()
			p.mu.Unlock()
			if want := "first\n" + string(rest); got != want {
				t.Errorf("delivered %d bytes, want %d", len(got), len(want))
			}
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Errorf("client: %d %v, want EOF", n, err)
			}
		})
	}
}

// TestDrainWakesAnIdleReader: Drain on a connection waiting for input closes
// it cleanly at once.
func TestDrainWakesAnIdleReader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c := NewConn(nc, nil)
	done := make(chan error, 1)
	go func() { done <- c.Serve(&framework.BaseProtocol{}) }()
	c.Drain()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client: %d %v, want EOF", n, err)
	}
	client.Close()
	select {
	case reason := <-done:
		if !framework.IsClean(reason) {
			t.Errorf("reason %v", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// kickProtocol answers its first input from another goroutine with a large
// write and LoseConnection, as a producer or a chat kick would.
type kickProtocol struct {
	framework.BaseProtocol
	n    int
	once sync.Once
}

func (p *kickProtocol) DataReceived(b []byte) {
	t := p.Transport
	p.once.Do(func() {
		go func() {
			t.Write(make([]byte, p.n))
			t.LoseConnection()
		}()
	})
}

// TestLoseConnectionFromOtherGoroutineOutlivesParkDeadline: a reader that
// has received data waits with a park deadline; LoseConnection from
// another goroutine must still flush everything to a client that starts
// reading only after that deadline would have fired.
func TestLoseConnectionFromOtherGoroutineOutlivesParkDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 16 << 20
	res := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- err
			return
		}
		res <- NewConn(c, &ConnOptions{MaxPendingOutput: 64 << 20}).Serve(&kickProtocol{n: n})
	}()
	cl, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cl.(*net.TCPConn).SetReadBuffer(64 << 10)
	cl.Write([]byte("x"))
	// Do not read until well past parkAfter: the server's flush stalls.
	deadline := time.Now().Add(3 * parkAfter)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	got, _ := io.Copy(io.Discard, cl)
	if reason := <-res; !framework.IsClean(reason) || got != n {
		t.Fatalf("client got %d of %d bytes; reason %v", got, n, reason)
	}
}

// TestDrainWhilePausedWithDataInHand: the protocol pauses while the reader
// waits in a read, a chunk arrives and is held for ResumeProducing; Drain
// must still close the connection promptly and cleanly.
func TestDrainWhilePausedWithDataInHand(t *testing.T) {
	goroutineReaders(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cl, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c := NewConn(nc, nil)
	res := make(chan error, 1)
	go func() { res <- c.Serve(&framework.BaseProtocol{}) }()
	cl.Write([]byte("a")) // after this, the reader waits in a read, not parked
	deadline := time.Now().Add(5 * time.Second)
	for !serveBlockedInRead() {
		if time.Now().After(deadline) {
			t.Fatal("reader never waited in a read")
		}
		time.Sleep(time.Millisecond)
	}
	c.PauseProducing()
	cl.Write([]byte("held"))
	for inputQueued(t, nc) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	c.Drain()
	cl.Close() // the peer's EOF ends the linger at once
	select {
	case reason := <-res:
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
	case <-time.After(5 * time.Second):
		c.Abort(framework.ErrShutdownTimeout)
		<-res
		t.Fatal("Drain did not close a paused connection holding a chunk")
	}
}

// TestBusyReaderParksOnlyOnceQuiet: a connection in steady use keeps its
// reader (no park between messages); once its peer goes quiet it parks, and
// new input wakes it.
func TestBusyReaderParksOnlyOnceQuiet(t *testing.T) {
	goroutineReaders(t)
	if getPoller() == nil {
		t.Skip("no idle poller on this platform")
	}
	forTransports(t, []string{"tcp", "unix"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{})
		s := serve(t, p.server, ConnOptions{}, echoRecorder())
		parked := func() bool {
			s.c.mu.Lock()
			defer s.c.mu.Unlock()
			return s.c.parked
		}
		echo := func(msg string) {
			t.Helper()
			if _, err := p.client.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			p.client.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(p.client, got); err != nil || string(got) != msg {
				t.Fatalf("echo of %q: got %q, %v", msg, got, err)
			}
		}
		// Busy for three park windows: the reader stays.
		busyParks := 0
		for end := time.Now().Add(3 * parkAfter); time.Now().Before(end); {
			echo("ping")
			if parked() {
				busyParks++
			}
		}
		if busyParks > 0 {
			t.Errorf("parked %d times between messages of a busy connection", busyParks)
		}
		waitFor(t, 10*time.Second, parked, "a quiet connection parks")
		echo("again") // wakes it
		waitFor(t, 10*time.Second, parked, "it parks again once quiet")
		p.client.Close()
		if reason := s.wait(t, serveWait); !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
	})
}

// TestDrainThenLoseConnectionKeepsTheFlush: Drain wakes the reader with an
// expired deadline; a LoseConnection right behind it, while output is still
// flushing to a client that is not reading yet, must not turn that deadline
// into a read failure that cuts the output short.
func TestDrainThenLoseConnectionKeepsTheFlush(t *testing.T) {
	goroutineReaders(t)
	for i := range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cl, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		cl.(*net.TCPConn).SetReadBuffer(64 << 10)
		c := NewConn(nc, &ConnOptions{MaxPendingOutput: 64 << 20})
		res := make(chan error, 1)
		go func() { res <- c.Serve(&framework.BaseProtocol{}) }()
		cl.Write([]byte("a")) // the reader now waits in a read
		waitFor(t, 5*time.Second, serveBlockedInRead, "the reader waits in a read")
		const n = 8 << 20
		c.Write(make([]byte, n)) // more than the socket buffers hold
		c.Drain()
		c.LoseConnection()
		got, _ := io.Copy(io.Discard, cl)
		cl.Close()
		if reason := <-res; !framework.IsClean(reason) || got != n {
			t.Fatalf("round %d: client got %d of %d bytes; reason %v", i, got, n, reason)
		}
	}
}

// A TLS drain whose reader runs only after its window has passed (a busy
// host deschedules it right after it set the deadline) still delivers what
// the kernel holds: the window is for bytes that have not arrived, and
// these have. The hook stands in for the scheduler, once.
func TestTLSDrainLateReaderDeliversArrived(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{tls: true})
	msg := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB, many records
	go p.client.Write(msg)
	waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) > 0 }, "the input reaches the server's socket")
	var once sync.Once
	testHookDrainRead = func() { once.Do(func() { time.Sleep(3 * drainWindow) }) }
	defer func() { testHookDrainRead = nil }()
	r := newRecorder()
	r.keep = true
	s := &served{c: NewConn(p.server, &ConnOptions{Logger: testLogger}), done: make(chan struct{})}
	s.c.Drain() // the shutdown comes before the reader reads anything
	go func() {
		defer close(s.done)
		s.reason = s.c.Serve(r)
	}()
	// The drain ends with LoseConnection: the client reads our end of
	// stream, then closes its side, which ends the linger.
	readAll(p.client, 10*time.Second)
	p.client.Close()
	s.wait(t, 10*time.Second)
	if got := r.bytes(); !bytes.Equal(got, msg) {
		t.Fatalf("the protocol got %d of the %d bytes the client sent before the drain", len(got), len(msg))
	}
}
