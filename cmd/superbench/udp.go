package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"time"
)

// udpHeader is the sequence number at the start of every udp datagram.
const udpHeader = 8

// runUDP: -conns senders, each with its own UDP socket connected to the
// server, send a datagram of -size bytes (a sequence number, then random
// bytes), wait for it to come back, compare, and start over, until
// -duration (or -count datagrams each).
//
// UDP may lose a datagram. A sender waits -lost-after for each echo, then
// counts the datagram lost and sends the next. An echo that arrives after
// that (its sequence number is behind) is counted late and skipped, not
// taken for the echo of the datagram being waited for. Losses are not
// errors, but a run that loses more than -max-lost of what it sent gets
// one.
func runUDP(ctx context.Context, o *options) Result {
	res := Result{Conns: o.conns, Size: o.size}
	var errs errorCount
	raddr, err := net.ResolveUDPAddr("udp", o.addr)
	if err != nil {
		errs.Add(err)
		res.Errors, res.FirstError = errs.Count(), errs.First()
		return res
	}
	conns := make([]*net.UDPConn, o.conns)
	for i := range conns {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			errs.Add(fmt.Errorf("udp socket: %w", err))
			continue
		}
		conns[i] = c
	}
	defer closeAll(conns)

	type senderResult struct{ ok, lost, late int64 }
	hists := make([]*Hist, len(conns))
	results := make([]senderResult, len(conns))
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
			r := &results[i]
			r.ok, r.lost, r.late = udpSender(ctx, c, o, t0, hists[i], &errs, o.seed+uint64(i))
		})
	}
	t0 = time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)

	h := NewHist()
	for i, r := range results {
		h.Merge(hists[i])
		res.Ops += r.ok
		res.Lost += r.lost
		res.Late += r.late
	}
	res.Sent = res.Ops + res.Lost
	if res.Sent > 0 && float64(res.Lost) > o.maxLost*float64(res.Sent) {
		errs.Add(fmt.Errorf("udp: lost %d of %d datagrams (%.2f%%, more than -max-lost %.2f%%)",
			res.Lost, res.Sent, 100*float64(res.Lost)/float64(res.Sent), 100*o.maxLost))
	}
	res.DurationS = elapsed.Seconds()
	res.MsgsPerS = float64(res.Ops) / elapsed.Seconds()
	fillLatency(&res, h)
	res.Errors, res.FirstError = errs.Count(), errs.First()
	return res
}

// udpSender runs the ping-pong of one socket. It returns the datagrams
// that came back intact, those lost, and the echoes that came back late.
func udpSender(ctx context.Context, c *net.UDPConn, o *options, t0 time.Time, h *Hist, errs *errorCount, seed uint64) (ok, lost, late int64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	pool := make([]byte, max(4*o.size, 64<<10)+o.size)
	for i := 0; i < len(pool); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(pool); j++ {
			pool[i+j] = byte(v >> (8 * j))
		}
	}
	msg := make([]byte, o.size)
	buf := make([]byte, o.size+1) // one more: a longer echo shows
	end := t0.Add(o.duration)
	for seq := uint64(0); o.count == 0 || seq < uint64(o.count); seq++ {
		start := time.Now()
		if (o.count == 0 && !start.Before(end)) || ctx.Err() != nil {
			break
		}
		off := rng.IntN(len(pool) - o.size + 1)
		copy(msg, pool[off:off+o.size])
		binary.BigEndian.PutUint64(msg, seq)
		if _, err := c.Write(msg); err != nil {
			errs.Add(fmt.Errorf("udp write (after %d datagrams): %w", seq, err))
			return
		}
		c.SetReadDeadline(start.Add(o.lostAfter))
		for {
			n, err := c.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					lost++
					break
				}
				if errors.Is(err, syscall.ECONNREFUSED) {
					err = fmt.Errorf("%w (no server on %s?)", err, o.addr)
				}
				errs.Add(fmt.Errorf("udp read (after %d datagrams): %w", seq, err))
				return
			}
			if n >= udpHeader {
				if got := binary.BigEndian.Uint64(buf); got < seq {
					late++ // the echo of a datagram counted lost
					continue
				}
			}
			if n != o.size {
				errs.Add(fmt.Errorf("udp: datagram %d came back with %d bytes, sent %d", seq, n, o.size))
				return
			}
			if !bytes.Equal(buf[:n], msg) {
				i := 0
				for buf[i] == msg[i] {
					i++
				}
				errs.Add(fmt.Errorf("udp: datagram %d differs at byte %d of %d", seq, i, o.size))
				return
			}
			h.Record(time.Since(start))
			ok++
			break
		}
	}
	return
}
