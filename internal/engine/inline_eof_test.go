package engine

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// TestEndOfStreamBehindInput: the peer's last input and its end of stream
// (FIN, or a unix socket's shutdown) both arrive while the reader is
// inside a callback. The read that takes the input takes the end of
// stream with it and returns short, and their readiness was spent on one
// wake-up: the reader must read again (TCP_INQ says the FIN is queued; a
// unix socket always reads again), not wait for readiness that never
// comes. The park deadline, which would otherwise end the wait after
// 0.5-1 s, is out of reach here: a reader that waits fails the test.
func TestEndOfStreamBehindInput(t *testing.T) {
	parkDeadlineOutOfReach(t)
	forTransports(t, rawTransports, func(t *testing.T, network string, _ bool) {
		p := dialPair(t, network, pairOpts{})
		r, s, release := heldInSecondChunk(t, p)
		if _, err := p.client.Write([]byte("three")); err != nil {
			t.Fatal(err)
		}
		if err := p.client.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) == 5 && peerShutDown(t, p.serverRaw) },
			"the third chunk and the end of stream queued")
		release()
		s.wait(t, serveWait)
		if got := string(r.bytes()); got != "onetwothree" {
			t.Errorf("received %q", got)
		}
		r.check(t, s.reason)
	})
}

// parkDeadlineOutOfReach moves the park deadline an hour away for the
// test: what must happen without its help, a reader left waiting fails.
func parkDeadlineOutOfReach(t *testing.T) {
	testParkAfter.Store(int64(time.Hour))
	t.Cleanup(func() { testParkAfter.Store(0) })
}

// parkSoon has the test's goroutine-served connections park after 10 ms
// without input, not parkAfter.
func parkSoon(t *testing.T) {
	testParkAfter.Store(int64(10 * time.Millisecond))
	t.Cleanup(func() { testParkAfter.Store(0) })
}

// goroutineReaders has the test's connections served by their goroutines,
// not by the poller's loop, whatever GOMAXPROCS: the read loop's own
// waits, deadlines and serving inside the read are what the test holds.
func goroutineReaders(t *testing.T) { setLoopServes(t, false) }

// loopServing has the poller's loop serve the test's parked connections,
// whatever GOMAXPROCS.
func loopServing(t *testing.T) {
	if getPoller() == nil {
		t.Skip("no poller loop on this platform")
	}
	setLoopServes(t, true)
}

func setLoopServes(t *testing.T, on bool) {
	was, fixed := loopServes.Swap(on), loopServesFixed.Swap(true)
	t.Cleanup(func() {
		loopServes.Store(was)
		loopServesFixed.Store(fixed)
	})
}

// peerShutDown reports whether c's peer has shut its sending side down
// (a TCP socket in CLOSE_WAIT; a unix peer's shutdown is there at once).
func peerShutDown(t testing.TB, c net.Conn) bool {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	state := -1
	rc.Control(func(fd uintptr) { state = tcpState(fd) })
	const tcpCloseWait = 8
	return state == -1 || state == tcpCloseWait
}
