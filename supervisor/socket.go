package supervisor

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/superd-dev/superd/endpoint"
)

// socket is one listening socket and its accept loop. It outlives the
// service that opened it when a reload hands it to the service's successor:
// the loop always gives each connection to the socket's current owner, so
// swapping owners never closes the socket and never refuses a connection.
type socket struct {
	key   string
	label string
	ln    net.Listener
	log   *slog.Logger

	owner     atomic.Pointer[binding]
	last      atomic.Pointer[binding] // the owner when released: gets the backlog sweep
	startOnce sync.Once
	closeOnce sync.Once
	closed    atomic.Bool
	done      chan struct{} // closed when the accept loop has returned
}

// socketKey identifies the address a socket is bound to, so tcp and tls
// endpoints on one address (or two spellings of it) share a key.
func socketKey(ep *endpoint.Config) string {
	if ep.Kind == endpoint.KindUnix {
		return "unix:" + filepath.Clean(ep.Path)
	}
	host, port, err := net.SplitHostPort(ep.Address)
	if err != nil {
		return "tcp:" + ep.Address
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	}
	return "tcp:" + net.JoinHostPort(host, port)
}

func listenSocket(key string, ep *endpoint.Config, log *slog.Logger) (*socket, error) {
	ln, err := endpoint.Listen(*ep)
	if err != nil {
		return nil, err
	}
	return &socket{key: key, label: ep.Label, ln: ln, log: log, done: make(chan struct{})}, nil
}

// serve makes b the socket's owner, starting the accept loop the first time.
func (k *socket) serve(b *binding) {
	k.owner.Store(b)
	k.startOnce.Do(func() { go k.acceptLoop() })
}

// release detaches b; if b still owned the socket, nobody took it over, so
// the socket is closed and release reports true.
func (k *socket) release(b *binding) bool {
	k.last.Store(b) // before the swap: an accept in between sees it
	if k.owner.CompareAndSwap(b, nil) {
		k.close()
		return true
	}
	return false
}

// close closes the listener and waits for the accept loop to end.
func (k *socket) close() {
	k.closeOnce.Do(func() {
		k.closed.Store(true)
		if dl, ok := k.ln.(interface{ SetDeadline(time.Time) error }); ok {
			dl.SetDeadline(time.Now()) // wake the loop for its last sweep
		} else {
			k.ln.Close()
		}
		k.startOnce.Do(func() { close(k.done) }) // never served: no loop to wait for
		<-k.done
		k.ln.Close()
	})
}

// sweepBudget bounds the backlog sweep of a closing socket.
const sweepBudget = 250 * time.Millisecond

// Accept back-off after a failure such as EMFILE: 5 ms doubling to 1 s,
// reset by the next success, so exhaustion neither spins a CPU nor ends the
// loop.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

func (k *socket) acceptLoop() {
	defer close(k.done)
	var delay time.Duration
	for {
		c, err := k.ln.Accept()
		if err != nil {
			if k.closed.Load() || errors.Is(err, net.ErrClosed) {
				k.sweep()
				return
			}
			if delay == 0 {
				delay = minAcceptDelay
			} else {
				delay = min(2*delay, maxAcceptDelay)
			}
			k.log.Warn("accept failed; retrying", "endpoint", k.label, "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		b := k.owner.Load()
		if b == nil {
			b = k.last.Load() // released: its last owner drains it
		}
		if b == nil { // between release and close
			c.Close()
			continue
		}
		b.svc.accept(c, b)
	}
}

// sweep accepts the connections already queued in the listen backlog when
// the socket closes, and gives them to its last owner (which drains them):
// closing the listener would reset them. It stops at the first 10 ms
// without a connection, and after sweepBudget in any case, so clients that
// keep connecting cannot hold a shutdown open.
func (k *socket) sweep() {
	dl, ok := k.ln.(interface{ SetDeadline(time.Time) error })
	b := k.last.Load()
	if !ok || b == nil {
		return
	}
	for end := time.Now().Add(sweepBudget); time.Now().Before(end); {
		dl.SetDeadline(time.Now().Add(10 * time.Millisecond))
		c, err := k.ln.Accept()
		if err != nil {
			return
		}
		b.svc.accept(c, b)
	}
}
