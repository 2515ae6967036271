//go:build linux

package exec

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/metrics"
)

// relayBuffer is what superd holds per direction of a relayed connection:
// a peer that does not read stops the copy in that direction, and the
// kernel's buffers stop the other side; nothing grows.
const relayBuffer = 32 << 10

var relayBuffers = sync.Pool{New: func() any { b := make([]byte, relayBuffer); return &b }}

// serveRelayed gives the child one end of a socket pair and copies between
// the other end and the connection (TLS: superd stays in the stream). Each
// direction passes its end of stream on as a half-close.
func (f *Factory) serveRelayed(hc *framework.HandedConn, env []string) error {
	client := hc.Conn
	peer := peerString(client)
	defer client.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return &framework.RejectError{Reason: metrics.RejectSpawn, Err: err}
	}
	childEnd := os.NewFile(uintptr(fds[0]), "exec child end")
	ourFile := os.NewFile(uintptr(fds[1]), "exec relay end")
	ours, err := net.FileConn(ourFile)
	ourFile.Close()
	if err != nil {
		childEnd.Close()
		return &framework.RejectError{Reason: metrics.RejectSpawn, Err: err}
	}
	defer ours.Close()
	ch, err := f.start([]int{fds[0], fds[0]}, env, peer, false)
	childEnd.Close()
	if err != nil {
		f.spawnLog.failed(f.log, f.path, peer, err)
		return &framework.RejectError{Reason: metrics.RejectSpawn, Err: err}
	}
	f.spawnLog.started(f.log, f.path)
	hc.Served()
	hc.SetRunningPID(ch.pid)

	closeAll := sync.OnceFunc(func() { client.Close(); ours.Close() })
	idle := startRelayIdle(hc, ch, closeAll)
	var in, out atomic.Int64 // the status view reads them meanwhile
	hc.SetLiveBytes(func() (int64, int64) { return in.Load(), out.Load() })
	defer func() {
		hc.SetLiveBytes(nil)
		hc.BytesIn, hc.BytesOut = in.Load(), out.Load()
	}()
	upDone := make(chan struct{})
	downDone := make(chan struct{})
	go func() { // client to child
		defer close(upDone)
		if lost := copyUp(ours.(*net.UnixConn), client, hc, &in, idle); lost {
			// The client is gone (reset): the program's connection
			// ends, as a socket handed over would.
			closeAll()
		}
	}()
	go func() { // child to client
		defer close(downDone)
		if lost := copyDown(client, ours, hc, &out); lost {
			// The client no longer takes what the program writes: its
			// writes fail (EPIPE) instead of blocking forever.
			closeAll()
		}
	}()

	unwatch := ch.watch(hc.Stopping, hc.Killed)
	ws, werr := ch.wait()
	unwatch()
	recordExit(hc, ch.pid, ws, werr)
	// Everything the child wrote is passed on, unless the drain's time is
	// up; then the client connection closes too (aborted: cut).
	cut := false
	select {
	case <-downDone:
	case <-hc.Killed.Done():
		select {
		case <-downDone:
		default:
			cut = true
		}
	}
	closeAll()
	<-downDone
	<-upDone
	timedOut := idle.finish()
	switch {
	case ch.wasKilled() || cut:
		return framework.ErrShutdownTimeout
	case timedOut:
		return framework.ErrIdleTimeout
	}
	return werr
}

// relayIdle is a relayed connection's idle timeout: nothing received from
// the client for IdleTimeout, whatever the relay is doing meanwhile (the
// program not reading, so superd not reading either; the client's end of
// stream already passed on), ends the connection as the engine's timeout
// ends a protocol's: the connection closes, the program gets stop_signal
// and, still running ShutdownTimeout later, SIGKILL. Reads only record
// their time (received); the timer checks it and re-arms for the rest.
type relayIdle struct {
	timeout  time.Duration
	received atomic.Int64 // monoNow at the client's last input
	ch       *child
	grace    time.Duration
	closeAll func()

	mu       sync.Mutex
	timer    *time.Timer
	kill     *time.Timer // the SIGKILL's, once timed out
	timedOut bool
	finished bool
}

// startRelayIdle starts hc's idle timeout over the relay to ch (nil
// without one).
func startRelayIdle(hc *framework.HandedConn, ch *child, closeAll func()) *relayIdle {
	if hc.IdleTimeout <= 0 {
		return nil
	}
	ri := &relayIdle{timeout: hc.IdleTimeout, ch: ch, grace: hc.ShutdownTimeout, closeAll: closeAll}
	ri.received.Store(monoNow())
	ri.mu.Lock()
	ri.timer = time.AfterFunc(ri.timeout, ri.check)
	ri.mu.Unlock()
	return ri
}

// got records input from the client.
func (ri *relayIdle) got() {
	if ri != nil {
		ri.received.Store(monoNow())
	}
}

// check runs when the timer fires.
func (ri *relayIdle) check() {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	if ri.finished || ri.timedOut {
		return
	}
	if quiet := time.Duration(monoNow() - ri.received.Load()); quiet < ri.timeout {
		ri.timer.Reset(ri.timeout - quiet)
		return
	}
	ri.timedOut = true
	ri.closeAll()
	ri.kill = ri.ch.stop(ri.grace)
}

// finish stops the timeout once the program has exited and the relay has
// ended, and reports whether it had timed out.
func (ri *relayIdle) finish() (timedOut bool) {
	if ri == nil {
		return false
	}
	ri.mu.Lock()
	defer ri.mu.Unlock()
	ri.finished = true
	ri.timer.Stop()
	if ri.kill != nil {
		ri.kill.Stop()
	}
	return ri.timedOut
}

// monoNow is the monotonic time since the process started.
func monoNow() int64 { return int64(time.Since(processStart)) }

var processStart = time.Now()

// copyUp copies from the client to the child, recording each input for
// the idle timeout, and reports whether the client's connection failed
// (lost). The client's end of stream becomes the child's.
func copyUp(dst *net.UnixConn, src net.Conn, hc *framework.HandedConn, in *atomic.Int64, idle *relayIdle) (lost bool) {
	bp := relayBuffers.Get().(*[]byte)
	defer relayBuffers.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			idle.got()
			if hc.Received != nil {
				hc.Received.Add(float64(n))
			}
			in.Add(int64(n))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false // the child no longer reads
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				dst.CloseWrite()
				return false
			}
			return true
		}
	}
}

// copyDown copies from the child to the client; the child's end of stream
// becomes a close_notify and a FIN. It reports whether writing to the
// client failed (lost).
func copyDown(dst net.Conn, src net.Conn, hc *framework.HandedConn, out *atomic.Int64) (lost bool) {
	bp := relayBuffers.Get().(*[]byte)
	defer relayBuffers.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return true
			}
			if hc.Sent != nil {
				hc.Sent.Add(float64(n))
			}
			out.Add(int64(n))
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				if nc, ok := dst.(interface{ NetConn() net.Conn }); ok {
					if cw, ok := nc.NetConn().(interface{ CloseWrite() error }); ok {
						cw.CloseWrite()
					}
				}
			}
			return false
		}
	}
}
