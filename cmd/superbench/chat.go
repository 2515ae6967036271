package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// chatUser is one connection of the chat benchmark.
type chatUser struct {
	c    net.Conn
	r    *bufio.Reader
	name string
}

// readLine reads one CRLF-terminated line (CRLF included).
func (u *chatUser) readLine() ([]byte, error) {
	line, err := u.r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return nil, fmt.Errorf("line %q does not end in CRLF", line)
	}
	return line, nil
}

func chatName(i int) string { return fmt.Sprintf("u%05d", i) }

// chatHandshake: the prompt, a unique name, the welcome.
func chatHandshake(u *chatUser, timeout time.Duration) error {
	u.c.SetDeadline(time.Now().Add(timeout))
	defer u.c.SetDeadline(time.Time{})
	line, err := u.readLine()
	if err != nil {
		return fmt.Errorf("chat %s: reading the prompt: %w", u.name, err)
	}
	if string(line) != "What's your name?\r\n" {
		return fmt.Errorf("chat %s: prompt %q, want %q", u.name, line, "What's your name?\r\n")
	}
	if _, err := io.WriteString(u.c, u.name+"\r\n"); err != nil {
		return fmt.Errorf("chat %s: sending the name: %w", u.name, err)
	}
	line, err = u.readLine()
	if err != nil {
		return fmt.Errorf("chat %s: reading the welcome: %w", u.name, err)
	}
	if want := "Welcome, " + u.name + "!\r\n"; string(line) != want {
		return fmt.Errorf("chat %s: got %q, want %q", u.name, line, want)
	}
	return nil
}

// runChat: -conns users connect and choose names (user i on target i
// modulo the targets); then user 0 sends -lines lines per round and each
// round ends when every other user has all of them, in order and intact. Rounds repeat until -duration (or -rounds).
// Latency is from just before a line is written to when a user has read it;
// the handshake is not timed.
func runChat(ctx context.Context, o *options, d *dialer) Result {
	res := Result{Conns: o.conns, Size: o.size}
	var errs errorCount
	users := make([]*chatUser, o.conns)
	conns := dialAll(ctx, d, o.conns, &errs, func(i int, c net.Conn) error {
		u := &chatUser{c: c, r: bufio.NewReaderSize(c, 64<<10), name: chatName(i)}
		if err := chatHandshake(u, o.ioTimeout); err != nil {
			return err
		}
		users[i] = u
		return nil
	})
	defer closeAll(conns)
	if errs.Count() > 0 {
		res.Errors, res.FirstError = errs.Count(), errs.First()
		return res
	}
	sender := users[0]
	receivers := users[1:]
	m := o.lines

	// sendAt[i] is when line i of the current round was written, in
	// nanoseconds since base. A round starts only after every receiver has
	// finished the previous one, so the slots are reused.
	base := time.Now()
	sendAt := make([]atomic.Int64, m)
	roundDone := make(chan struct{}, len(receivers))
	failed := make(chan struct{}, len(receivers))
	var stopping atomic.Bool
	hists := make([]*Hist, len(receivers))
	nodes := len(d.addrs)
	var wg sync.WaitGroup
	for k, u := range receivers {
		hists[k] = NewHist()
		wg.Go(func() {
			if err := chatReceive(u, sender.name, o.size, m, sendAt, base, hists[k], roundDone); err != nil {
				if !stopping.Load() {
					errs.Add(err)
					failed <- struct{}{}
				}
			}
		})
	}

	var line []byte
	seq := 0
	rounds := 0
	t0 := time.Now()
	end := t0.Add(o.duration)
	sender.c.SetWriteDeadline(end.Add(o.ioTimeout))
loop:
	for {
		for i := range m {
			line = chatLine(line[:0], seq, o.size)
			line = append(line, '\r', '\n')
			sendAt[i].Store(int64(time.Since(base)))
			if _, err := sender.c.Write(line); err != nil {
				errs.Add(fmt.Errorf("chat send: %w", err))
				break loop
			}
			seq++
		}
		timeout := time.NewTimer(o.ioTimeout)
		for range receivers {
			select {
			case <-roundDone:
			case <-failed:
				timeout.Stop()
				break loop
			case <-timeout.C:
				errs.Add(fmt.Errorf("chat: round %d not delivered to every user within %v", rounds, o.ioTimeout))
				break loop
			case <-ctx.Done():
				errs.Add(fmt.Errorf("chat: round %d: %w", rounds, ctx.Err()))
				break loop
			}
		}
		timeout.Stop()
		rounds++
		if o.rounds > 0 && rounds >= o.rounds || o.rounds == 0 && !time.Now().Before(end) {
			break
		}
	}
	elapsed := time.Since(t0)
	stopping.Store(true)
	for _, u := range receivers {
		u.c.SetReadDeadline(time.Now())
	}
	wg.Wait()

	h, remote := NewHist(), NewHist()
	for k, x := range hists {
		h.Merge(x)
		if (k+1)%nodes != 0 { // receiver k is user k+1, on target (k+1) mod nodes
			remote.Merge(x)
		}
	}
	if nodes > 1 {
		res.Nodes = nodes
		res.RemoteP50Us = remote.QuantileMicros(0.50)
		res.RemoteP99Us = remote.QuantileMicros(0.99)
		res.RemoteP999Us = remote.QuantileMicros(0.999)
	}
	res.Ops = int64(h.Count())
	res.DurationS = elapsed.Seconds()
	res.DeliveriesPerS = float64(res.Ops) / elapsed.Seconds()
	fillLatency(&res, h)
	if want := int64(rounds) * int64(m) * int64(len(receivers)); errs.Count() == 0 && res.Ops < want {
		errs.Add(fmt.Errorf("chat: %d deliveries, want %d", res.Ops, want))
	}
	res.Errors, res.FirstError = errs.Count(), errs.First()
	return res
}

// chatReceive reads deliveries until the connection fails (or is stopped
// by a deadline), checking that each is the next line of sender.
func chatReceive(u *chatUser, sender string, size, m int, sendAt []atomic.Int64, base time.Time, h *Hist, roundDone chan<- struct{}) error {
	var want []byte
	next := 0
	for {
		line, err := u.readLine()
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return fmt.Errorf("chat %s: line longer than %d bytes", u.name, u.r.Size())
			}
			return fmt.Errorf("chat %s (after %d lines): %w", u.name, next, err)
		}
		at := time.Since(base)
		name, text, err := parseDelivery(line)
		if err != nil {
			return fmt.Errorf("chat %s: %w", u.name, err)
		}
		if string(name) != sender {
			return fmt.Errorf("chat %s: line %q from %q, only %q talks", u.name, line, name, sender)
		}
		seq, err := parseSeq(text)
		if err != nil {
			return fmt.Errorf("chat %s: %w", u.name, err)
		}
		if seq != next {
			return fmt.Errorf("chat %s: line %d arrived when %d was due", u.name, seq, next)
		}
		if want = chatLine(want[:0], seq, size); !bytes.Equal(text, want) {
			return fmt.Errorf("chat %s: line %d is %q, want %q", u.name, seq, text, want)
		}
		h.RecordValue(int64(at) - sendAt[seq%m].Load())
		next++
		if next%m == 0 {
			roundDone <- struct{}{}
		}
	}
}
