package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// runConnrate: -conns workers each connect, read to EOF, check the quote
// (ending in -eol) and close, over and over until -duration. Latency is the whole exchange,
// connect included.
func runConnrate(ctx context.Context, o *options, d *dialer) Result {
	res := Result{Conns: o.conns}
	var errs errorCount
	hists := make([]*Hist, o.conns)
	counts := make([]int64, o.conns)
	t0 := time.Now()
	end := t0.Add(o.duration)
	var wg sync.WaitGroup
	for i := range o.conns {
		hists[i] = NewHist()
		wg.Go(func() {
			counts[i] = connrateWorker(ctx, o, d, end, hists[i], &errs)
		})
	}
	wg.Wait()
	elapsed := time.Since(t0)
	h := NewHist()
	for i := range hists {
		h.Merge(hists[i])
		res.Ops += counts[i]
	}
	res.DurationS = elapsed.Seconds()
	res.ConnsPerS = float64(res.Ops) / elapsed.Seconds()
	fillLatency(&res, h)
	res.Errors, res.FirstError = errs.Count(), errs.First()
	return res
}

func connrateWorker(ctx context.Context, o *options, d *dialer, end time.Time, h *Hist, errs *errorCount) int64 {
	buf := make([]byte, 4096) // a quote is at most 512 characters
	var n int64
	for {
		start := time.Now()
		if !start.Before(end) || ctx.Err() != nil {
			return n
		}
		c, err := d.Dial(ctx)
		if err != nil {
			errs.Add(fmt.Errorf("dial %s: %w", o.addr, err))
			time.Sleep(10 * time.Millisecond) // do not spin on a dead server
			continue
		}
		c.SetDeadline(start.Add(o.ioTimeout))
		got := 0
		for {
			k, err := c.Read(buf[got:])
			got += k
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				errs.Add(fmt.Errorf("qotd read: %w", err))
				got = -1
				break
			}
			if got == len(buf) {
				errs.Add(fmt.Errorf("qotd: more than %d bytes", len(buf)))
				got = -1
				break
			}
		}
		c.Close()
		if got < 0 {
			continue
		}
		if err := checkQuote(buf[:got], o.expect, o.eol); err != nil {
			errs.Add(err)
			continue
		}
		h.Record(time.Since(start))
		n++
	}
}
