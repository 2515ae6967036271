package engine

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// TestTLSReadFailureDoesNotHoldWrites: a TLS connection whose read fails
// (here a record cut short by the peer's end of stream, io.ErrUnexpectedEOF)
// while the peer reads nothing and the socket's send buffer is full must
// end at once, and the transport's methods called from another goroutine
// (Write: a chat line to that user) must not wait meanwhile. Closing the tls.Conn sends a close_notify, which
// waits up to 5 s for room in the peer's window; done with the
// connection's lock held, every Write to the connection waited with it.
// The same when the read fails while a LoseConnection's close_notify is
// still waiting for that room (the close waited for it).
func TestTLSReadFailureDoesNotHoldWrites(t *testing.T) {
	for _, closing := range []bool{false, true} {
		name := "open"
		if closing {
			name = "closing"
		}
		t.Run(name, func(t *testing.T) { tlsReadFailure(t, closing) })
	}
}

func tlsReadFailure(t *testing.T, closing bool) {
	forTransports(t, []string{"tls", "tls-unix"}, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{tls: true, clientRcv: 4 << 10, serverSnd: 4 << 10})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
		// Fill the socket's send buffer beneath TLS (the client reads
		// nothing), leaving no write in flight: the kernel's buffers are
		// full, the engine has nothing pending.
		// Full: twice in a row, a write that waits 50 ms for room finds
		// none.
		fill := make([]byte, 4<<10)
		for none := 0; none < 2; {
			p.serverRaw.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			n, err := p.serverRaw.Write(fill)
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Fatal(err)
				}
			}
			if n == 0 {
				none++
			} else {
				none = 0
			}
		}
		p.serverRaw.SetWriteDeadline(time.Time{})
		if closing {
			// Nothing pending: the close_notify goes out at once, and
			// waits for room in the client's window.
			s.c.LoseConnection()
		}
		// Half a TLS record, then the client's end of stream: the
		// server's TLS read fails with io.ErrUnexpectedEOF.
		if _, err := p.clientRaw.Write([]byte{23, 3, 3, 0, 64, 1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		if err := p.clientRaw.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var slowest time.Duration
		for !s.finished() && time.Since(start) < 10*time.Second {
			// The transport's methods take the lock Write takes. (A
			// Write itself would start a flush that, stuck in the full
			// socket, spares the close its close_notify.)
			t0 := time.Now()
			s.c.Disconnecting()
			slowest = max(slowest, time.Since(t0))
			time.Sleep(time.Millisecond)
		}
		reason := s.wait(t, serveWait)
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("the connection ended %v after its read failed; want at once", took.Round(time.Millisecond))
		}
		if slowest > time.Second {
			t.Errorf("the transport (Write, Disconnecting) waited %v for the failed connection's close", slowest.Round(time.Millisecond))
		}
		if !closing && (!errors.Is(reason, framework.ErrConnectionLost) || framework.IsClean(reason)) {
			t.Errorf("reason %v, want framework.ErrConnectionLost", reason)
		}
		r.check(t, reason)
	})
}
