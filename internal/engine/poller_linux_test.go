package engine

import (
	"bytes"
	"fmt"
	"io"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

// The idle poller waits in the runtime's poller, not blocked in
// epoll_wait: a goroutine in a system call keeps its P, and the readers it
// starts for woken connections could wait for the runtime's monitor to
// take that P back (tens of milliseconds on a busy host).
func TestIdlePollerWaitsInTheRuntime(t *testing.T) {
	pr := dialPair(t, "tcp", pairOpts{})
	serve(t, pr.server, ConnOptions{}, echoRecorder()) // parks at once: the poller runs
	state := ""
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if state = pollerState(); strings.HasPrefix(state, "IO wait") {
			return
		}
	}
	t.Fatalf("the idle poller's goroutine: %q, want it waiting in the runtime's poller (IO wait)", state)
}

// pollerState is the idle poller's goroutine's state in a goroutine dump.
func pollerState() string {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, "(*idlePoller).loop") {
			head := g[:strings.IndexByte(g, '\n')]
			return head[strings.IndexByte(head, '[')+1 : strings.IndexByte(head, ']')]
		}
	}
	return "not found"
}

// TestIdlePollerWakeStorm: many parked connections (more than the poller
// collects in one epoll_wait) are woken at once, round after round, each
// parking again in between. Every one of them must wake and answer: an
// event lost between the poller's look at its epoll descriptor and its
// wait in the runtime's poller would leave a connection parked with input.
func TestIdlePollerWakeStorm(t *testing.T) {
	if getPoller() == nil {
		t.Skip("no idle poller")
	}
	const conns, rounds = 600, 3
	ln := listen(t, "unix")
	defer ln.Close()
	pairs := make([]*pair, conns)
	srv := make([]*served, conns)
	for i := range pairs {
		pairs[i] = dialPairOn(t, ln, pairOpts{})
		srv[i] = serve(t, pairs[i].server, ConnOptions{}, echoRecorder())
	}
	allParked := func() bool {
		for _, s := range srv {
			s.c.mu.Lock()
			parked := s.c.parked
			s.c.mu.Unlock()
			if !parked {
				return false
			}
		}
		return true
	}
	for round := range rounds {
		waitFor(t, 30*time.Second, allParked, "round %d: every connection parks", round)
		msg := []byte{byte('a' + round)}
		for i, p := range pairs {
			if _, err := p.client.Write(msg); err != nil {
				t.Fatalf("round %d, connection %d: write: %v", round, i, err)
			}
		}
		errs := make(chan error, conns)
		for i, p := range pairs {
			go func() {
				b := make([]byte, 1)
				p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
				_, err := io.ReadFull(p.client, b)
				if err == nil && b[0] != msg[0] {
					err = fmt.Errorf("read %q, want %q", b, msg)
				}
				if err != nil {
					err = fmt.Errorf("round %d, connection %d: %w", round, i, err)
				}
				errs <- err
			}()
		}
		for range pairs {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
}
