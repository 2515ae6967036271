package chargen

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/frameworktest"
	"github.com/superd-dev/superd/internal/engine"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestMain(m *testing.M) { servicetest.VerifyTestMain(m) }

// wantLine is line n of RFC 864's pattern (0-based), CRLF included, built
// from the RFC's words rather than from the package's table: 72 characters
// of the printable ASCII ring, starting one character further on per line.
func wantLine(n int) string {
	var b strings.Builder
	for i := range 72 {
		b.WriteByte(byte(32 + (n+i)%95))
	}
	b.WriteString("\r\n")
	return b.String()
}

func TestConfig(t *testing.T) {
	servicetest.ServesBoth(t, "chargen")
	f := servicetest.Factory(t, "chargen", "  max_connections = 10")
	if _, ok := f.BuildProtocol(nil).(*Chargen); !ok {
		t.Fatal("BuildProtocol does not build a *Chargen")
	}
	_, err := servicetest.Parse(t, "chargen", `  line_length = 80`)
	if err == nil || !strings.Contains(err.Error(), "superd.hcl:2,") || !strings.Contains(err.Error(), `"line_length"`) {
		t.Fatalf("an attribute chargen does not have: %v", err)
	}
}

func TestWantLine(t *testing.T) {
	// The RFC's first two lines, as printed in it.
	if got := wantLine(0); got != ` !"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\]^_`+"`abcdefg\r\n" {
		t.Fatalf("line 0: %q", got)
	}
	if got := wantLine(1); got != `!"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\]^_`+"`abcdefgh\r\n" {
		t.Fatalf("line 1: %q", got)
	}
	if wantLine(95) != wantLine(0) || wantLine(94)[:2] != "~ " {
		t.Fatal("the ring does not wrap after '~'")
	}
}

// wantFrom is the first n bytes of the pattern from the start of line l.
func wantFrom(l, n int) string {
	var b strings.Builder
	for ; b.Len() < n; l++ {
		b.WriteString(wantLine(l))
	}
	return b.String()[:n]
}

// readLines reads n lines from r and checks each against the pattern,
// starting at line from.
func readLines(t *testing.T, r *bufio.Reader, from, n int) {
	t.Helper()
	buf := make([]byte, lineSize)
	for i := from; i < from+n; i++ {
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if want := wantLine(i); string(buf) != want {
			t.Fatalf("line %d:\n got %q\nwant %q", i, buf, want)
		}
	}
}

// chargenOf waits for the next connection of a chargen server.
func chargenOf(t *testing.T, conns <-chan *servicetest.Served) (*servicetest.Served, *Chargen) {
	t.Helper()
	select {
	case s := <-conns:
		return s, s.Protocol.(*Chargen)
	case <-time.After(10 * time.Second):
		t.Fatal("no connection served")
		return nil, nil
	}
}

func (c *Chargen) state() (paused, producing, stopped bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.paused, c.producing, c.stopped
}

// TestStreamPattern: a client that reads gets the exact RFC 864 pattern,
// line after line, across many chunks and many pauses and resumes; when it
// closes, the producer is stopped.
func TestStreamPattern(t *testing.T) {
	addr, conns := servicetest.Serve(t, Factory{})
	c := servicetest.Dial(t, addr)
	s, p := chargenOf(t, conns)
	const lines = 20000 // 1.4 MB: about 90 chunks, 20 times the high-water mark
	readLines(t, bufio.NewReaderSize(c, 4096), 0, lines)
	c.Close()
	<-s.Done
	if _, producing, stopped := p.state(); !stopped || producing {
		t.Fatalf("after the connection ended: stopped %v, producing %v", stopped, producing)
	}
}

// TestStreamInputDropped: what the peer sends is read and dropped; the
// pattern goes on undisturbed.
func TestStreamInputDropped(t *testing.T) {
	addr, conns := servicetest.Serve(t, Factory{})
	c := servicetest.Dial(t, addr)
	s, _ := chargenOf(t, conns)
	r := bufio.NewReader(c)
	for i := range 10 {
		if _, err := fmt.Fprintf(c, "noise %d\r\n", i); err != nil {
			t.Fatal(err)
		}
		readLines(t, r, i*500, 500)
	}
	c.Close()
	<-s.Done
}

