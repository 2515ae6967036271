package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/internal/rawconn"
)

// socket is one listening socket and its accept loop. It outlives the
// service that opened it when a reload hands it to the service's successor:
// the loop always gives each connection to the socket's current owner, so
// swapping owners never closes the socket and never refuses a connection.
type socket struct {
	key   string           // ep.Addr.Key(): "" for a socket never shared (port 0)
	addr  endpoint.Address // what it is bound to
	label string
	ln    net.Listener // stream endpoints
	// bare accepts ln's connections as bare descriptors for the owners
	// that can serve them (see binding.acceptsBare); nil where it cannot.
	bare  *rawconn.Listener
	dgram *dgramSocket // udp endpoints
	log   *slog.Logger

	owner     atomic.Pointer[binding]
	last      atomic.Pointer[binding] // the owner when released: gets the backlog sweep
	swapMu    sync.Mutex              // owner swaps against a udp loop's claimBatch and read
	batch     *dgramBinding           // udp: who the batch being read goes to (the loop's own)
	startOnce sync.Once
	closeOnce sync.Once
	closed    atomic.Bool
	done      chan struct{} // closed when the accept loop has returned
	// inherited: passed by the service manager. Closing it closes only
	// superd's duplicate (no shutdown, no unlink, no backlog sweep: what
	// is queued waits for the next owner) and calls onClose.
	inherited bool
	onClose   func()
	// round: the supervisor's round (start or reload) that last gave
	// this passed socket to an endpoint (under the supervisor's lock).
	round int
	// reusePort: a socket of superd's own sharing its port with other
	// processes (reuse_port); a tcp or tls listener's is quiesced before
	// its last sweep.
	reusePort bool
	// tcp: a tcp or tls listener's options in force (a reload that keeps
	// the socket retunes it to its new owner's: see service.activate).
	// Read and written under the supervisor's lock.
	tcp endpoint.TCPOptions
	// waiting: the loop serves an owner in wait mode (it watches the
	// socket and hands it over instead of accepting).
	waiting atomic.Bool
	// watchFile is the descriptor watch waits on (a duplicate of the
	// listener's: a listener's own RawConn cannot wait for input), so
	// wake and close can interrupt the wait.
	watchFile atomic.Pointer[os.File]
}

func listenSocket(ep *endpoint.Config, log *slog.Logger) (*socket, error) {
	key := ep.Addr.Key()
	if ep.Kind == endpoint.KindUDP {
		// Bound with the system's buffer sizes first, so that they are
		// known (see dgramSocket.born), then given the endpoint's.
		bare := *ep
		bare.ReadBuffer, bare.WriteBuffer = 0, 0
		uc, err := endpoint.ListenUDP(bare)
		if err != nil {
			return nil, err
		}
		born := socketBuffers(uc)
		if err := endpoint.SetBuffers(uc, *ep); err != nil {
			uc.Close()
			return nil, err
		}
		bio, err := newBatchIO(uc)
		if err != nil {
			uc.Close()
			return nil, &endpoint.ListenError{Label: ep.Label, Err: err}
		}
		return &socket{key: key, addr: ep.Addr, label: ep.Label, dgram: newDgramSocket(uc, bio, born), log: log, done: make(chan struct{}),
			reusePort: ep.ReusePort}, nil
	}
	ln, err := endpoint.Listen(*ep)
	if err != nil {
		return nil, err
	}
	return &socket{key: key, addr: ep.Addr, label: ep.Label, ln: ln, bare: bareListener(ln, log), log: log, done: make(chan struct{}),
		reusePort: ep.ReusePort, tcp: ep.TCP}, nil
}

// keeps reports, as an error, what ep asks of the socket a reload carries
// over to it that the socket cannot change: reuse_port (tcp, tls and udp)
// and v6only (tcp and tls) count only when it is bound. (A socket the
// service manager passed has its own, its unit's.)
func (k *socket) keeps(ep *endpoint.Config) error {
	if k.inherited || ep.Kind == endpoint.KindUnix {
		return nil
	}
	var changed []string
	if ep.ReusePort != k.reusePort {
		changed = append(changed, fmt.Sprintf("reuse_port (%v, now %v)", k.reusePort, ep.ReusePort))
	}
	if k.ln != nil && ep.TCP.V6Only != k.tcp.V6Only {
		changed = append(changed, fmt.Sprintf("v6only (%v, now %v)", k.tcp.V6Only, ep.TCP.V6Only))
	}
	if changed == nil {
		return nil
	}
	return fmt.Errorf("%s: set only when the socket is bound, and a reload keeps it open: restart superd to change it", strings.Join(changed, " and "))
}

