//go:build linux

package exec

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Stderr logging (stderr = "log") is bounded: lines are cut at
// maxStderrLine bytes and at most stderrBurst lines of one process are
// logged at once, refilling stderrRate per second; what is left out is
// counted in the next line logged, and what is still owed when the process
// exits in one warning. A child that floods its stderr costs superd a
// fixed buffer, never more memory; its CPU is another matter: everything
// written is read (a program writing as fast as it can is held to the
// pace of this reader, which then keeps a CPU busy). Reading less would
// block the service's other children, whose stderr is the same socket.
const (
	maxStderrLine = 4096
	stderrRate    = 50
	stderrBurst   = 100
	// maxStderrPids bounds the processes whose stderr state (a partial
	// line, the rate) is kept at once. Past it, the one that wrote least
	// recently is flushed and forgotten.
	maxStderrPids = 1024
	// stderrRead is the receive buffer: what one read takes of one
	// process's output.
	stderrRead = 16 << 10
)

// stderrSocketType is the socket of a service's stderr log. A stream
// socket behaves for the writer like the pipe a program expects (a large
// write is taken in parts, a full buffer blocks), and with SO_PASSCRED
// the kernel never hands one read the bytes of two writers, each read
// coming with its writer's pid. A datagram socket would make a write
// larger than the send buffer fail (EMSGSIZE) and lose what does not fit
// the receive buffer, and queues only 10 datagrams
// (net.unix.max_dgram_qlen) before writers block.
const stderrSocketType = unix.SOCK_STREAM

// stderrLog is the stderr of every child of one service under
// stderr = "log": one socket pair, whose one end is every child's fd 2
// (grandchildren that inherit it included) and whose other end superd
// reads, in one goroutine, with each writer's pid (SCM_CREDENTIALS). No
// descriptor and no goroutine per child: the child's state here (its
// partial line, its rate) exists only once it has written something, and
// is flushed when it is reaped.
type stderrLog struct {
	log  *slog.Logger
	w    *os.File // the children's end, blocking
	wfd  uintptr  // its descriptor
	r    *os.File // superd's end, in the runtime's poller
	rc   syscall.RawConn
	done chan struct{} // the reader has returned

	closeOnce sync.Once

	mu      sync.Mutex
	pids    map[int32]*stderrPid
	buf     []byte
	oob     []byte
	closed  bool
	closing bool // close has begun
	shut    bool // the children's end was shut down
}

// stderrPid is what is kept of one writing process.
type stderrPid struct {
	line       []byte // a partial line, shorter than maxStderrLine
	cut        bool   // the rest of an over-long line follows
	tokens     float64
	last       time.Time // of the rate
	suppressed int
	seen       time.Time // last written
}

// newStderrLog makes the socket pair and starts its reader.
func newStderrLog(log *slog.Logger) (*stderrLog, error) {
	return newStderrLogOf(log, stderrSocketType)
}

// newStderrLogOf is newStderrLog with another kind of socket (to compare
// them).
func newStderrLogOf(log *slog.Logger, typ int) (*stderrLog, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socketpair", err)
	}
	// Every message superd reads comes with its writer's credentials.
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, os.NewSyscallError("setsockopt SO_PASSCRED", err)
	}
	// Nothing is ever written to superd's end, nor read from the
	// children's.
	unix.Shutdown(fds[0], unix.SHUT_WR)
	s := &stderrLog{
		log:  log,
		r:    pollable(fds[0], "stderr log"),
		w:    os.NewFile(uintptr(fds[1]), "stderr of programs"),
		wfd:  uintptr(fds[1]),
		done: make(chan struct{}),
		pids: map[int32]*stderrPid{},
		buf:  make([]byte, stderrRead),
		oob:  make([]byte, unix.CmsgSpace(unix.SizeofUcred)),
	}
	rc, err := s.r.SyscallConn()
	if err != nil {
		s.r.Close()
		s.w.Close()
		return nil, err
	}
	s.rc = rc
	go s.read()
	return s, nil
}

// fd is the descriptor to give a child as its fd 2.
func (s *stderrLog) fd() uintptr { return s.wfd }

// read reads whatever arrives until the socket is closed, taking s.mu for
// one read at a time: exited and close, which take it to read what is
// queued themselves, never wait for a flood to stop (read in one locked
// loop until nothing was queued, which writers faster than superd never
// let happen, a flood held every other child's exit for seconds).
func (s *stderrLog) read() {
	defer close(s.done)
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			s.mu.Lock()
			n := s.readOne(int(fd))
			s.mu.Unlock()
			if n <= 0 {
				return false // wait for more
			}
		}
	})
	if err != nil && !errors.Is(err, os.ErrClosed) {
		s.log.Debug("program stderr read failed", "err", err)
	}
}

// drainQueued reads and logs what is queued now, and no more, so that a
// writer that keeps writing cannot keep it reading. s.mu is held.
func (s *stderrLog) drainQueued(fd int) {
	queued, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		queued = 1 // one read, at least
	}
	for got := 0; got < queued; {
		n := s.readOne(fd)
		if n <= 0 {
			return
		}
		got += n
	}
}

