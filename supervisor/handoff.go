package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/metrics"
)

// handoff tells a factory serving connections or a listening socket itself
// (framework.ConnHandler, framework.ListenerHandler) that the drain began
// (Drain: Stopping is done) and that its time is up (Abort: Killed is
// done). A service has one for all the connections it hands over (they
// drain together); each wait-mode handover has its own.
type handoff struct {
	stopping, killed context.Context
	stop, kill       context.CancelFunc
	// counted: a wait-mode handover aborted was counted dropped (under
	// the service's mu).
	counted bool
}

func newHandoff() *handoff {
	h := &handoff{}
	h.stopping, h.stop = context.WithCancel(context.Background())
	h.killed, h.kill = context.WithCancel(context.Background())
	return h
}

func (h *handoff) Drain() { h.stop() }

func (h *handoff) Abort(error) {
	h.stop()
	h.kill()
}

// handOver gives an accepted connection to a factory that serves it
// itself; t.c is the accepted socket, nc the stream after superd's layers
// (t.c itself, or TLS over it). It returns when the factory is done with
// it. It returns what is left to do once the connection is released: its
// access log line.
func (s *service) handOver(h framework.ConnHandler, t *tracked, nc net.Conn, fromSource int) (after func()) {
	b := t.b
	// The service's handoff: the drain makes it done (already, if the
	// service is closing).
	ho := s.handoff
	s.mu.Lock()
	t.handed, t.since = true, monoNow()
	s.mu.Unlock()
	served := false
	hc := &framework.HandedConn{
		Conn:            nc,
		SourceConns:     fromSource,
		IdleTimeout:     s.cfg.Limits.IdleTimeout,
		ShutdownTimeout: time.Duration(s.shutdownTimeout.Load()),
		Received:        s.m.Received,
		Sent:            s.m.Sent,
		Stopping:        ho.stopping,
		Killed:          ho.killed,
		Served: func() {
			if !served {
				served = true
				b.total.Inc()
				s.accepted.Add(1)
				s.m.Active.Inc()
			}
		},
	}
	s.mu.Lock()
	t.hc = hc
	s.mu.Unlock()
	reason := s.serveConn(h, hc)
	nc.Close() // the handler closed it; a panicking one may not have
	var rej *framework.RejectError
	switch {
	case served:
		s.ended(t.servedFor(), reason)
		if s.cfg.AccessLog {
			return func() { s.logEnd(nc, t, t.servedFor(), reason, hc.BytesIn, hc.BytesOut, hc.PID, hc.Exit) }
		}
	case errors.As(reason, &rej):
		s.rejected(rej.Reason)
		s.log.Debug("connection rejected", "peer", plainPeer(nc.RemoteAddr()), "reason", rej.Reason, "err", rej.Err)
		s.logRejection(nc, b, rej.Reason, t)
	default:
		s.rejected(metrics.RejectFactory)
		s.logRejection(nc, b, metrics.RejectFactory, t)
	}
	return func() {}
}

// serveConn calls the handler; a panic there ends only this connection.
func (s *service) serveConn(h framework.ConnHandler, hc *framework.HandedConn) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("ServeConn panicked; connection closed", "peer", plainPeer(hc.Conn.RemoteAddr()), "panic", v)
			err = framework.ErrConnectionAborted
		}
	}()
	return h.ServeConn(hc)
}

// waits reports whether the service serves its listening sockets itself
// (wait mode) rather than their connections.
func (s *service) waits() bool {
	lh, ok := s.factory.(framework.ListenerHandler)
	return ok && lh.ServesListeners()
}

// serveListener hands b's listening socket to the factory, which serves
// what is waiting there, and returns when the factory is done. It runs on
// the socket's loop, which watches the socket again afterwards.
func (s *service) serveListener(b *binding) {
	lh := s.factory.(framework.ListenerHandler)
	ho := newHandoff()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.listening[ho] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listening, ho)
		s.mu.Unlock()
		s.connWG.Done()
	}()

	f, err := b.sock.file()
	if err != nil {
		s.log.Error("cannot hand the listening socket over", "endpoint", b.ep.Label, "err", err)
		s.pause(ho, time.Second)
		return
	}
	defer f.Close()
	// A program given a socket expects it in blocking mode. The flag
	// belongs to the socket, shared with superd's own descriptor, which
	// nothing uses until it is set back.
	fd := int(f.Fd())
	syscall.SetNonblock(fd, false)
	defer syscall.SetNonblock(fd, true)
	func() {
		defer func() {
			if v := recover(); v != nil {
				s.log.Error("ServeListener panicked", "endpoint", b.ep.Label, "panic", v)
				err = errors.New("panic")
			}
		}()
		err = lh.ServeListener(&framework.HandedListener{
			File:     f,
			Endpoint: b.ep.Label,
			Stopping: ho.stopping,
			Killed:   ho.killed,
		})
	}()
	// The factory logged the details and applied its back-off.
	if rej := (*framework.RejectError)(nil); errors.As(err, &rej) {
		s.rejected(rej.Reason)
	}
}

// pause waits d, or less if the service stops meanwhile.
func (s *service) pause(ho *handoff, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ho.stopping.Done():
	}
}

// file returns a duplicate of the socket's descriptor.
func (k *socket) file() (*os.File, error) {
	if k.dgram != nil {
		return k.dgram.uc.File()
	}
	type filer interface{ File() (*os.File, error) }
	fl, ok := k.ln.(filer)
	if !ok {
		return nil, errors.New("the listener has no file descriptor")
	}
	return fl.File()
}
