// Tests of reading: the transport paused and resumed by its protocol.

package engine

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

func TestPauseResumeProducing(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		r.keep = true
		r.onMade = func(r *recorder) { r.pause() }
		r.onData = func(r *recorder, b []byte) {
			if bytes.Contains(b, []byte("first")) {
				r.pause()
			}
		}
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

		// Paused in ConnectionMade: the data stays in the server's socket.
		if _, err := p.client.Write([]byte("first")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) > 0 }, "data to reach the server socket")
		// A reader that ignored the pause would consume it now.
		holds(t, 50*time.Millisecond, func() bool { return inputQueued(t, p.serverRaw) > 0 && r.chunkCount() == 0 },
			"paused transport read anyway")
		r.resume()
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 5 }, "data after resume")

		// Paused again from DataReceived.
		if _, err := p.client.Write([]byte("second")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return inputQueued(t, p.serverRaw) > 0 }, "data to reach the server socket")
		holds(t, 50*time.Millisecond, func() bool { return r.receivedBytes() == 5 }, "paused transport delivered data")
		r.resume()
		r.resume() // idempotent
		waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 11 }, "data after the second resume")
		if got := string(r.bytes()); got != "firstsecond" {
			t.Errorf("received %q", got)
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// LoseConnection on a paused transport still completes (Twisted: the
// disconnecting transport ignores the pause).
func TestLoseConnectionWhilePaused(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := newRecorder()
	r.onMade = func(r *recorder) {
		r.pause()
		r.tr.WriteString("bye")
		r.lose()
	}
	s := serve(t, p.server, ConnOptions{}, r)
	p.client.Write([]byte("ignored"))
	got, err := readAll(p.client, 10*time.Second)
	if string(got) != "bye" || err != io.EOF {
		t.Errorf("client read %q, %v; want bye, EOF", got, err)
	}
	p.client.Close()
	reason := s.wait(t, serveWait)
	if !framework.IsClean(reason) {
		t.Errorf("reason %v, want clean", reason)
	}
	r.check(t, reason)
}

// PauseProducing is documented as safe from any goroutine: "no DataReceived
// until ResumeProducing". Pausing while Serve's goroutine is already waiting
// in a read must hold back the next chunk too.
func TestPauseProducingFromOtherGoroutine(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	waitFor(t, 5*time.Second, func() bool { return serveWaitingForInput(s.c) }, "Serve's reader to wait for input")
	r.mu.Lock()
	r.paused = true // from now on a DataReceived is a violation
	r.mu.Unlock()
	s.c.PauseProducing()
	if _, err := p.client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	// Give a misbehaving reader time to deliver.
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) && r.chunkCount() == 0 {
		time.Sleep(time.Millisecond)
	}
	if n := r.chunkCount(); n != 0 {
		t.Errorf("DataReceived was called %d time(s) after PauseProducing returned", n)
	}
	r.resume()
	waitFor(t, 5*time.Second, func() bool { return r.receivedBytes() == 3 }, "data after resume")
	p.client.Close()
	reason := s.wait(t, serveWait)
	r.mu.Lock()
	kept := r.violations[:0]
	for _, v := range r.violations {
		if v != "DataReceived while paused" { // reported above
			kept = append(kept, v)
		}
	}
	r.violations = kept
	r.mu.Unlock()
	r.check(t, reason)
}