// readOne reads one message and logs its lines; it returns its length, 0
// at the end of the stream (or once closed), -1 when nothing is queued or
// the read failed. s.mu is held.
func (s *stderrLog) readOne(fd int) int {
	if s.closed {
		return 0
	}
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, s.buf, s.oob, unix.MSG_DONTWAIT)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if err != unix.EAGAIN {
				s.log.Debug("program stderr read failed", "err", err)
			}
			return -1
		}
		if n == 0 {
			// Every writer is gone: at close, or a program shut the
			// shared socket down (its siblings' writes now fail).
			if !s.closing && !s.shut {
				s.shut = true
				s.log.Warn("program stderr socket shut down by a program: the service's programs can no longer write to stderr")
			}
			return 0
		}
		s.write(writerPID(s.oob[:oobn]), s.buf[:n])
		return n
	}
}

// writerPID takes the writer's pid from SCM_CREDENTIALS (0 without).
func writerPID(oob []byte) int32 {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_CREDENTIALS && len(data) >= unix.SizeofUcred {
			return int32(binary.NativeEndian.Uint32(data)) // unix.Ucred.Pid
		}
		oob = rest
	}
	return 0
}

// write takes b, written by pid, line by line. s.mu is held.
func (s *stderrLog) write(pid int32, b []byte) {
	now := time.Now()
	p := s.pids[pid]
	if p == nil {
		if len(s.pids) >= maxStderrPids {
			s.evict()
		}
		p = &stderrPid{tokens: stderrBurst, last: now}
		s.pids[pid] = p
	}
	p.seen = now
	for len(b) > 0 {
		room := maxStderrLine - len(p.line)
		i := bytes.IndexByte(b, '\n')
		switch {
		case i >= 0 && i < room:
			// A whole line: straight from b when nothing was pending.
			line := b[:i+1]
			if len(p.line) > 0 {
				p.line = append(p.line, line...)
				line = p.line
			}
			s.emit(pid, p, line, true, false)
			p.line = p.line[:0]
			b = b[i+1:]
		case len(b) >= room:
			// The line fills the buffer: logged cut, the rest skipped.
			p.line = append(p.line, b[:room]...)
			s.emit(pid, p, p.line, false, true)
			p.line = p.line[:0]
			b = b[room:]
		default:
			if p.line == nil {
				p.line = make([]byte, 0, maxStderrLine)
			}
			p.line = append(p.line, b...)
			b = nil
		}
	}
}

// emit logs one line of pid, unless it continues a cut line or the rate
// leaves it out. full: it ends in a newline; bufferFull: it is cut.
func (s *stderrLog) emit(pid int32, p *stderrPid, line []byte, full, bufferFull bool) {
	skip := p.cut
	p.cut = !full && bufferFull
	if skip {
		return
	}
	now := time.Now()
	p.tokens = min(stderrBurst, p.tokens+now.Sub(p.last).Seconds()*stderrRate)
	p.last = now
	if p.tokens < 1 {
		p.suppressed++
		return
	}
	p.tokens--
	if !s.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	attrs := make([]slog.Attr, 0, 4)
	attrs = append(attrs, slog.Int("pid", int(pid)), slog.String("line", string(bytes.TrimRight(line, "\r\n"))))
	if p.cut {
		attrs = append(attrs, slog.Bool("truncated", true))
	}
	if p.suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed_before", p.suppressed))
		p.suppressed = 0
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "program stderr", attrs...)
}

// end flushes what pid left (its partial line, its count of lines not
// logged) and forgets it. s.mu is held.
func (s *stderrLog) end(pid int32, p *stderrPid) {
	if len(p.line) > 0 {
		s.emit(pid, p, p.line, false, false)
	}
	if p.suppressed > 0 {
		s.log.Warn("program stderr lines not logged (too many)", "pid", int(pid), "lines", p.suppressed)
	}
	delete(s.pids, pid)
}

// evict ends the process that wrote least recently (a grandchild,
// typically, which superd does not reap). s.mu is held.
func (s *stderrLog) evict() {
	var oldest int32
	var op *stderrPid
	for pid, p := range s.pids {
		if op == nil || p.seen.Before(op.seen) {
			oldest, op = pid, p
		}
	}
	if op != nil {
		s.end(oldest, op)
	}
}

// exited is called when superd has reaped pid: everything it wrote is
// queued by now (or read), so what is queued is read, and its partial
// line flushed.
func (s *stderrLog) exited(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rc.Control(func(fd uintptr) { s.drainQueued(int(fd)) })
	if p := s.pids[int32(pid)]; p != nil {
		s.end(int32(pid), p)
	}
}

// close is called once no child of the service runs: what grandchildren
// left is read and flushed, and the reader stops.
func (s *stderrLog) close() { s.closeOnce.Do(s.doClose) }

func (s *stderrLog) doClose() {
	s.mu.Lock()
	s.closing = true
	s.w.Close()
	s.rc.Control(func(fd uintptr) { s.drainQueued(int(fd)) })
	for pid, p := range s.pids {
		s.end(pid, p)
	}
	s.closed = true
	s.mu.Unlock()
	s.r.Close()
	<-s.done
}
