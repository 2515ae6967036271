// This file owns the poller loops (epoll), where connections park without
// a goroutine and are served when their input comes, and the socket
// queries (SIOCINQ, SIOCOUTQ) that drain and the graceful close ask of the
// kernel.

package engine

import (
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// idlePoller is one poller loop (one per P): it holds connections without
// a goroutine each. A connection with nothing to read parks its descriptor
// here (epoll) and its goroutine exits; when the peer sends something, the
// loop reads it and runs DataReceived itself, writes the reply if the
// socket takes it at once, and parks the connection again (serveParked),
// as an event loop does; whatever needs more (an end of stream, a pause, a
// close, a stream's bulk) gets a goroutine that picks up the read loop
// where it left off. This is what makes an idle connection cost a few
// hundred bytes instead of a goroutine stack, and a message on a busy
// connection cost a read and a write and no goroutine switch.
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
	// pollers are the loops, one per P when the process started: a
	// descriptor belongs to pollers[fd % len(pollers)]. Empty if epoll is
	// unavailable: connections never park.
	pollers []*idlePoller
)

// getPoller starts the loops once; nil means connections never park.
func getPoller() *idlePoller {
	pollerOnce.Do(func() {
		n := runtime.GOMAXPROCS(0)
		for i := 0; i < n; i++ {
			epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
			if err != nil {
				break
			}
			p := &idlePoller{epfd: epfd}
			pollers = append(pollers, p)
			go p.loop()
		}
	})
	if len(pollers) == 0 {
		return nil
	}
	return pollers[0]
}

// pollerFor is the loop that holds fd while it is parked.
func pollerFor(fd int32) *idlePoller { return pollers[int(fd)%len(pollers)] }

// park registers fd with its loop. The caller has marked c parked; false
// means it could not be registered (the caller carries on reading itself).
// A TCP socket stays registered, edge-triggered, from one park to the
// next: arm false skips the system call, for a loop parking again a
// connection whose socket it has just read empty (an edge after that read
// comes as an event). A unix socket is registered for one event (a read
// can stop short there and leave input without an edge), and so is armed
// every time.
func (p *idlePoller) park(c *Conn, fd int32, arm bool) bool {
	p.mu.Lock()
	if int(fd) >= len(p.conns) {
		p.conns = slices.Grow(p.conns, int(fd)+1-len(p.conns))
		p.conns = p.conns[:cap(p.conns)]
	}
	p.conns[fd] = c
	p.mu.Unlock()
	unixSocket := c.isUnixSocket()
	if !arm && !unixSocket {
		return true
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: fd}
	if unixSocket {
		ev.Events = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT
	}
	// MOD looks at the socket as it is now: input that came while no one
	// was registered for it is an event at once.
	err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
	if err == unix.ENOENT {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}
	if err != nil {
		p.forget(c, fd)
		return false
	}
	return true
}

// forget removes fd from the poller (before its connection closes it, so a
// reused descriptor number never reaches the wrong connection).
func (p *idlePoller) forget(c *Conn, fd int32) {
	p.mu.Lock()
	if int(fd) < len(p.conns) && p.conns[fd] == c {
		p.conns[fd] = nil
	}
	p.mu.Unlock()
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
}

// hotWaitMillis: a loop that has just served something waits for more
// blocked in epoll_wait, for up to this long, and only after that in the
// runtime's poller. Blocked, it is woken by the kernel directly, which is
// what makes a busy connection cheap to serve (no poller round, no
// goroutine switch); but a goroutine blocked in a system call keeps its P
// until the runtime's monitor takes it back (up to 10 ms on a quiet
// host), so a quiet loop must not.
const hotWaitMillis = 1

// loop serves the connections whose descriptors become readable: it reads
// each and runs DataReceived itself where nothing else is needed (see
// serveParked), and starts a goroutine for the rest.
func (p *idlePoller) loop() {
	events := make([]unix.EpollEvent, 128)
	buf := make([]byte, readBufferSize)
	r := &reader{} // its recvmsg scratch
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
	for {
		switch {
		case hot:
			// What the last round made runnable runs before this
			// goroutine blocks with its P.
			runtime.Gosched()
			var err error
			if n, err = unix.EpollWait(p.epfd, events, hotWaitMillis); err != nil {
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
		}
		hot = true
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			var c *Conn
			p.mu.Lock()
			if int(fd) < len(p.conns) {
				c, p.conns[fd] = p.conns[fd], nil
			}
			p.mu.Unlock()
			if c != nil {
				c.serveParked(buf, r, events[i].Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != unix.EPOLLIN)
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
