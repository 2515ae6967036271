package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/engine"
)

// A drain (shutdown, reload) while the upstream is slow to read: every
// byte the proxy took from the client reaches the upstream, then its end
// of stream (a FIN, not a reset).
func TestDrainForwardsWhatWasTaken(t *testing.T) {
	ln := listen(t, "tcp")
	startReading := make(chan struct{})
	type result struct {
		got []byte
		err error
	}
	upstream := make(chan result, 1)
	serveUpstream(t, ln, func(c net.Conn) {
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		<-startReading
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, err := io.ReadAll(c)
		upstream <- result{b, err}
	})
	f := newFactory(t, fmt.Sprintf("  upstream = %q", ln.Addr()))
	addr, conns := serveProxy(t, f, "tcp", nil)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-conns
	data := payload(16<<20, 5)
	go func() {
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		c.Write(data) // stalls: the upstream reads nothing yet, then the drain stops reading
	}()
	waitFor(t, func() bool { return s.p.buffered() > 0 }, "the proxy to hold the client's bytes")
	s.c.Drain()
	close(startReading)
	u := <-upstream
	taken := s.c.BytesIn()
	if u.err != nil || int64(len(u.got)) != taken || !bytes.Equal(u.got, data[:len(u.got)]) {
		t.Errorf("the upstream got %d bytes, then %v; want the %d the proxy took from the client, then its end of stream", len(u.got), u.err, taken)
	}
	// The client, still sending what superd no longer reads, is cut off
	// (what is left of its upload was never taken).
	c.Close()
	s.wait(t)
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
