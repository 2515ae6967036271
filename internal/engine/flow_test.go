// Tests of flow control against a peer that reads slowly: the pending
// output stays bounded while input keeps arriving.

package engine

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// maxTracker keeps the largest value it is shown.
type maxTracker struct{ v atomic.Int64 }

func (m *maxTracker) see(n int) {
	for {
		old := m.v.Load()
		if int64(n) <= old || m.v.CompareAndSwap(old, int64(n)) {
			return
		}
	}
}

// slowRead reads n bytes from p's client in small reads, and returns them.
func slowRead(t *testing.T, p *pair, n int) []byte {
	t.Helper()
	got := make([]byte, 0, n)
	buf := make([]byte, 1500)
	p.client.SetReadDeadline(time.Now().Add(60 * time.Second))
	for len(got) < n {
		m, err := p.client.Read(buf[:min(len(buf), n-len(got))])
		got = append(got, buf[:m]...)
		if err != nil {
			t.Fatalf("client read %d of %d bytes: %v", len(got), n, err)
		}
	}
	return got
}

// TestEchoSlowReaderBounded: a client writes a lot to echo and reads it
// back slowly, in small reads. What echo has written and not sent, right
// after each of its writes, stays within the high-water mark and a read.
func TestEchoSlowReaderBounded(t *testing.T) {
	forTransports(t, []string{"tcp", "unix"}, func(t *testing.T, network string, useTLS bool) {
		const total = 8 << 20
		payload := randBytes(total, 23)
		p := dialPair(t, network, pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
		var worst maxTracker
		r := newRecorder()
		r.onData = func(r *recorder, b []byte) {
			r.tr.Write(b)
			worst.see(r.tr.(*Conn).Pending())
		}
		s := serve(t, p.server, ConnOptions{}, r)
		wdone := writeChunks(p.client, payload, nil, 3<<10)
		got := slowRead(t, p, total)
		if werr := <-wdone; werr != nil {
			t.Fatalf("client write: %v", werr)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo differs at byte %d", firstDiff(got, payload))
		}
		if limit := int64(framework.HighWaterMark + readBufferSize); worst.v.Load() > limit {
			t.Errorf("pending output reached %d; want at most framework.HighWaterMark+readBufferSize = %d",
				worst.v.Load(), limit)
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// TestProducerAndEchoSlowReaderBounded: the same with a producer that
// keeps the output above the high-water mark (a chunk larger than the mark
// on every ResumeProducing) beside the echo: the reader still reads, once
// per write the flush completes, and the pending output stays within a
// chunk, the mark and two reads; the connection is never taken for a slow
// consumer.
func TestProducerAndEchoSlowReaderBounded(t *testing.T) {
	forTransports(t, []string{"tcp", "unix"}, func(t *testing.T, network string, useTLS bool) {
		const chunk = framework.HighWaterMark + 16<<10
		const input = 2 << 20
		p := dialPair(t, network, pairOpts{clientRcv: 64 << 10, serverSnd: 64 << 10})
		var worst maxTracker
		prod := &chunkProducer{chunk: make([]byte, chunk)}
		r := newRecorder()
		r.onMade = func(r *recorder) {
			prod.tr = r.tr
			if err := r.tr.RegisterProducer(prod); err != nil {
				r.violate("RegisterProducer: %v", err)
				return
			}
			prod.ResumeProducing()
		}
		r.onData = func(r *recorder, b []byte) {
			r.tr.Write(b)
			worst.see(r.tr.(*Conn).Pending())
		}
		s := serve(t, p.server, ConnOptions{}, r)
		wdone := writeChunks(p.client, randBytes(input, 29), nil, 3<<10)
		// Read until every byte of input has come back, at the least.
		waitFor(t, 60*time.Second, func() bool {
			slowRead(t, p, 256<<10)
			return r.receivedBytes() == input
		}, "the server receives the input")
		if werr := <-wdone; werr != nil {
			t.Fatalf("client write: %v", werr)
		}
		if limit := int64(chunk + framework.HighWaterMark + 2*readBufferSize); worst.v.Load() > limit {
			t.Errorf("pending output reached %d; want at most %d", worst.v.Load(), limit)
		}
		t.Logf("most pending after an echo: %d", worst.v.Load())
		if s.finished() {
			t.Fatalf("the connection ended: %v", s.reason)
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) && !errors.Is(reason, framework.ErrConnectionLost) {
			t.Errorf("reason %v", reason)
		}
	})
}
