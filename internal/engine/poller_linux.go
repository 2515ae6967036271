// This file owns the idle poller (epoll), where idle connections park
// without a goroutine (and, on one CPU, are served by its loop: see
// serve_loop.go), and the socket queries (SIOCINQ, SIOCOUTQ) that drain
// and the graceful close ask of the kernel.

package engine

import (
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// idlePoller holds idle connections without a goroutine each: a connection
// with nothing to read parks its descriptor here (epoll, one-shot) and its
// goroutine exits; when the peer sends something (or closes), the poller
// starts a goroutine that picks up the read loop where it left off. This is
// what makes an idle connection cost a few hundred bytes instead of a
// goroutine stack.
type idlePoller struct {
	epfd int
	// epf is epfd in the runtime's poller (see loop), kept here so that
	// it stays reachable: its finalizer would close epfd.
	epf *os.File
	mu  sync.Mutex
	// conns are the parked connections, indexed by descriptor: the
	// numbers are small and dense, so a slice costs a pointer per
	// descriptor where a map would cost about four.
	conns []*Conn
}

var (
	pollerOnce sync.Once
	thePoller  *idlePoller // nil if epoll is unavailable: connections never park
)

func getPoller() *idlePoller {
	pollerOnce.Do(func() {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return
		}
		thePoller = &idlePoller{epfd: epfd}
		followGOMAXPROCS()
		go thePoller.loop()
	})
	return thePoller
}

// park registers fd with the poller. The caller has marked c parked;
// false means it could not be registered (the caller carries on reading
// itself).
//
// Where the loop serves (loopServes), a TCP socket is registered
// edge-triggered and stays registered from one park to the next, while
// the loop serves it: arm false skips the system call, for the loop
// parking again a connection whose socket its read left empty (input
// after that read is a new edge, so an event). Otherwise, and for a unix
// socket (a read can stop short there and leave input without a new
// edge), the registration is for one event and is armed every time. A
// connection registered for one event before the loop began to serve
// (GOMAXPROCS changed: see followGOMAXPROCS) is armed anew, edge-triggered.
// The caller holds c.mu.
func (p *idlePoller) park(c *Conn, fd int32, arm bool) bool {
	p.mu.Lock()
	if int(fd) >= len(p.conns) {
		p.conns = slices.Grow(p.conns, int(fd)+1-len(p.conns))
		p.conns = p.conns[:cap(p.conns)]
	}
	p.conns[fd] = c
	p.mu.Unlock()
	edge := loopServes.Load() && !c.isUnixSocket()
	if !arm && edge && c.edgeArmed {
		return true
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: fd}
	if edge {
		ev.Events = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET
	}
	// MOD looks at the socket as it is now: input that came while nothing
	// was armed for it is an event at once.
	err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
	if err == unix.ENOENT {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}
	if err != nil {
		p.forget(c, fd)
		return false
	}
	c.edgeArmed = edge
	return true
}

// forget removes fd from the poller. The caller makes sure fd is still
// c's (c is parked, or its reader is inside a read, so nothing closes
// it): after a close the number may be another connection's, whose
// registration this would remove.
func (p *idlePoller) forget(c *Conn, fd int32) {
	p.unmap(c, fd)
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
}

// unmap lets go of c, which has ended: a registration kept while the
// connection was served elsewhere went with the descriptor's close, but
// the table would still hold c until its descriptor number is reused.
func (p *idlePoller) unmap(c *Conn, fd int32) {
	p.mu.Lock()
	if int(fd) < len(p.conns) && p.conns[fd] == c {
		p.conns[fd] = nil
	}
	p.mu.Unlock()
}

// hotWait: a loop that has just served something waits for more blocked
// in epoll_wait, for up to this long, and only then in the runtime's
// poller. Blocked, it is woken by the kernel directly: no round through
// the runtime's poller and scheduler per message, which is what serving
// in the loop saves. But a goroutine blocked in a system call keeps its P
// until the runtime's monitor takes it back, so a quiet loop must not.
const hotWait = time.Millisecond