// TestStreamNonReader: a client that reads nothing costs a paused
// producer: the server holds at most the high-water mark (and the byte that
// pauses) of unsent output at any moment, and once the socket buffers are full the
// producer writes nothing more (no CPU spent on it). When the client
// starts reading, the pattern resumes where it stopped, exactly.
func TestStreamNonReader(t *testing.T) {
	addr, conns := servicetest.Serve(t, Factory{})
	c := servicetest.Dial(t, addr)
	s, p := chargenOf(t, conns)

	var maxPending atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := int64(s.Conn.Pending()); n > maxPending.Load() {
				maxPending.Store(n)
			}
			select {
			case <-stop:
				return
			default:
				time.Sleep(20 * time.Microsecond)
			}
		}
	}()
	defer func() {
		close(stop)
		<-sampled
		if limit := int64(framework.HighWaterMark + 1); maxPending.Load() > limit {
			t.Errorf("the server held %d bytes of unsent output; want at most %d (the high-water mark and the byte that pauses)",
				maxPending.Load(), limit)
		}
	}()

	// Output moves until the kernel's buffers are full; then it stops.
	chunks := servicetest.Settle(t, p.chunks.Load, 300*time.Millisecond, 30*time.Second, "chunks written")
	paused, producing, stopped := p.state()
	if !paused || producing || stopped {
		t.Fatalf("with the client not reading: paused %v, producing %v, stopped %v; want paused only", paused, producing, stopped)
	}
	if pending := s.Conn.Pending(); pending == 0 {
		t.Fatal("nothing pending, yet the producer is paused: nothing will resume it")
	}
	servicetest.Holds(t, 500*time.Millisecond, func() bool {
		paused, producing, _ := p.state()
		return p.chunks.Load() == chunks && paused && !producing
	}, "the producer moved while the client read nothing: %d chunks, then %d", chunks, p.chunks.Load())
	t.Logf("stalled after %d chunks (%d bytes), %d pending", chunks, chunks*chunkSize, s.Conn.Pending())

	// The client reads: everything from line 0 on, with no gap where the
	// producer was paused, and well past it.
	total := int(chunks*chunkSize/lineSize) + 5000
	readLines(t, bufio.NewReader(c), 0, total)
	if p.chunks.Load() <= chunks {
		t.Fatal("reading did not resume the producer")
	}
	c.Close()
	<-s.Done
}

// measuredTransport is a connection's transport that records the most
// unsent output it held after any write.
type measuredTransport struct {
	*engine.Conn
	most atomic.Int64
}

func (m *measuredTransport) Write(b []byte) {
	m.Conn.Write(b)
	if n := int64(m.Conn.Pending()); n > m.most.Load() {
		m.most.Store(n)
	}
}

// TestStreamNeverPastTheMark: SPEC section 10's chargen "never buffers
// more than the high-water mark". Its writes go up to the mark and the one
// that passes it, the pause, passes it by a byte; without the transport's
// room they would pass it by up to a chunk. The first writes, made inside
// ConnectionMade, are all still unsent when measured (a callback's output
// is flushed once it returns), so the first pause is measured exactly.
func TestStreamNeverPastTheMark(t *testing.T) {
	f := framework.FactoryFunc(func(net.Addr) framework.Protocol { return new(measuredChargen) })
	addr, conns := servicetest.Serve(t, f)
	c := servicetest.Dial(t, addr)
	var s *servicetest.Served
	select {
	case s = <-conns:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection served")
	}
	mc := s.Protocol.(*measuredChargen)
	servicetest.WaitFor(t, 10*time.Second, func() bool { return mc.tr.Load() != nil }, "the connection made")
	m := mc.tr.Load()
	// Let output move until the kernel's buffers are full and the
	// producer has been paused and resumed many times over.
	servicetest.Settle(t, mc.chunks.Load, 300*time.Millisecond, 30*time.Second, "writes")
	if most, limit := m.most.Load(), int64(framework.HighWaterMark+1); most > limit {
		t.Errorf("the server held %d bytes of unsent output after a write; want at most %d (the mark and the byte that pauses)", most, limit)
	}
	if m.most.Load() <= framework.HighWaterMark {
		t.Errorf("the output never passed the mark (%d): nothing paused the producer", m.most.Load())
	}
	// Reading resumes it, from where it stopped.
	readLines(t, bufio.NewReader(c), 0, 20000)
	c.Close()
	<-s.Done
	if most, limit := m.most.Load(), int64(framework.HighWaterMark+1); most > limit {
		t.Errorf("while the client read, the server held %d bytes of unsent output; want at most %d", most, limit)
	}
}

