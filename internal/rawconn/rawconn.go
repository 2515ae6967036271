// Package rawconn owns stream connections accepted as bare descriptors
// (accept4) instead of through Go's net package. Such a connection costs
// a descriptor and a few dozen bytes until it first has to wait: an idle
// connection that superd parks in its own poller never pays for the
// runtime's poll descriptor, its netFD, or the system calls Go makes on
// every accept (getsockname, TCP_NODELAY and keepalive setsockopts, which
// the listening socket passes on to what it accepts instead; see
// endpoint.SetAcceptedOptions). The first wait (a read or write that
// would block, a deadline) hands the descriptor to the runtime's poller as
// an *os.File, and from then on the connection behaves exactly as one
// from net.Listener.Accept.
package rawconn

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/superd-dev/superd/framework"
)

// Conn is a TCP or unix stream connection on a descriptor superd
// accepted itself. It is a net.Conn and a syscall.Conn, with CloseWrite
// and SetLinger as *net.TCPConn has them.
//
// Until it waits, its system calls run on the descriptor directly, each
// counted in ops, so that Close never closes a descriptor a system call
// is still using (the number could be reused by the next accept). Once in
// the runtime's poller (f), every call goes through f, which counts its
// own.
//
// An idle connection is this and its peer's address, so it is kept to 48
// bytes (a size class of the allocator): what its listener knows (unix or
// not, the local address) is read from there.
type Conn struct {
	mu     sync.Mutex
	fd     int32
	ops    int16 // raw system calls in progress on fd
	closed bool  // Close was called; the last op closes fd (or the file)
	// polled is fd in the runtime's poller, once something waited; it
	// never changes back, so it is read without mu.
	polled atomic.Pointer[polled]
	raddr  net.Addr
	ln     *Listener
}

// polled is a connection's descriptor in the runtime's poller.
type polled struct {
	f  *os.File
	rc syscall.RawConn // f's
}

// IsUnix reports whether the connection is a unix socket's.
func (c *Conn) IsUnix() bool { return c.ln.isUnix }

// LocalAddr implements net.Conn.
func (c *Conn) LocalAddr() net.Addr {
	if c.ln.laddr != nil {
		return c.ln.laddr
	}
	// A listener on a wildcard address: the kernel knows which address
	// this connection came to.
	var a net.Addr
	c.control(func(fd uintptr) { a = localAddr(int(fd), c.ln.isUnix) })
	if a == nil {
		return c.ln.addr // closed: the listener's own
	}
	return a
}

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// begin starts a system call on the bare descriptor; false: the call must
// go through f (returned), or the connection is closed (f nil).
func (c *Conn) begin() (fd int, p *polled, ok bool) {
	if p := c.polled.Load(); p != nil {
		return -1, p, false
	}
	c.mu.Lock()
	if c.closed {
		p = c.polled.Load()
		c.mu.Unlock()
		return -1, p, false
	}
	if p := c.polled.Load(); p != nil {
		c.mu.Unlock()
		return -1, p, false
	}
	c.ops++
	c.mu.Unlock()
	return int(c.fd), nil, true
}

// end ends a system call begun with begin, closing the descriptor if Close
// came meanwhile and this was the last call.
func (c *Conn) end() {
	c.mu.Lock()
	c.ops--
	last := c.closed && c.ops == 0
	c.mu.Unlock()
	if last {
		c.closeNow()
	}
}

// closeNow closes the descriptor, through the poller if it is there.
func (c *Conn) closeNow() error {
	if p := c.polled.Load(); p != nil {
		return p.f.Close()
	}
	return syscall.Close(int(c.fd))
}

// poll puts the descriptor in the runtime's poller (once); nil if the
// connection is closed.
func (c *Conn) poll() *polled {
	if p := c.polled.Load(); p != nil {
		return p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.polled.Load()
	}
	if p := c.polled.Load(); p != nil {
		return p
	}
	// NewFile sees the descriptor is non-blocking and registers it with
	// the poller, as net does for what it accepts.
	f := os.NewFile(uintptr(c.fd), "")
	rc, err := f.SyscallConn()
	if err != nil { // not for an *os.File made by NewFile
		panic(err)
	}
	p := &polled{f: f, rc: rc}
	c.polled.Store(p)
	return p
}

