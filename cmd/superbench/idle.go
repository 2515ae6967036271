package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// runIdle: measure the server's VmRSS, open -conns connections that send
// nothing, wait -settle, measure again; then check that every connection is
// still alive with a one-byte echo (so run it against an echo service).
// The RSS growth per connection is (after - before) / connections held.
func runIdle(ctx context.Context, o *options, d *dialer) Result {
	res := Result{Conns: o.conns}
	var errs errorCount
	if o.pid > 0 {
		rss, err := readRSS(o.pid)
		if err != nil {
			errs.Add(fmt.Errorf("-pid %d: %w", o.pid, err))
		}
		res.RSSBeforeBytes = rss
	}
	t0 := time.Now()
	conns := dialAll(ctx, d, o.conns, &errs, nil)
	defer closeAll(conns)
	held := 0
	for _, c := range conns {
		if c != nil {
			held++
		}
	}
	res.DurationS = time.Since(t0).Seconds() // time to connect
	select {
	case <-time.After(o.settle):
	case <-ctx.Done():
	}
	if o.pid > 0 {
		rss, err := readRSS(o.pid)
		if err != nil {
			errs.Add(fmt.Errorf("-pid %d: %w", o.pid, err))
		}
		res.RSSAfterBytes = rss
		if held > 0 && res.RSSBeforeBytes > 0 && rss > 0 {
			res.RSSPerConnBytes = float64(rss-res.RSSBeforeBytes) / float64(held)
		}
	}

	// Alive: each connection echoes one byte within -timeout.
	var alive atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(256, len(conns)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(conns) {
					return
				}
				c := conns[i]
				if c == nil {
					continue
				}
				if err := pingOne(c, byte(i), o.ioTimeout); err != nil {
					errs.Add(fmt.Errorf("idle connection %d: %w", i, err))
					continue
				}
				alive.Add(1)
			}
		})
	}
	wg.Wait()
	res.Alive = int(alive.Load())
	res.Ops = int64(held)
	res.Errors, res.FirstError = errs.Count(), errs.First()
	return res
}

// pingOne writes one byte and expects it back.
func pingOne(c net.Conn, v byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{v}); err != nil {
		return err
	}
	b := []byte{0}
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if b[0] != v {
		return fmt.Errorf("echoed %#x, sent %#x", b[0], v)
	}
	return nil
}