// bareListener makes the socket's bare-descriptor listener, where ln's
// connections can be accepted so; nil otherwise.
func bareListener(ln net.Listener, log *slog.Logger) *rawconn.Listener {
	if !rawconn.Supported {
		return nil
	}
	sc, isUnix, laddr, ok := endpoint.RawListener(ln)
	if !ok {
		return nil
	}
	bl, err := rawconn.NewListener(sc, isUnix, laddr)
	if err != nil {
		// Every connection then comes through net, as it always can.
		log.Debug("cannot accept bare descriptors", "addr", ln.Addr(), "err", err)
		return nil
	}
	return bl
}

// serve makes b the socket's owner, starting the accept loop the first time.
// An owner in wait mode (see ListenerHandler) is served by watching the
// socket instead of accepting; when a reload changes the mode, the loop is
// woken to switch.
func (k *socket) serve(b *binding) {
	k.swapMu.Lock()
	prev := k.owner.Swap(b)
	k.swapMu.Unlock()
	started := false
	k.startOnce.Do(func() { started = true; go k.loop() })
	if !started && prev != nil && prev.svc.waits() != b.svc.waits() {
		k.wake()
	}
}

// wake interrupts the loop's Accept, read or wait, so it looks at its
// owner again. A udp socket gets a read deadline only: replies its
// protocols send meanwhile go out.
func (k *socket) wake() {
	if k.dgram != nil {
		k.dgram.uc.SetReadDeadline(time.Now())
	} else if dl, ok := k.deadliner(); ok {
		dl.SetDeadline(time.Now())
	}
	if k.bare != nil {
		k.bare.SetDeadline(time.Now())
	}
	if f := k.watchFile.Load(); f != nil {
		f.SetReadDeadline(time.Now())
	}
}

// conn is the socket as a listener or a udp socket, for what both have.
type deadliner interface{ SetDeadline(time.Time) error }

func (k *socket) deadliner() (deadliner, bool) {
	if k.dgram != nil {
		return k.dgram.uc, true
	}
	dl, ok := k.ln.(deadliner)
	return dl, ok
}

