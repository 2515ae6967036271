// Tests of writing and flushing: order, coalescing, concurrent writers, the
// high-water mark's bound on a non-reading peer, and the slow-consumer
// abort.

package engine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// writeChunks writes payload to c in pseudo-random chunk sizes, counting
// progress in written, and reports the first error on the returned channel.
func writeChunks(c net.Conn, payload []byte, written *atomic.Int64, maxChunk int) <-chan error {
	done := make(chan error, 1)
	go func() {
		sizes := randBytes(len(payload)/1024+16, 99)
		i := 0
		for off := 0; off < len(payload); {
			n := 1 + int(sizes[i%len(sizes)])*maxChunk/256
			i++
			n = min(n, len(payload)-off)
			w, err := c.Write(payload[off : off+n])
			if written != nil {
				written.Add(int64(w))
			}
			off += w
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestEcho(t *testing.T) {
	forTransports(t, nil, func(t *testing.T, network string, useTLS bool) {
		payload := randBytes(8<<20, 7)
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := echoRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		wdone := writeChunks(p.client, payload, nil, 100<<10)
		got := make([]byte, len(payload))
		p.client.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := io.ReadFull(p.client, got)
		if err != nil {
			p.client.Close()
			<-wdone
			t.Fatalf("echo: read %d of %d bytes: %v", n, len(payload), err)
		}
		if werr := <-wdone; werr != nil {
			t.Fatalf("client write: %v", werr)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo differs from what was sent at byte %d", firstDiff(got, payload))
		}
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
		if r.receivedBytes() != len(payload) {
			t.Errorf("protocol received %d bytes, want %d", r.receivedBytes(), len(payload))
		}
	})
}

// waitStall waits until value stops changing for quiet, and returns it.
func waitStall(t *testing.T, value func() int64, quiet, limit time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(limit)
	last, since := value(), time.Now()
	for {
		time.Sleep(5 * time.Millisecond)
		if v := value(); v != last {
			last, since = v, time.Now()
		} else if time.Since(since) >= quiet {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("value still moving after %v (now %d)", limit, last)
		}
	}
}

// sampler polls c.Pending() until stopped and keeps the maximum.
type sampler struct {
	max  atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func samplePending(c *Conn) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if p := int64(c.Pending()); p > s.max.Load() {
				s.max.Store(p)
			}
			select {
			case <-s.stop:
				return
			default:
				time.Sleep(20 * time.Microsecond)
			}
		}
	}()
	return s
}

func (s *sampler) finish() int64 {
	close(s.stop)
	<-s.done
	return s.max.Load()
}

func TestEchoNonReadingClientBounded(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const total = 48 << 20
		payload := randBytes(total, 11)
		// Fixed socket buffers, so how much the kernel holds is bounded.
		p := dialPair(t, network, pairOpts{tls: useTLS,
			clientRcv: 128 << 10, clientSnd: 128 << 10, serverRcv: 128 << 10, serverSnd: 128 << 10})
		r := echoRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		smp := samplePending(s.c)
		var written atomic.Int64
		wdone := writeChunks(p.client, payload, &written, 64<<10)

		// The client writes and never reads: its writes must stall because
		// the server stops reading.
		stalled := waitStall(t, func() int64 { return written.Load() + int64(r.receivedBytes()) }, 400*time.Millisecond, 60*time.Second)
		w, rcv := written.Load(), r.receivedBytes()
		t.Logf("stalled: client wrote %d bytes, server received %d, max pending %d", w, rcv, smp.max.Load())
		_ = stalled
		if w >= total {
			t.Fatalf("the client wrote all %d bytes without reading: no back-pressure", total)
		}
		if w > 16<<20 {
			t.Errorf("the client wrote %d bytes before stalling; want a few socket buffers", w)
		}
		if s.finished() {
			t.Fatalf("connection ended while stalled: %v", s.reason)
		}

		// Now read: everything arrives, in order.
		got := make([]byte, total)
		p.client.SetReadDeadline(time.Now().Add(120 * time.Second))
		n, err := io.ReadFull(p.client, got)
		if err != nil {
			// Where each side stopped tells an echo that stopped from
			// one that was only slow.
			where := fmt.Sprintf("the client wrote %d, the server received %d and sent %d, %d pending",
				written.Load(), s.c.BytesIn(), s.c.BytesOut(), s.c.Pending())
			p.client.Close()
			<-wdone
			smp.finish()
			t.Fatalf("read %d of %d bytes: %v; %s", n, total, err, where)
		}
		if werr := <-wdone; werr != nil {
			t.Fatalf("client write: %v", werr)
		}
		maxPending := smp.finish()
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo differs at byte %d", firstDiff(got, payload))
		}
		if limit := int64(framework.HighWaterMark + readBufferSize); maxPending > limit {
			t.Errorf("Pending() reached %d; want at most framework.HighWaterMark+readBufferSize = %d", maxPending, limit)
		}
		t.Logf("max Pending() %d", maxPending)
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

func TestSlowConsumerAborted(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const limit = 1 << 20
		p := dialPair(t, network, pairOpts{tls: useTLS, clientRcv: 64 << 10, serverSnd: 64 << 10})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{MaxPendingOutput: limit}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

		// Another goroutine (a chat peer) writes far more than the limit;
		// the client never reads.
		chunk := randBytes(64<<10, 5)
		type result struct{ total, slowest time.Duration }
		res := make(chan result, 1)
		go func() {
			start := time.Now()
			var slowest time.Duration
			for i := 0; i < 512; i++ { // 32 MiB
				t0 := time.Now()
				s.c.Write(chunk)
				slowest = max(slowest, time.Since(t0))
			}
			res <- result{time.Since(start), slowest}
		}()
		var rr result
		select {
		case rr = <-res:
		case <-time.After(30 * time.Second):
			s.c.Abort(errTestCleanup)
			<-res
			t.Fatal("Write blocked: 32 MiB of writes to a non-reading peer did not return within 30s")
		}
		t.Logf("512 writes took %v, the slowest %v", rr.total, rr.slowest)
		if rr.slowest > 2*time.Second {
			t.Errorf("one Write took %v; Write must not block on the network", rr.slowest)
		}
		reason := s.wait(t, serveWait)
		if !errors.Is(reason, framework.ErrSlowConsumer) || !errors.Is(reason, framework.ErrConnectionAborted) {
			t.Errorf("reason %v, want framework.ErrSlowConsumer", reason)
		}
		// The flusher's last write fails at once; nothing stays pending.
		waitFor(t, 5*time.Second, func() bool { return s.c.Pending() == 0 }, "Pending() = 0 after the abort")
		r.check(t, reason)
	})
}

