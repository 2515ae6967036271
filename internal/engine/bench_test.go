package engine

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// benchEcho is the few-line echo protocol of the package documentation.
type benchEcho struct{ framework.BaseProtocol }

func (e *benchEcho) DataReceived(data []byte) { e.Transport.Write(data) }

// BenchmarkTransportWrite measures Write of 64 bytes from a goroutine that
// is not a callback (a chat broadcast), to a peer that drains everything.
// The time includes draining what was written; allocs/op counts the whole
// process (flusher goroutines included).
func BenchmarkTransportWrite(b *testing.B) {
	p := dialPair(b, "tcp", pairOpts{})
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		io.Copy(io.Discard, p.client)
	}()
	s := serve(b, p.server, ConnOptions{MaxPendingOutput: 1 << 30}, &framework.BaseProtocol{})
	msg := make([]byte, 64)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.c.Write(msg)
	}
	waitFor(b, time.Minute, func() bool { return s.c.Pending() == 0 }, "output to drain")
	b.StopTimer()
	s.c.LoseConnection()
	<-drained
	p.client.Close()
	if reason := s.wait(b, serveWait); !framework.IsClean(reason) {
		b.Errorf("reason %v", reason)
	}
}

// echoRoundTrips sends 64 bytes and reads them back b.N times.
func echoRoundTrips(b *testing.B, c net.Conn) {
	msg := make([]byte, 64)
	got := make([]byte, 64)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
}

// BenchmarkEchoRoundTrip is one 64-byte echo round trip through the
// framework over loopback TCP. Compare with BenchmarkEchoRoundTripPlain.
func BenchmarkEchoRoundTrip(b *testing.B) {
	p := dialPair(b, "tcp", pairOpts{})
	s := serve(b, p.server, ConnOptions{}, &benchEcho{})
	echoRoundTrips(b, p.client)
	p.client.Close()
	if reason := s.wait(b, serveWait); !framework.IsClean(reason) {
		b.Errorf("reason %v", reason)
	}
}

// BenchmarkEchoRoundTripPlain is the same round trip through a plain Go
// server: one goroutine doing io.Copy(conn, conn).
func BenchmarkEchoRoundTripPlain(b *testing.B) {
	p := dialPair(b, "tcp", pairOpts{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(p.server, p.server)
		p.server.Close()
	}()
	echoRoundTrips(b, p.client)
	p.client.Close()
	<-done
}
