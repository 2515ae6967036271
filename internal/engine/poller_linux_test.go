package engine

import (
	"bytes"
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