func TestConcurrentWriters(t *testing.T) {
	forTransports(t, []string{"tcp", "unix", "tls"}, func(t *testing.T, network string, useTLS bool) {
		const writers, msgs = 16, 1000
		p := dialPair(t, network, pairOpts{tls: useTLS})
		r := newRecorder()
		s := serve(t, p.server, ConnOptions{}, r)
		waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")

		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				buf := make([]byte, 0, 32)
				for i := range msgs {
					if g%2 == 0 {
						buf = fmt.Appendf(buf[:0], "%02d:%05d\n", g, i)
						s.c.Write(buf) // buf is reused at once
					} else {
						s.c.WriteString(fmt.Sprintf("%02d:%05d\n", g, i))
					}
				}
			}()
		}
		close(start)

		next := make([]int, writers)
		sc := bufio.NewScanner(p.client)
		p.client.SetReadDeadline(time.Now().Add(60 * time.Second))
		for n := 0; n < writers*msgs; n++ {
			if !sc.Scan() {
				t.Fatalf("after %d messages: %v", n, sc.Err())
			}
			var g, i int
			if _, err := fmt.Sscanf(sc.Text(), "%d:%d", &g, &i); err != nil || g < 0 || g >= writers {
				t.Fatalf("garbled message %q", sc.Text())
			}
			if i != next[g] {
				t.Fatalf("writer %d: message %d arrived when %d was expected", g, i, next[g])
			}
			next[g]++
		}
		wg.Wait()
		p.client.Close()
		reason := s.wait(t, serveWait)
		if !framework.IsClean(reason) {
			t.Errorf("reason %v, want clean", reason)
		}
		r.check(t, reason)
	})
}

// A buffer handed to Write may be reused at once by a writer that is not
// inside a callback (the flush happens later, in another goroutine).
func TestWriteCopiesBuffer(t *testing.T) {
	p := dialPair(t, "tcp", pairOpts{})
	r := newRecorder()
	s := serve(t, p.server, ConnOptions{}, r)
	waitFor(t, 5*time.Second, r.madeYet, "ConnectionMade")
	var want bytes.Buffer
	buf := make([]byte, 100)
	for i := range 2000 {
		for j := range buf {
			buf[j] = byte(i + j)
		}
		want.Write(buf)
		s.c.Write(buf)
	}
	got := make([]byte, want.Len())
	p.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(p.client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("received bytes differ at %d", firstDiff(got, want.Bytes()))
	}
	p.client.Close()
	r.check(t, s.wait(t, serveWait))
}