// measuredChargen is chargen on a measuredTransport.
type measuredChargen struct {
	Chargen
	tr atomic.Pointer[measuredTransport]
}

func (mc *measuredChargen) ConnectionMade(t framework.Transport) {
	m := &measuredTransport{Conn: t.(*engine.Conn)}
	mc.tr.Store(m)
	mc.Chargen.ConnectionMade(m)
}

// patternChecker checks what a transport is given against the pattern as
// it arrives (keeping nothing) and, as the framework does, pauses the
// producer from inside Write every few chunks.
type patternChecker struct {
	tr *frameworktest.Transport

	mu     sync.Mutex
	off    int // bytes received so far
	bad    error
	writes int
}

func newPatternChecker() *patternChecker {
	c := &patternChecker{tr: &frameworktest.Transport{Discard: true}}
	c.tr.OnWrite = c.write
	return c
}

func (c *patternChecker) write(b []byte) {
	c.mu.Lock()
	if c.bad == nil && !bytes.Equal(b, pattern[c.off%period:c.off%period+len(b)]) {
		c.bad = fmt.Errorf("write %d at offset %d: not the pattern", c.writes, c.off)
	}
	c.off += len(b)
	c.writes++
	pause := c.writes%3 == 0
	c.mu.Unlock()
	if pause {
		c.tr.Producer().PauseProducing()
	}
}

// TestProducerConcurrency: pauses, resumes and a stop arrive from several
// goroutines at once, and from inside Write, as the framework delivers
// them. The writes never overlap (the pattern arrives whole and in order),
// the race detector finds nothing, and after StopProducing nothing is
// written.
func TestProducerConcurrency(t *testing.T) {
	f := newPatternChecker()
	p := new(Chargen)
	p.ConnectionMade(f.tr)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				if (i+g)%4 == 0 {
					p.PauseProducing()
				} else {
					p.ResumeProducing()
				}
			}
		}()
	}
	wg.Wait()
	p.StopProducing()
	f.mu.Lock()
	writes, bad := f.writes, f.bad
	f.mu.Unlock()
	if bad != nil {
		t.Fatal(bad)
	}
	if writes < 100 {
		t.Fatalf("only %d writes", writes)
	}
	p.ResumeProducing()
	if f.writes != writes {
		t.Fatalf("%d writes after StopProducing", f.writes-writes)
	}
	// A connection that is going away stops the producer by itself.
	q := new(Chargen)
	g := newPatternChecker()
	q.ConnectionMade(g.tr)
	g.tr.LoseConnection()
	q.ResumeProducing()
	if _, producing, stopped := q.state(); producing || !stopped {
		t.Fatalf("after Disconnecting: producing %v, stopped %v", producing, stopped)
	}
}

func TestDatagrams(t *testing.T) {
	var rec servicetest.DatagramRecorder
	p := servicetest.DatagramProtocol(t, Factory{}, &rec)
	const n = 2000
	for i := range n {
		p.DatagramReceived([]byte(fmt.Sprint(i)), servicetest.PeerUDP)
	}
	sent := rec.Sent()
	if len(sent) != n {
		t.Fatalf("%d replies to %d datagrams", len(sent), n)
	}
	lengths := map[int]bool{}
	for i, d := range sent {
		if d.To != servicetest.PeerUDP || len(d.Data) > MaxDatagram {
			t.Fatalf("reply %d: %d bytes to %v", i, len(d.Data), d.To)
		}
		// Each reply is the pattern from the start of a line, one line
		// further on each time.
		if want := wantFrom(i, len(d.Data)); string(d.Data) != want {
			t.Fatalf("reply %d: %q\nwant %q", i, d.Data, want)
		}
		lengths[len(d.Data)] = true
	}
	// Random lengths from 0 to 512: over 2000 replies, many different ones.
	if len(lengths) < 100 {
		t.Fatalf("only %d different lengths in %d replies", len(lengths), n)
	}
	var nop servicetest.NopDatagramTransport
	p = servicetest.DatagramProtocol(t, Factory{}, &nop)
	if a := testing.AllocsPerRun(1000, func() { p.DatagramReceived(nil, servicetest.PeerUDP) }); a != 0 {
		t.Errorf("%v allocations per datagram, want 0", a)
	}
}

