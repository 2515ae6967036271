package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// streamPeriod is the length of each connection's pattern: an odd number of
// bytes, so it never lines up with write or read sizes, and large enough
// that a chunk echoed out of place cannot match by accident.
const streamPeriod = 1<<20 + 4093

// streamPattern is the seeded pseudo-random pattern of one connection. The
// stream it writes is the pattern repeated: byte k of the stream is
// pattern[k % streamPeriod].
func streamPattern(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x57ea))
	p := make([]byte, streamPeriod)
	for i := 0; i < len(p); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return p
}

// matchStream reports whether data is the stream at offset off.
func matchStream(pat, data []byte, off int64) bool {
	k := int(off % int64(len(pat)))
	for len(data) > 0 {
		n := min(len(data), len(pat)-k)
		if !bytes.Equal(data[:n], pat[k:k+n]) {
			return false
		}
		data, k = data[n:], 0
	}
	return true
}

// runStream: every connection has a writer goroutine that sends its
// pattern stream for -duration and a reader goroutine that reads the echo
// and compares every byte; the throughput is the verified bytes that came
// back over the time until the last one did.
func runStream(ctx context.Context, o *options, d *dialer) Result {
	res := Result{Conns: o.conns, Size: o.size}
	var errs errorCount
	conns := dialAll(ctx, d, o.conns, &errs, nil)
	defer closeAll(conns)

	start := make(chan struct{})
	var t0 time.Time
	var wg sync.WaitGroup
	got := make([]int64, len(conns))
	last := make([]time.Time, len(conns))
	for i, c := range conns {
		if c == nil {
			continue
		}
		pat := streamPattern(o.seed + uint64(i))
		wg.Go(func() {
			<-start
			got[i], last[i] = streamConn(c, pat, o, t0, &errs)
		})
	}
	t0 = time.Now()
	close(start)
	wg.Wait()

	var end time.Time
	for i := range conns {
		res.Ops += got[i]
		if last[i].After(end) {
			end = last[i]
		}
	}
	elapsed := end.Sub(t0)
	if elapsed <= 0 {
		elapsed = time.Since(t0)
	}
	res.DurationS = elapsed.Seconds()
	res.MBPerS = float64(res.Ops) / 1e6 / elapsed.Seconds()
	res.Errors, res.FirstError = errs.Count(), errs.First()
	return res
}

// streamConn returns the verified bytes received and when the last came.
func streamConn(c net.Conn, pat []byte, o *options, t0 time.Time, errs *errorCount) (int64, time.Time) {
	end := t0.Add(o.duration)
	c.SetDeadline(end.Add(o.ioTimeout))
	var (
		sent     atomic.Int64 // final count once wdone
		wdone    atomic.Bool
		received atomic.Int64
	)
	go func() {
		var off int64
		defer func() {
			sent.Store(off)
			wdone.Store(true)
			// Wake the reader if it already has everything.
			if received.Load() >= off {
				c.SetReadDeadline(time.Now())
			}
		}()
		for time.Now().Before(end) {
			k := int(off % int64(len(pat)))
			n, err := c.Write(pat[k:min(k+o.size, len(pat))])
			off += int64(n)
			if err != nil {
				errs.Add(fmt.Errorf("stream write: %w", err))
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	var off int64
	var last time.Time
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if !matchStream(pat, buf[:n], off) {
				errs.Add(fmt.Errorf("stream: bytes %d..%d differ from what was sent", off, off+int64(n)))
				c.Close() // stops the writer too
				return off, last
			}
			off += int64(n)
			last = time.Now()
			received.Store(off)
		}
		if wdone.Load() && off >= sent.Load() {
			if off > sent.Load() {
				errs.Add(fmt.Errorf("stream: received %d bytes, more than the %d sent", off, sent.Load()))
			}
			return off, last
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && wdone.Load() && off >= sent.Load() {
				return off, last
			}
			errs.Add(fmt.Errorf("stream read (after %d bytes): %w", off, err))
			return off, last
		}
	}
}
