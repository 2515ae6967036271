package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// dialer opens connections to one loopback address with at most
// concurrency dials in flight, a short timeout per attempt and retries on
// transient errors: a SYN dropped because the server's accept queue is
// full is retried with a fresh socket after attemptTimeout instead of
// waiting for the kernel's SYN retransmission (1 s, then 3 s, ...).
type dialer struct {
	addr           string
	addrs          []string // every target (chat across nodes: -addr A,B,C); addr is the first
	tls            *tls.Config
	sem            chan struct{}
	attemptTimeout time.Duration
	tlsTimeout     time.Duration
	retries        int
	retried        atomic.Int64 // attempts that failed and were retried
}

func newDialer(o *options) (*dialer, error) {
	addrs := strings.Split(o.addr, ",")
	for _, a := range addrs {
		if err := checkLoopback(a); err != nil {
			return nil, err
		}
	}
	d := &dialer{
		addr:           addrs[0],
		addrs:          addrs,
		sem:            make(chan struct{}, max(o.dialConcurrency, 1)),
		attemptTimeout: o.dialTimeout,
		tlsTimeout:     o.ioTimeout,
		retries:        o.dialRetries,
	}
	if o.tls {
		d.tls = &tls.Config{
			InsecureSkipVerify: true, // the target uses a self-signed certificate
			ServerName:         "localhost",
		}
	}
	return d, nil
}

// checkLoopback refuses any target that is not a loopback address: this
// tool only loads the machine it runs on.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-addr %q: only loopback targets (127.0.0.0/8, ::1, localhost) are allowed", addr)
	}
	return nil
}

// Dial opens one connection to the first target (TLS handshake included
// with -tls).
func (d *dialer) Dial(ctx context.Context) (net.Conn, error) { return d.DialTo(ctx, d.addr) }

// DialTo is Dial to addr.
func (d *dialer) DialTo(ctx context.Context, addr string) (net.Conn, error) {
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-d.sem }()
	backoff := 5 * time.Millisecond
	var last error
	for attempt := 0; attempt <= d.retries; attempt++ {
		if attempt > 0 {
			d.retried.Add(1)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			backoff = min(2*backoff, 200*time.Millisecond)
		}
		c, err := d.dialOnce(ctx, addr)
		if err == nil {
			return c, nil
		}
		last = err
		if ctx.Err() != nil || !transient(err) {
			break
		}
	}
	return nil, last
}

func (d *dialer) dialOnce(ctx context.Context, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: d.attemptTimeout}
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if d.tls == nil {
		return c, nil
	}
	tc := tls.Client(c, d.tls)
	hctx, cancel := context.WithTimeout(ctx, d.tlsTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return tc, nil
}

// transient tells errors worth another attempt: timeouts (a dropped SYN),
// refusals and resets (an overflowing accept queue), and a momentary lack
// of local ports.
func transient(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
		syscall.EAGAIN, syscall.EADDRNOTAVAIL, syscall.ETIMEDOUT, syscall.EPIPE, io.EOF, io.ErrUnexpectedEOF} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dialAll opens n connections, each followed by setup (if not nil), at the
// dialer's concurrency; connection i goes to target i modulo the number of
// targets. It returns the connections that succeeded (nil entries for
// those that failed) and records failures in errs.
func dialAll(ctx context.Context, d *dialer, n int, errs *errorCount, setup func(i int, c net.Conn) error) []net.Conn {
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(cap(d.sem), n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				addr := d.addrs[i%len(d.addrs)]
				c, err := d.DialTo(ctx, addr)
				if err != nil {
					errs.Add(fmt.Errorf("dial %s: %w", addr, err))
					continue
				}
				if setup != nil {
					if err := setup(i, c); err != nil {
						errs.Add(err)
						c.Close()
						continue
					}
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	return conns
}

// errorCount counts errors and keeps the first one.
type errorCount struct {
	n     atomic.Int64
	once  sync.Once
	first error
}

func (e *errorCount) Add(err error) {
	e.once.Do(func() {
		e.first = err
		fmt.Fprintf(os.Stderr, "superbench: first error: %v\n", err)
	})
	e.n.Add(1) // after the first is stored: First reads it once n > 0
}

func (e *errorCount) Count() int64 { return e.n.Load() }

func (e *errorCount) First() string {
	if e.n.Load() == 0 {
		return ""
	}
	return e.first.Error()
}
