package echo

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/engine"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr []string
	}{
		{name: "no attributes", body: ""},
		{name: "common attributes", body: "  max_connections = 3\n  idle_timeout = \"5s\"\n  max_pending_output = 65536"},
		{name: "unknown attribute", body: `  max_conections = 3`,
			wantErr: []string{"superd.hcl:2,", `Did you mean "max_connections"?`}},
		{name: "quote is not echo's", body: `  quote = "x"`, wantErr: []string{"superd.hcl:2,", `"quote"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := servicetest.Block{Factory: "echo", Name: "e", Body: tt.body}.File(t)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error:\n%s", err)
				}
				svc := f.Service("e")
				fac, err := servicetest.Build(svc, nil)
				if err != nil || fac == nil {
					t.Fatalf("New: %v, %v", fac, err)
				}
				if _, ok := fac.BuildProtocol(nil).(*Echo); !ok {
					t.Fatal("BuildProtocol does not build an *Echo")
				}
				return
			}
			var de *config.DiagnosticsError
			if !errors.As(err, &de) {
				t.Fatalf("error %v (%T); want a *config.DiagnosticsError", err, err)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error text lacks %q:\n%s", s, err)
				}
			}
		})
	}
}

// serve accepts on a loopback listener and serves each connection with a
// fresh Echo through the framework; conns receives each *engine.Conn.
func serve(t *testing.T) (addr string, conns <-chan *engine.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *engine.Conn, 16)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fc := engine.NewConn(c, nil)
			select {
			case ch <- fc:
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				fc.Serve(new(Echo))
			}()
		}
	}()
	return ln.Addr().String(), ch
}

func TestEchoOverLoopback(t *testing.T) {
	addr, _ := serve(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	// Small writes, each echoed before the next.
	for _, msg := range []string{"a", "hello\r\n", "\x00\xff binary", strings.Repeat("x", 1000)} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != msg {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
	// Half-close: everything sent comes back, then EOF.
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, not the %d sent", len(got), len(payload))
	}
}

// TestEchoNonReaderBounded: a client that writes without reading is held
// back by flow control; the server's pending output stays bounded, and
// everything comes back once the client reads.
func TestEchoNonReaderBounded(t *testing.T) {
	addr, conns := serve(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Small client buffers, so the kernel absorbs little of the payload.
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	fc := <-conns
	const size = 16 << 20
	payload := make([]byte, size)
	rand.Read(payload)

	sent := make(chan int, 1)
	go func() {
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		n, _ := c.Write(payload) // stalls: the server stops reading
		sent <- n
	}()
	n := <-sent
	if n == size {
		t.Fatalf("the whole %d bytes were accepted without reading a byte: no flow control", size)
	}
	// What the server holds unsent: at most the high-water mark plus one read.
	if p := fc.Pending(); p > framework.HighWaterMark+64<<10 {
		t.Fatalf("server holds %d bytes of unsent output for a non-reader", p)
	}
	// Now read it all back while sending the rest.
	c.SetWriteDeadline(time.Time{})
	go func() {
		m, _ := c.Write(payload[n:])
		c.(*net.TCPConn).CloseWrite()
		sent <- m
	}()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if m := <-sent; n+m != size {
		t.Fatalf("sent %d+%d bytes, want %d", n, m, size)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, not the %d sent", len(got), size)
	}
}

func TestMain(m *testing.M) { servicetest.VerifyTestMain(m) }

func TestDatagrams(t *testing.T) {
	servicetest.ServesBoth(t, "echo")
	var rec servicetest.DatagramRecorder
	p := servicetest.DatagramProtocol(t, Factory{}, &rec)
	reqs := []string{"", "hello\r\n", "\x00\xff binary", strings.Repeat("x", 65507)}
	for _, d := range reqs {
		p.DatagramReceived([]byte(d), servicetest.PeerUDP)
	}
	sent := rec.Sent()
	if len(sent) != len(reqs) {
		t.Fatalf("%d replies to %d datagrams", len(sent), len(reqs))
	}
	for i, d := range sent {
		if string(d.Data) != reqs[i] || d.To != servicetest.PeerUDP {
			t.Fatalf("reply %d: %d bytes to %v; want the %d bytes received, to %v", i, len(d.Data), d.To, len(reqs[i]), servicetest.PeerUDP)
		}
	}
}

// TestDatagramsOverUDP: a real UDP client gets each datagram back.
func TestDatagramsOverUDP(t *testing.T) {
	c, err := net.Dial("udp", servicetest.ServeUDP(t, Factory{}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	for i := range 20 {
		msg := fmt.Sprintf("datagram %d", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != msg {
			t.Fatalf("got %q, want %q", buf[:n], msg)
		}
	}
}

// TestDatagramAllocs: in steady state a datagram's echo allocates nothing.
func TestDatagramAllocs(t *testing.T) {
	var nop servicetest.NopDatagramTransport
	p := servicetest.DatagramProtocol(t, Factory{}, &nop)
	data := make([]byte, 64)
	if n := testing.AllocsPerRun(10000, func() { p.DatagramReceived(data, servicetest.PeerUDP) }); n != 0 {
		t.Fatalf("%v allocations per datagram, want 0", n)
	}
	if nop.Writes == 0 {
		t.Fatal("nothing was echoed")
	}
}

// BenchmarkDatagram: one 64-byte datagram echoed, protocol cost only (the
// transport records nothing); -benchmem shows 0 allocs/op.
func BenchmarkDatagram(b *testing.B) {
	var nop servicetest.NopDatagramTransport
	p := servicetest.DatagramProtocol(b, Factory{}, &nop)
	data := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		p.DatagramReceived(data, servicetest.PeerUDP)
	}
}