// loop wakes the connections whose descriptors become readable, or, where
// it serves them (loopServes), reads them and runs DataReceived itself
// (see serveParked). It waits in the runtime's poller, on the epoll
// descriptor itself (which is readable while it holds events), rather
// than blocked in epoll_wait: a goroutine blocked in a system call keeps
// its P, so the goroutines it just started for woken connections could
// wait for the runtime's monitor to take the P back (10-25 ms on a busy
// host). Only a serving loop that has just served blocks, for up to
// hotWait (see there). Where the epoll descriptor cannot go in the
// poller, it blocks in epoll_wait after all.
func (p *idlePoller) loop() {
	events := make([]unix.EpollEvent, 128)
	var lio *loopIO // a serving loop's, made on first use
	n := 0
	collect := func(fd uintptr) bool {
		var err error
		n, err = unix.EpollWait(int(fd), events, 0)
		if err != nil {
			n = 0
			return err != unix.EINTR && err != unix.EAGAIN
		}
		return n > 0
	}
	var rc syscall.RawConn
	if unix.SetNonblock(p.epfd, true) == nil {
		p.epf = os.NewFile(uintptr(p.epfd), "idle poller") // never closed: the poller lives as long as the process
		if c, err := p.epf.SyscallConn(); err == nil {
			rc = c
		}
	}
	hot := false
	var cold time.Time   // when the loop last looked through the runtime's poller
	looked := time.Now() // when it last looked at GOMAXPROCS
	for {
		switch {
		case hot && time.Since(cold) > hotWait:
			// Busy for a hotWait: one look through the runtime's
			// poller, which parks this goroutine if nothing is ready
			// yet, so that the runtime polls the network for the
			// goroutines waiting there (TLS, streams, listeners): with
			// one P, a loop that never parks would leave that to the
			// runtime's monitor, every 10 ms. A loop that always finds
			// input ready still does.
			hot = false
			continue
		case hot:
			// What the last round made runnable (a goroutine for a
			// connection handed over, a flusher) runs before this
			// goroutine blocks with the P.
			runtime.Gosched()
			var err error
			if n, err = unix.EpollWait(p.epfd, events, int(hotWait/time.Millisecond)); err != nil {
				continue // EINTR
			}
			if n == 0 {
				hot = false
				continue
			}
		case rc == nil || rc.Read(collect) != nil:
			rc = nil
			var err error
			if n, err = unix.EpollWait(p.epfd, events, -1); err != nil {
				continue // EINTR
			}
			cold = time.Now()
		default:
			cold = time.Now()
		}
		if !hot && cold.Sub(looked) >= lookAtGOMAXPROCS {
			looked = cold
			followGOMAXPROCS()
		}
		serving := loopServes.Load()
		hot = serving
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			var c *Conn
			p.mu.Lock()
			if int(fd) < len(p.conns) {
				c = p.conns[fd]
				if !serving {
					p.conns[fd] = nil
				}
			}
			p.mu.Unlock()
			switch {
			case c == nil:
			case serving:
				if lio == nil {
					lio = newLoopIO()
				}
				c.serveParked(lio, events[i].Events&^unix.EPOLLIN != 0)
			default:
				c.wake()
			}
		}
	}
}

// kernelQueueKnown: kernelHolds tells what the kernel holds.
const kernelQueueKnown = true

// kernelHolds reports whether the socket under a connection read through
// nc (TLS, or a connection whose PROXY header was read: a syscall.Conn
// that buffers) has received bytes not read yet (SIOCINQ).
func kernelHolds(nc net.Conn) bool {
	if tc, ok := nc.(interface{ NetConn() net.Conn }); ok { // TLS
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	rc.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n > 0
}

// quietAfterFIN reports whether a socket whose end of stream has just
// been queued (shutdown) has nothing unread from the peer (SIOCINQ) and
// nothing of ours unacknowledged but that FIN (SIOCOUTQ: a TCP FIN takes
// one place in the sequence; a unix socket counts what the peer has not
// read yet). Closing such a socket can cost the peer nothing; otherwise a
// graceful close lingers for the peer's EOF.
func quietAfterFIN(rc syscall.RawConn, isUnix bool) bool {
	quiet := false
	rc.Control(func(fd uintptr) {
		in, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if err != nil || in != 0 {
			return
		}
		out, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		fin := 1
		if isUnix {
			fin = 0
		}
		quiet = err == nil && out <= fin
	})
	return quiet
}