// Read implements net.Conn: what the socket holds, or, if it holds
// nothing, a wait in the runtime's poller.
func (c *Conn) Read(b []byte) (int, error) {
	if fd, _, ok := c.begin(); ok {
		n, err := ignoringEINTR(func() (int, error) { return syscall.Read(fd, b) })
		c.end()
		switch {
		case err == syscall.EAGAIN:
		case err != nil:
			return 0, c.opError("read", err)
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
	p := c.poll()
	if p == nil {
		return 0, c.opError("read", net.ErrClosed)
	}
	n, err := p.f.Read(b)
	return n, c.fileError("read", err)
}

// Write implements net.Conn: all of b, waiting in the runtime's poller
// whenever the socket's send buffer is full. Unlike net's, two Writes at
// once may interleave their bytes until the connection first waits: its
// user (the engine) has one writer at a time.
func (c *Conn) Write(b []byte) (int, error) {
	done := 0
	if fd, _, ok := c.begin(); ok {
		for done < len(b) {
			n, err := ignoringEINTR(func() (int, error) { return syscall.Write(fd, b[done:]) })
			if n > 0 {
				done += n
			}
			if err == syscall.EAGAIN {
				break
			}
			if err != nil {
				c.end()
				return done, c.opError("write", err)
			}
		}
		c.end()
		if done == len(b) {
			return done, nil
		}
	}
	p := c.poll()
	if p == nil {
		return done, c.opError("write", net.ErrClosed)
	}
	n, err := p.f.Write(b[done:])
	return done + n, c.fileError("write", err)
}

// Close implements net.Conn.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.opError("close", net.ErrClosed)
	}
	c.closed = true
	now := c.ops == 0
	c.mu.Unlock()
	if !now {
		return nil // the last system call in progress closes it
	}
	if err := c.closeNow(); err != nil {
		return c.opError("close", err)
	}
	return nil
}

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error {
	return c.deadline(t, (*os.File).SetDeadline)
}

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.deadline(t, (*os.File).SetReadDeadline)
}

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.deadline(t, (*os.File).SetWriteDeadline)
}

// deadline sets a deadline through the runtime's poller. Clearing one on
// a connection that never waited has nothing to clear.
func (c *Conn) deadline(t time.Time, set func(*os.File, time.Time) error) error {
	if t.IsZero() {
		c.mu.Lock()
		p, closed := c.polled.Load(), c.closed
		c.mu.Unlock()
		if p == nil && !closed {
			return nil
		}
	}
	p := c.poll()
	if p == nil {
		return c.opError("set", net.ErrClosed)
	}
	return c.fileError("set", set(p.f, t))
}

// CloseWrite shuts down the writing side (the peer reads EOF).
func (c *Conn) CloseWrite() error {
	var err error
	if cerr := c.control(func(fd uintptr) { err = syscall.Shutdown(int(fd), syscall.SHUT_WR) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return c.opError("shutdown", err)
	}
	return nil
}

// SetLinger is (*net.TCPConn).SetLinger: 0 makes Close reset the
// connection.
func (c *Conn) SetLinger(sec int) error {
	l := syscall.Linger{}
	if sec >= 0 {
		l.Onoff, l.Linger = 1, int32(sec)
	}
	var err error
	if cerr := c.control(func(fd uintptr) { err = syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &l) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return c.opError("set linger", err)
	}
	return nil
}

// SetReadBuffer is (*net.TCPConn).SetReadBuffer: the socket's receive
// buffer (SO_RCVBUF).
func (c *Conn) SetReadBuffer(bytes int) error {
	return c.setBuffer(syscall.SO_RCVBUF, bytes)
}

// SetWriteBuffer is (*net.TCPConn).SetWriteBuffer: the socket's send
// buffer (SO_SNDBUF).
func (c *Conn) SetWriteBuffer(bytes int) error {
	return c.setBuffer(syscall.SO_SNDBUF, bytes)
}

func (c *Conn) setBuffer(opt, bytes int) error {
	var err error
	if cerr := c.control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, bytes) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return c.opError("set", err)
	}
	return nil
}