// TestDatagramsOverUDP: a real UDP client gets a reply per datagram.
func TestDatagramsOverUDP(t *testing.T) {
	addr := servicetest.ServeUDP(t, Factory{})
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	for i := range 20 {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if n > MaxDatagram || string(buf[:n]) != wantFrom(i, n) {
			t.Fatalf("reply %d: %q", i, buf[:n])
		}
	}
}

// BenchmarkStream: the rate a client reading as fast as it can gets the
// pattern over loopback TCP.
func BenchmarkStream(b *testing.B) {
	addr, conns := servicetest.Serve(b, Factory{})
	c := servicetest.Dial(b, addr)
	s := <-conns
	buf := make([]byte, 256<<10)
	const perOp = 1 << 20
	b.SetBytes(perOp)
	b.ResetTimer()
	for range b.N {
		for n := 0; n < perOp; {
			k, err := c.Read(buf[:min(len(buf), perOp-n)])
			if err != nil {
				b.Fatal(err)
			}
			n += k
		}
	}
	b.StopTimer()
	c.Close()
	<-s.Done
}

// BenchmarkStreamPlainGo is BenchmarkStream's yardstick: the same pattern
// written by a plain Go loop (one goroutine, blocking writes of the same
// chunks), without the framework.
func BenchmarkStreamPlainGo(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer nc.Close()
		for off := 0; ; off = (off + chunkSize) % period {
			if _, err := nc.Write(pattern[off : off+chunkSize]); err != nil {
				return
			}
		}
	}()
	c := servicetest.Dial(b, ln.Addr().String())
	buf := make([]byte, 256<<10)
	const perOp = 1 << 20
	b.SetBytes(perOp)
	b.ResetTimer()
	for range b.N {
		for n := 0; n < perOp; {
			k, err := c.Read(buf[:min(len(buf), perOp-n)])
			if err != nil {
				b.Fatal(err)
			}
			n += k
		}
	}
	b.StopTimer()
	c.Close()
	<-done
}

// TestStreamPeerHalfClose: a client that half-closes (its FIN, while it
// goes on reading) ends the connection, as a close does: chargen is not
// half-closeable, so the peer's end of stream is the end. The client reads
// what was already on its way, then EOF; the producer is stopped and
// writes nothing more. (The connection went on, and chargen with it, for
// hundreds of MB: the server did not see the end of stream while the
// producer kept its output busy.)
func TestStreamPeerHalfClose(t *testing.T) {
	addr, conns := servicetest.Serve(t, Factory{})
	c := servicetest.Dial(t, addr)
	s, p := chargenOf(t, conns)
	// Fixed socket buffers, so what can be on its way when the FIN arrives
	// is bounded by them and the server's pending output.
	if err := c.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	if err := s.Conn.NetConn().(*net.TCPConn).SetWriteBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	// A line first (read and dropped), so the server's reader waits for
	// the FIN in its read rather than in the idle poller: the bound below
	// is about what the end of stream ends, not about how soon a parked
	// connection wakes.
	if _, err := c.Write([]byte("noise\r\n")); err != nil {
		t.Fatal(err)
	}
	// Read well past what the server's socket held before its buffer was
	// made small.
	r := bufio.NewReader(c)
	readLines(t, r, 0, 100000)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The socket buffers (the kernel doubles the sizes asked for) and the
	// server's pending output (the high-water mark and a chunk) hold well
	// under a MB. The bound also covers the runtime noticing the FIN late
	// (its network poller is checked only every 10 ms or so while every P
	// is busy, as the client and chargen keep them), and is still a small
	// part of what chargen sends in 100 ms over loopback.
	const bound = 32 << 20
	n, err := io.Copy(io.Discard, io.LimitReader(r, bound+1))
	t.Logf("read %d bytes after the half-close", n)
	if err != nil {
		t.Fatalf("after the half-close, after %d bytes: %v", n, err)
	}
	if n > bound {
		t.Fatalf("still reading %d bytes after the half-close: the connection did not end", n)
	}
	select {
	case reason := <-s.Done:
		if reason != framework.ErrConnectionDone {
			t.Fatalf("ConnectionLost reason %v, want %v", reason, framework.ErrConnectionDone)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end")
	}
	chunks := p.chunks.Load()
	if _, producing, stopped := p.state(); !stopped || producing {
		t.Fatalf("after the connection ended: stopped %v, producing %v", stopped, producing)
	}
	p.ResumeProducing()
	if p.chunks.Load() != chunks {
		t.Fatal("chargen wrote after it was stopped")
	}
}
