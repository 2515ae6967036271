package proxy

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
	"github.com/superd-dev/superd/internal/engine"
)

// A drain (shutdown, reload) while the upstream is slow to read: every
// byte the proxy took from the client reaches the upstream, and no end of
// stream follows (the client did not end its upload: it must not look
// complete); the connection is then cut at shutdown_timeout, a reset to
// the upstream.
func TestDrainForwardsWhatWasTaken(t *testing.T) {
	ln := listen(t, "tcp")
	startReading := make(chan struct{})
	var got atomic.Int64
	upstream := make(chan error, 1)
	var received []byte
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		<-startReading
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			received = append(received, buf[:n]...)
			got.Add(int64(n))
			if err != nil {
				upstream <- err
				return
			}
		}
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-conns
	data := payload(4<<20, 5)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		c.Write(data) // stalls until the upstream reads
	}()
	waitFor(t, func() bool { return s.p.buffered() > 0 }, "the proxy to hold the client's bytes")
	s.c.Drain()
	close(startReading)
	<-wrote
	// Everything the proxy takes (what had arrived, the rest of the
	// upload as it comes in) reaches the upstream; then nothing.
	waitFor(t, func() bool { return s.p.buffered() == 0 && got.Load() == s.c.BytesIn() }, "the upstream to get what the proxy took")
	select {
	case err := <-upstream:
		t.Fatalf("the upstream's read ended (%v) though the client did not end its stream", err)
	default:
	}
	s.c.Abort(framework.ErrShutdownTimeout) // shutdown_timeout
	if err := <-upstream; err == nil || errors.Is(err, io.EOF) {
		t.Errorf("the upstream's read ended with %v at the cut, want a reset", err)
	}
	if !bytes.Equal(received, data[:len(received)]) {
		t.Error("the upstream got other bytes than the client's")
	}
	fmt.Println("DEBUG reason", s.wait(t))
}

// A drain while the upstream is still answering a request: the answer
// reaches the client, then the end of stream.
func TestDrainRelaysAnswerInFlight(t *testing.T) {
	ln := listen(t, "tcp")
	asked, drained := make(chan struct{}), make(chan struct{})
	upstream := make(chan error, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, 3)); err != nil {
			upstream <- err
			return
		}
		close(asked)
		<-drained
		_, err := c.Write([]byte("answer"))
		upstream <- err
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-conns
	if _, err := c.Write([]byte("req")); err != nil {
		t.Fatal(err)
	}
	<-asked
	s.c.Drain()
	close(drained)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	back, err := io.ReadAll(c)
	if err != nil || string(back) != "answer" {
		t.Errorf("the client read %q, then %v; want the answer, then the end of stream", back, err)
	}
	if err := <-upstream; err != nil {
		t.Errorf("the upstream's answer: %v", err)
	}
	c.Close()
	if r := s.wait(t); !framework.IsClean(r) {
		t.Errorf("reason %v, want clean", r)
	}
}

// max_pending_output at its smallest (the high-water mark): a download
// through the proxy is flow-controlled, not dropped as a slow consumer,
// for a client that reads fast and for one that reads slowly.
func TestSmallestMaxPendingOutput(t *testing.T) {
	for _, slow := range []bool{false, true} {
		t.Run(fmt.Sprint("slow=", slow), func(t *testing.T) {
			ln := listen(t, "tcp")
			const size = 8 << 20
			data := payload(size, 4)
			serveUpstream(t, ln, func(c net.Conn) {
				defer c.Close()
				c.SetWriteDeadline(time.Now().Add(20 * time.Second))
				c.Write(data)
			})
			f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
			pl := listen(t, "tcp")
			defer pl.Close()
			done := make(chan error, 1)
			go func() {
				nc, err := pl.Accept()
				if err != nil {
					done <- err
					return
				}
				if slow {
					nc.(*net.TCPConn).SetWriteBuffer(32 << 10)
				}
				c := engine.NewConn(nc, &engine.ConnOptions{MaxPendingOutput: framework.HighWaterMark})
				done <- c.Serve(f.BuildProtocol(nc.RemoteAddr()))
			}()
			defer f.StopFactory()
			c, err := net.Dial("tcp", pl.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if slow {
				c.(*net.TCPConn).SetReadBuffer(32 << 10)
			}
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var got []byte
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					break
				}
				if slow {
					time.Sleep(50 * time.Microsecond) // a slow reader, not a synchronisation
				}
			}
			r := <-done
			if !bytes.Equal(got, data) || !framework.IsClean(r) {
				t.Errorf("the client read %d of %d bytes (equal: %v); the connection ended with %v", len(got), size, bytes.Equal(got, data), r)
			}
		})
	}
}

// A drain after the upstream has half-closed (it answered and ended its
// stream, but still reads the client's upload) while the proxy holds
// client bytes the upstream has not taken yet: they reach the upstream,
// then the end of stream; the connection does not end first with a reset
// that loses them.
func TestDrainAfterUpstreamHalfCloseWritesWhatWasTaken(t *testing.T) {
	ln := listen(t, "tcp")
	startReading := make(chan struct{})
	var once sync.Once
	start := func() { once.Do(func() { close(startReading) }) }
	upstream := make(chan []byte, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte("ok"))
		c.(*net.TCPConn).CloseWrite()
		<-startReading
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Errorf("the upstream's read ended with %v after %d bytes, want the end of stream", err, len(b))
		}
		upstream <- b
	})
	t.Cleanup(start) // before serveUpstream's cleanup waits for the handler
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-conns
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "ok" {
		t.Fatalf("client read %q, %v; want the answer, then the end of stream", b, err)
	}
	// Send until the sockets towards the upstream are full and the proxy
	// holds some of the client's bytes; the client then sends no more.
	var sent []byte
	for i := 0; ; i++ {
		chunk := payload(16<<10, uint64(i))
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, chunk...)
		waitFor(t, func() bool { return s.c.BytesIn() == int64(len(sent)) }, "the proxy to take the chunk")
		held := true
		for deadline := time.Now().Add(20 * time.Millisecond); time.Now().Before(deadline); {
			if s.p.buffered() == 0 {
				held = false
				break
			}
		}
		if held {
			break
		}
		if len(sent) > 64<<20 {
			t.Fatal("the upstream's sockets never filled")
		}
	}
	s.c.Drain()
	waitFor(t, func() bool {
		s.p.mu.Lock()
		defer s.p.mu.Unlock()
		return s.p.draining || s.p.closed
	}, "the proxy to be told of the drain")
	// The connection must wait for the upstream: longer than the linger
	// for the client's end of stream (2 s), which once ended it first.
	select {
	case <-s.done:
	case <-time.After(3 * time.Second):
	}
	start()
	if got := <-upstream; digest(got) != digest(sent) {
		t.Errorf("the upstream got %d bytes; the client sent %d, all taken by the proxy", len(got), len(sent))
	}
	if r := s.wait(t); !framework.IsClean(r) {
		t.Errorf("reason %v, want clean", r)
	}
}