// PeerCredentials is framework.PeerCredentials of a unix socket
// connection.
func (c *Conn) PeerCredentials() (framework.PeerCred, bool) {
	if !c.ln.isUnix {
		return framework.PeerCred{}, false
	}
	return peerCred(c)
}

// Standard turns the connection into one of net's (a *net.TCPConn or
// *net.UnixConn) on a duplicate of its descriptor, and closes this one:
// for a connection accepted bare that code needing net's types must
// serve after all.
//
// net.FileConn gives a TCP connection net's defaults (TCP_NODELAY, a 15 s
// keepalive), not its endpoint's, which the socket has from its listener:
// those are put back.
func (c *Conn) Standard() (net.Conn, error) {
	var (
		dfd  int
		derr error
		opts tcpOptions
	)
	if err := c.control(func(fd uintptr) {
		if !c.ln.isUnix {
			opts = getTCPOptions(int(fd))
		}
		dfd, derr = dupCloexec(int(fd))
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	if derr != nil {
		return nil, c.opError("dup", derr)
	}
	f := os.NewFile(uintptr(dfd), "")
	defer f.Close()
	nc, err := net.FileConn(f)
	if err == nil && !c.ln.isUnix {
		setTCPOptions(nc.(syscall.Conn), opts)
	}
	return nc, err
}

// SyscallConn implements syscall.Conn.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return rawConn{c}, nil }

// control runs fn on the descriptor, while nothing can close it.
func (c *Conn) control(fn func(fd uintptr)) error {
	if fd, p, ok := c.begin(); ok {
		fn(uintptr(fd))
		c.end()
		return nil
	} else if p != nil {
		return c.fileError("raw-control", p.rc.Control(fn))
	}
	return c.opError("raw-control", net.ErrClosed)
}

// rawConn is the connection's syscall.RawConn: Read and Write call fn on
// the descriptor and, when fn wants to wait, wait in the runtime's poller.
type rawConn struct{ c *Conn }

func (r rawConn) Control(fn func(fd uintptr)) error { return r.c.control(fn) }

func (r rawConn) Read(fn func(fd uintptr) bool) error {
	return r.c.rawIO(fn, func(rc syscall.RawConn) error { return rc.Read(fn) })
}

func (r rawConn) Write(fn func(fd uintptr) bool) error {
	return r.c.rawIO(fn, func(rc syscall.RawConn) error { return rc.Write(fn) })
}

// rawIO calls fn once on the bare descriptor; if fn wants to wait, the
// connection moves to the runtime's poller and waits there (wait).
func (c *Conn) rawIO(fn func(fd uintptr) bool, wait func(syscall.RawConn) error) error {
	if fd, _, ok := c.begin(); ok {
		done := fn(uintptr(fd))
		c.end()
		if done {
			return nil
		}
	}
	p := c.poll()
	if p == nil {
		return c.opError("raw-read", net.ErrClosed)
	}
	return c.fileError("raw-io", wait(p.rc))
}

func ignoringEINTR(fn func() (int, error)) (int, error) {
	for {
		n, err := fn()
		if err != syscall.EINTR {
			return n, err
		}
	}
}

// opError is the error net would give.
func (c *Conn) opError(op string, err error) error {
	network := "tcp"
	if c.ln.isUnix {
		network = "unix"
	}
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: network, Source: c.ln.laddr, Addr: c.raddr, Err: err}
}

// fileError turns what *os.File returns into what net would: the cause
// of an *os.PathError, anything after Close as net.ErrClosed, EOF as is.
func (c *Conn) fileError(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return c.opError(op, net.ErrClosed)
	}
	if pe, ok := err.(*os.PathError); ok {
		err = pe.Err
	}
	return c.opError(op, err)
}