// closeConn closes the listener or the udp socket.
func (k *socket) closeConn() error {
	if k.dgram != nil {
		return k.dgram.uc.Close()
	}
	if k.bare != nil {
		k.bare.Close()
	}
	err := k.ln.Close()
	if errors.Is(err, endpoint.ErrSocketFileLeft) {
		// Whoever starts next as root replaces it as a stale socket.
		k.log.Warn("cannot remove the socket file at close", "endpoint", k.label, "err", err)
	}
	return err
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

// close closes the listener and waits for the accept loop to end. A loop in
// wait mode may be inside a handover that lasts until its owner's drain
// ends the child: it is not waited for (it returns by itself once the
// handover is over).
func (k *socket) close() {
	k.closeOnce.Do(func() {
		k.closed.Store(true)
		if k.waiting.Load() {
			k.closeConn()
			if f := k.watchFile.Load(); f != nil {
				f.SetReadDeadline(time.Now()) // watch sees closed
			}
			if k.onClose != nil {
				k.onClose()
			}
			return
		}
		if k.dgram != nil {
			k.closeDatagrams()
			return
		}
		if dl, ok := k.deadliner(); ok {
			dl.SetDeadline(time.Now()) // wake the loop for its last sweep
			if k.bare != nil {
				k.bare.SetDeadline(time.Now())
			}
		} else {
			k.closeConn()
		}
		k.startOnce.Do(func() { close(k.done) }) // never served: no loop to wait for
		<-k.done
		k.closeConn()
		if k.onClose != nil {
			k.onClose()
		}
	})
}

// closeDatagrams closes a udp socket. Only its reading stops now: the
// replies of the batch being delivered still go out, and the loop closes
// the socket once that batch is over. That batch is not waited for here
// (its protocol may take long, and a reload or shutdown closing the
// socket holds the supervisor's lock): its service's drain waits for it,
// within shutdown_timeout. An idle loop is waited for, so that the
// address is free again when close returns.
func (k *socket) closeDatagrams() {
	s := k.dgram
	s.uc.SetReadDeadline(time.Now())
	running := true
	k.startOnce.Do(func() { running = false; close(k.done) })
	if !running {
		k.closeConn()
		if k.onClose != nil {
			k.onClose()
		}
		return
	}
	// closed was set before dispatching is looked at: a batch the loop
	// starts after this look is told on lateBatch (the loop looks at
	// closed after it sets dispatching).
	s.mu.Lock()
	busy := s.dispatching
	s.mu.Unlock()
	if busy {
		return
	}
	select {
	case <-k.done:
	case <-s.lateBatch:
	}
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

// loop serves the socket until it closes: by accepting, or, while its
// owner is in wait mode, by watching it.
func (k *socket) loop() {
	defer close(k.done)
	for {
		b := k.owner.Load()
		if b != nil && b.svc.waits() {
			k.waiting.Store(true)
			if k.closed.Load() { // close may have missed the flag
				k.closeConn()
				return
			}
			if !k.watch() {
				return
			}
			continue
		}
		if k.dgram != nil {
			if !k.datagramLoop() {
				k.closeConn() // see closeDatagrams
				if k.onClose != nil {
					k.onClose()
				}
				return
			}
			continue
		}
		if !k.acceptLoop() {
			return
		}
	}
}

// acceptLoop accepts until the socket closes (false) or its owner switches
// to wait mode (true).
func (k *socket) acceptLoop() bool {
	k.waiting.Store(false)
	var delay time.Duration
	for {
		c, err := k.accept()
		if err != nil {
			if k.closed.Load() || errors.Is(err, net.ErrClosed) {
				k.sweep()
				return false
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				k.clearDeadline()
				if k.closed.Load() {
					k.sweep()
					return false
				}
				if b := k.owner.Load(); b != nil && b.svc.waits() {
					return true
				}
				continue
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

// accept accepts the next connection: as a bare descriptor when the
// owner serves those, otherwise through net.
func (k *socket) accept() (net.Conn, error) {
	if k.bare != nil {
		if b := k.owner.Load(); b != nil && b.acceptsBare() {
			c, err := k.bare.Accept()
			if err != nil {
				return nil, err // a nil *rawconn.Conn is not a nil net.Conn
			}
			return c, nil
		}
	}
	return k.ln.Accept()
}

func (k *socket) clearDeadline() {
	if dl, ok := k.deadliner(); ok {
		dl.SetDeadline(time.Time{})
	}
	if k.bare != nil {
		k.bare.SetDeadline(time.Time{})
	}
	if f := k.watchFile.Load(); f != nil {
		f.SetReadDeadline(time.Time{})
	}
}

// watch serves an owner in wait mode: it waits until a connection is
// queued, hands the socket to the owner's factory, which serves it until
// its program exits, and watches again. It returns false when the socket
// closes, true when the owner is no longer in wait mode.
func (k *socket) watch() bool {
	// The RawConn of a listener refuses Read (EINVAL), so the wait is on
	// a duplicate descriptor, which the runtime's poller watches as a file.
	f, err := k.file()
	if err != nil {
		k.log.Error("wait mode needs a socket with a descriptor", "endpoint", k.label, "err", err)
		return false
	}
	k.watchFile.Store(f)
	defer func() {
		k.watchFile.Store(nil)
		f.Close()
	}()
	if k.closed.Load() { // close may have missed watchFile
		return false
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return false
	}
	for {
		// Read calls the function, and while it reports false waits for
		// the socket to become readable (a connection queued) and calls
		// it again: no busy loop, nothing accepted.
		err := raw.Read(func(fd uintptr) bool {
			return readable(int(fd))
		})
		if k.closed.Load() || errors.Is(err, net.ErrClosed) {
			return false
		}
		if err != nil {
			k.clearDeadline() // woken by a change of owner
			if k.closed.Load() {
				return false
			}
		}
		b := k.owner.Load()
		if b == nil {
			b = k.last.Load()
		}
		if b == nil || !b.svc.waits() {
			return true
		}
		if err == nil {
			b.svc.serveListener(b)
		}
	}
}

// readable reports whether fd has input waiting (for a listener: a
// connection in its queue), without consuming it.
func readable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// sweep accepts the connections already queued in the listen backlog when
// the socket closes, and gives them to its last owner (which drains them):
// closing the listener would reset them. It stops at the first 10 ms
// without a connection, and after sweepBudget in any case, so clients that
// keep connecting cannot hold a shutdown open.
//
// A listener sharing its port (reuse_port) is quiesced first: the kernel
// stops queueing new connections on it, and its clients go to the other
// processes on the port instead of being reset at close (see
// endpoint.Quiesce); the sweep then ends once what was queued is
// accepted.
func (k *socket) sweep() {
	dl, ok := k.ln.(interface{ SetDeadline(time.Time) error })
	b := k.last.Load()
	if !ok || b == nil || k.inherited {
		return
	}
	if k.reusePort {
		if err := endpoint.Quiesce(k.ln); err != nil {
			k.log.Warn("cannot stop new connections before closing; some queued at close may be reset", "endpoint", k.label, "err", err)
		}
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
