package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// runEcho: every connection sends a message of random bytes, waits for all
// of it to come back, compares, and starts over, until -duration (or
// -count messages). Connections are opened (and TLS handshakes done)
// before the clock starts.
func runEcho(ctx context.Context, o *options, d *dialer) Result {
	res := Result{Conns: o.conns, Size: o.size}
	var errs errorCount
	conns := dialAll(ctx, d, o.conns, &errs, nil)
	defer closeAll(conns)

	hists := make([]*Hist, len(conns))
	counts := make([]int64, len(conns))
	start := make(chan struct{})
	var wg sync.WaitGroup
	var t0 time.Time
	for i, c := range conns {
		if c == nil {
			continue
		}
		hists[i] = NewHist()
		wg.Go(func() {
			<-start
			counts[i] = echoConn(c, o, t0, hists[i], &errs, o.seed+uint64(i))
		})
	}
	t0 = time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)

	h := NewHist()
	for i := range conns {
		h.Merge(hists[i])
		res.Ops += counts[i]
	}
	res.DurationS = elapsed.Seconds()
	res.MsgsPerS = float64(res.Ops) / elapsed.Seconds()
	fillLatency(&res, h)
	res.Errors, res.FirstError = errs.Count(), errs.First()
	return res
}

// echoConn runs the ping-pong of one connection and returns the number of
// messages that came back intact.
func echoConn(c net.Conn, o *options, t0 time.Time, h *Hist, errs *errorCount, seed uint64) int64 {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	// Messages are random windows of a random pool: every message differs
	// from the previous one, and generating them costs no time in the loop.
	pool := make([]byte, max(4*o.size, 64<<10)+o.size)
	for i := 0; i < len(pool); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(pool); j++ {
			pool[i+j] = byte(v >> (8 * j))
		}
	}
	buf := make([]byte, o.size)
	end := t0.Add(o.duration)
	// With -duration one deadline covers the run; with -count each
	// message gets -timeout.
	c.SetDeadline(end.Add(o.ioTimeout))
	// Messages larger than what the socket buffers hold are written from
	// another goroutine so that reading the echo never waits on our write.
	concurrentWrite := o.size > 64<<10
	var n int64
	for o.count == 0 || n < int64(o.count) {
		off := rng.IntN(len(pool) - o.size + 1)
		msg := pool[off : off+o.size]
		start := time.Now()
		if o.count == 0 && !start.Before(end) {
			break
		}
		if o.count > 0 {
			c.SetDeadline(start.Add(o.ioTimeout))
		}
		var werr error
		var wdone chan struct{}
		if concurrentWrite {
			wdone = make(chan struct{})
			go func() { _, werr = c.Write(msg); close(wdone) }()
		} else if _, werr = c.Write(msg); werr != nil {
			errs.Add(fmt.Errorf("echo write: %w", werr))
			return n
		}
		_, rerr := io.ReadFull(c, buf)
		if wdone != nil {
			<-wdone
			if werr != nil {
				errs.Add(fmt.Errorf("echo write: %w", werr))
				return n
			}
		}
		if rerr != nil {
			errs.Add(fmt.Errorf("echo read (after %d messages): %w", n, rerr))
			return n
		}
		h.Record(time.Since(start))
		if !bytes.Equal(buf, msg) {
			i := 0
			for buf[i] == msg[i] {
				i++
			}
			errs.Add(fmt.Errorf("echo: message %d differs at byte %d of %d", n, i, o.size))
			return n
		}
		n++
	}
	return n
}
