// Package supervisor owns the running services: their factories' lifecycle
// (StartFactory, StopFactory), their listening sockets and accept loops, the
// limits checked at accept, the connections handed to protocols, graceful
// shutdown, and reload (replacing one service while the others run).
package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/metrics"
)

// ErrShuttingDown is returned by Start and Reload once Shutdown has begun.
var ErrShuttingDown = errors.New("supervisor: shutting down")

// Supervisor runs the services of a configuration. Its methods are safe for
// concurrent use.
type Supervisor struct {
	log     *slog.Logger
	metrics *metrics.Metrics

	mu       sync.Mutex
	services map[string]*service // by name
	sockets  map[string]*socket  // by socket key, shared across reloads
	order    []string            // service names in file order
	// started and stopping are read without mu by NotReady: /readyz
	// answers while a reload or the startup holds mu (one may hang).
	started  atomic.Bool
	stopping atomic.Bool

	// shutdownTimeout is the shutdown_timeout of the configuration in
	// force (a time.Duration), read by every connection handed to a
	// factory (framework.HandedConn.ShutdownTimeout) without s.mu, which
	// a reload holds while it prepares services.
	shutdownTimeout atomic.Int64
	draining        sync.WaitGroup // services replaced or removed by reload, still draining

	// drainMu guards drainingSvcs, the services a reload is draining, so
	// Shutdown can cut their drain at its own timeout. Not s.mu: Shutdown
	// holds s.mu while it waits for them.
	drainMu      sync.Mutex
	drainingSvcs map[*service]struct{}
	// running (the services in file order) and generation (the
	// configurations applied: 1 at Start, one more for each successful
	// Reload) are what Status shows, under drainMu: a commit moves services
	// between running and draining in one step, and Status does not wait
	// for s.mu, which a reload holds while it prepares services (one may
	// hang, opening a file).
	running    []*service
	generation int
	// stoppingSvcs are the services Shutdown drains (under drainMu), for
	// CutShutdown, which cannot wait for mu; cutRequested: CutShutdown
	// came, and what Shutdown adds later is cut at once.
	stoppingSvcs []*service
	cutRequested bool

	refs      *seriesRefs  // which metric series live instances use
	guards    *guardPorts  // ports of the guarded udp endpoints
	inherited []*inherited // sockets passed by the service manager
	// round counts the starts and reloads: a passed socket taken in one
	// (socket.round) is not given to a second endpoint in the same.
	round int
	// endpointNames are the endpoint names of the configuration being
	// started or reloaded: a passed socket with one of them goes to that
	// endpoint, never to another by its address.
	endpointNames map[string]bool
	alog          atomic.Pointer[accesslog.Logger]
}

// seriesRefs counts the service instances (prepared, running or draining)
// that use each set of metric series, so a stopping instance deletes its
// series only when no other instance with the same labels still uses them
// (a service removed by reload, then added back while the old one drains;
// a service replaced by one of another factory under the same name). The
// sets follow the labels: by name and factory (and endpoint) for the
// families labelled with the factory, by name (and endpoint) alone for
// those that carry no factory label (see the key functions).
//
// An instance acquires its keys before it obtains any series, and release
// deletes the series under the same lock, so an instance never holds a
// series (a child that a delete would detach, no longer exported) that
// another one's release deletes.
type seriesRefs struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *seriesRefs) acquire(keys ...string) {
	r.mu.Lock()
	for _, k := range keys {
		r.n[k]++
	}
	r.mu.Unlock()
}

// release drops a use of key; when it was the last, it calls deleteSeries
// (before any other instance can acquire key again).
func (r *seriesRefs) release(key string, deleteSeries func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[key]--
	if r.n[key] > 0 {
		return
	}
	delete(r.n, key)
	deleteSeries()
}

// The keys of seriesRefs: the series of a service name, of a name and
// factory, and the same for one endpoint.
func nameKey(name string) string { return "n\x00" + name }

func factoryKey(name, factory string) string { return "f\x00" + name + "\x00" + factory }

func nameEndpointKey(name, ep string) string { return "ne\x00" + name + "\x00" + ep }

func factoryEndpointKey(name, factory, ep string) string {
	return "fe\x00" + name + "\x00" + factory + "\x00" + ep
}

// New returns a Supervisor that logs to log and counts into m.
func New(log *slog.Logger, m *metrics.Metrics) *Supervisor {
	return &Supervisor{
		log:          log,
		metrics:      m,
		services:     map[string]*service{},
		sockets:      map[string]*socket{},
		drainingSvcs: map[*service]struct{}{},
		refs:         &seriesRefs{n: map[string]int{}},
		guards:       &guardPorts{},
	}
}

// Start starts every service of cfg: for each, its listeners are bound, its
// factory started, then its accept loops run. It is all or nothing: if one
// service cannot start, those already started are stopped again and the
// error names the service, the endpoint and the cause.
func (s *Supervisor) Start(cfg *config.File) error { return s.StartThen(cfg, nil) }

// StartThen is Start with beforeServing run once every listener is bound
// and every factory has started, and before any connection is accepted:
// where superd drops root, so that nothing is ever served as root. An
// error from it stops everything again, as a service that cannot start.
func (s *Supervisor) StartThen(cfg *config.File, beforeServing func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping.Load() {
		return ErrShuttingDown
	}
	s.round++
	s.endpointNames = endpointNames(cfg)
	var prepared []*service
	unprepare := func() {
		for i := len(prepared) - 1; i >= 0; i-- {
			s.unprepareLocked(prepared[i])
		}
	}
	for _, sc := range cfg.Services {
		svc, err := s.prepareServiceLocked(sc)
		if err != nil {
			unprepare()
			return err
		}
		prepared = append(prepared, svc)
	}
	if beforeServing != nil {
		if err := beforeServing(); err != nil {
			unprepare()
			return err
		}
	}
	s.shutdownTimeout.Store(int64(cfg.ShutdownTimeout))
	for _, svc := range prepared {
		svc.activate()
		svc.log.Info("service started", "endpoints", len(svc.bindings))
		s.services[svc.cfg.Name] = svc
		s.order = append(s.order, svc.cfg.Name)
	}
	s.started.Store(true)
	s.drainMu.Lock()
	s.running = runningOf(s.order, s.services)
	s.generation = 1
	s.drainMu.Unlock()
	s.updateGuardsLocked()
	return nil
}

// runningOf is the services in file order.
func runningOf(order []string, services map[string]*service) []*service {
	r := make([]*service, 0, len(order))
	for _, name := range order {
		r = append(r, services[name])
	}
	return r
}

// updateGuardsLocked records the ports of the guarded udp endpoints of
// the running services (see reflects).
func (s *Supervisor) updateGuardsLocked() {
	ports := map[uint16]bool{}
	for _, svc := range s.services {
		if svc.cfg.Spec == nil || !svc.cfg.Spec.DatagramGuards {
			continue
		}
		for _, b := range svc.bindings {
			if b.sock.dgram != nil {
				if ua, ok := b.sock.dgram.uc.LocalAddr().(*net.UDPAddr); ok {
					ports[uint16(ua.Port)] = true
				}
			}
		}
	}
	s.guards.p.Store(&ports)
}

// NotReady lists what keeps superd from being ready (for /readyz): nothing
// once every service listens, everything during shutdown.
func (s *Supervisor) NotReady() []string {
	if s.stopping.Load() {
		return []string{"shutting down"}
	}
	if !s.started.Load() {
		return []string{"starting"}
	}
	return nil
}

// Shutdown stops every service as SPEC section 6 says: listeners close, open
// connections are asked to LoseConnection (pending output is flushed),
// connections still open after timeout are aborted, then each factory's
// StopFactory runs. It returns the factories' stop errors, joined.
//
// s.mu is held only to take the services out (Reload refuses once stopping
// is set): Status answers during the drain, listing them as draining.
func (s *Supervisor) Shutdown(timeout time.Duration) error {
	s.stopping.Store(true)
	// Services a reload is still draining (under that reload's timeout)
	// are aborted at this shutdown's timeout too.
	cut := time.AfterFunc(timeout, func() {
		s.drainMu.Lock()
		defer s.drainMu.Unlock()
		for svc := range s.drainingSvcs {
			svc.cutDrain()
		}
	})
	defer cut.Stop()
	s.mu.Lock()
	svcs := make([]*service, 0, len(s.order))
	for _, name := range s.order {
		svc := s.services[name]
		s.releaseSocketsLocked(svc) // no new connections anywhere first
		svcs = append(svcs, svc)
	}
	s.drainMu.Lock()
	s.running = nil
	s.stoppingSvcs = append(s.stoppingSvcs, svcs...)
	if s.cutRequested { // a second signal came before the services were out
		for _, svc := range svcs {
			svc.cutDrain()
		}
	}
	s.drainMu.Unlock()
	s.services = map[string]*service{}
	s.order = nil
	s.mu.Unlock()

	var g errgroup.Group
	errs := make([]error, len(svcs))
	for i, svc := range svcs {
		g.Go(func() error {
			errs[i] = svc.drainAndStop(timeout, stopExit)
			return nil
		})
	}
	g.Wait()
	s.draining.Wait() // services a reload is still draining
	return errors.Join(errs...)
}

// CutShutdown ends the drains of a Shutdown under way (and of the
// instances reloads are still draining) now, as if shutdown_timeout had
// run out: what is still open is aborted, exec children get SIGKILL, and
// Shutdown returns once the factories have stopped. For a second signal,
// so that superd does not exit leaving programs it started running.
//
// Services still running are those a startup or reload that has not
// ended (it may hang) keeps Shutdown from taking out: their connections
// are aborted and their programs killed here, since superd is about to
// exit without them.
func (s *Supervisor) CutShutdown() {
	s.drainMu.Lock()
	s.cutRequested = true
	for _, svc := range s.stoppingSvcs {
		svc.cutDrain()
	}
	for svc := range s.drainingSvcs {
		svc.cutDrain()
	}
	running := s.running
	s.drainMu.Unlock()
	for _, svc := range running {
		svc.abandon()
	}
}

// Reopen asks every factory that holds files to reopen them (SIGUSR1): those
// of the running services, and of instances still draining after a reload.
func (s *Supervisor) Reopen() {
	s.mu.Lock()
	defer s.mu.Unlock()
	svcs := make([]*service, 0, len(s.order))
	for _, name := range s.order {
		svcs = append(svcs, s.services[name])
	}
	// Instances a reload replaced still write while they drain: a rotated
	// file is let go by them too.
	s.drainMu.Lock()
	for svc := range s.drainingSvcs {
		svcs = append(svcs, svc)
	}
	s.drainMu.Unlock()
	for _, svc := range svcs {
		if r, ok := svc.factory.(framework.Reopener); ok {
			if err := r.Reopen(); err != nil {
				svc.log.Error("reopen failed", "err", err)
			} else {
				svc.log.Info("reopened files")
			}
		}
	}
}

// prepareServiceLocked makes a service ready to serve: its endpoints bound
// (taking over the socket of a running service on the same address, if
// any) and its factory started. Nothing is accepted until activate.
func (s *Supervisor) prepareServiceLocked(sc *config.Service) (*service, error) {
	svc, err := newService(s.log, s.metrics, sc, s.refs, s.guards, &s.alog, &s.shutdownTimeout)
	if err != nil {
		return nil, err
	}
	for i := range sc.Endpoints {
		ep := &sc.Endpoints[i]
		b, err := svc.newBinding(ep)
		if err == nil {
			b.sock, err = s.socketLocked(svc, ep)
		}
		if err != nil {
			s.unprepareLocked(svc)
			return nil, fmt.Errorf("service %q, endpoint %s: %w", sc.Name, ep.Label, err)
		}
		svc.bindings = append(svc.bindings, b)
	}
	if err := svc.startFactory(); err != nil {
		s.unprepareLocked(svc)
		return nil, fmt.Errorf("service %q: start factory %q: %w", sc.Name, sc.Factory, err)
	}
	return svc, nil
}

// socketLocked returns the socket of ep: the one already bound to the same
// address (endpoint.Address's Key), which a reload carries over from the
// running service, or the socket passed by the service manager that ep's
// name or address takes, held by a running service (carried over alike),
// or a new one that svc opens (see openSocketLocked).
func (s *Supervisor) socketLocked(svc *service, ep *endpoint.Config) (*socket, error) {
	key := ep.Addr.Key()
	if sock := s.sockets[key]; key != "" && sock != nil {
		if err := sock.keeps(ep); err != nil {
			return nil, err
		}
		// A unix socket file gets ep's owner, group and mode now, before
		// the reload commits, so one that superd may no longer change (it
		// dropped root since it bound it) fails the reload with the
		// cause, and nothing changes; a reload undone later puts them
		// back (see unprepareLocked). An abstract socket has no file, and
		// a passed one is the service manager's.
		if ul, ok := sock.ln.(*endpoint.UnixListener); ok && fileAttrsChange(sock, ep) {
			restore, err := ul.SetFileAttrs(*ep)
			switch {
			case errors.Is(err, endpoint.ErrReplaced) || errors.Is(err, fs.ErrNotExist):
				// Not superd's file any more, or gone: left alone, as at
				// shutdown.
				svc.log.Error("cannot set the socket file's owner or mode", "endpoint", ep.Label, "err", err)
			case err != nil:
				return nil, fileAttrsError(err)
			}
			if restore != nil {
				svc.restoreAttrs = append(svc.restoreAttrs, restore)
			}
		}
		return sock, nil
	}
	sock, carried, err := s.openSocketLocked(ep)
	if carried {
		return sock, nil
	}
	if err != nil {
		var le *endpoint.ListenError
		if errors.Is(err, syscall.EADDRINUSE) && errors.As(err, &le) {
			held := make([]*socket, 0, len(s.sockets)+len(s.inherited))
			for _, k := range s.sockets {
				held = append(held, k)
			}
			for _, in := range s.inherited { // passed sockets in use
				if k := in.held.Load(); k != nil {
					held = append(held, k)
				}
			}
			for _, k := range held {
				if k.addr.Conflicts(ep.Addr) {
					le.Hint = heldHint(k)
					break
				}
			}
		}
		return nil, err
	}
	svc.opened = append(svc.opened, sock)
	if sock.key != "" { // not a passed socket: those are found by s.inherited
		s.sockets[sock.key] = sock
	}
	return sock, nil
}

// fileAttrsChange reports whether ep asks the socket file of k, a unix
// socket a reload carries over, for another owner, group or mode than its
// endpoint in force did. One that asks for the same leaves the file
// alone: superd, no longer root, may not even reach it.
func fileAttrsChange(k *socket, ep *endpoint.Config) bool {
	b := k.owner.Load()
	if b == nil {
		return true
	}
	ou, og := b.ep.SocketOwner()
	nu, ng := ep.SocketOwner()
	return b.ep.UnixMode() != ep.UnixMode() || ou != nu || og != ng
}

// fileAttrsError explains a socket file's owner, group or mode that a
// reload cannot change, when superd is no longer root.
func fileAttrsError(err error) error {
	if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
		return fmt.Errorf("%w: the socket file is kept, and changing its owner, group or mode needs the rights superd had when it bound it (it runs as uid %d now); restart superd to change them", err, os.Geteuid())
	}
	return err
}

// heldHint explains an address in use by superd itself, through a socket
// bound to an overlapping but different address (127.0.0.1:P and :P, or a
// host name and its IP address), which a reload cannot carry over.
func heldHint(held *socket) string {
	by := "endpoint " + held.label
	if b := held.owner.Load(); b != nil {
		by += fmt.Sprintf(" of service %q", b.svc.cfg.Name)
	}
	return "superd itself holds it, for its " + by + ", and a reload carries a socket over only to the same address; " +
		"move the endpoint in two reloads (remove it, then add the new one) or restart"
}

// openSocketLocked takes the socket passed by the service manager for ep,
// if there is one, or binds a new one. carried reports a passed socket
// that a running service holds, which a reload carries over to ep.
func (s *Supervisor) openSocketLocked(ep *endpoint.Config) (k *socket, carried bool, err error) {
	in, err := s.takeInheritedLocked(ep)
	if err != nil {
		return nil, false, err
	}
	if in == nil {
		k, err = listenSocket(ep, s.log)
		return k, false, err
	}
	if held := in.held.Load(); held != nil {
		return held, true, nil
	}
	if k, err = s.inheritedSocket(in, ep); err != nil {
		in.inUse.Store(false)
		return nil, false, err
	}
	in.held.Store(k)
	s.log.Info("endpoint uses a socket passed by the service manager", "endpoint", ep.Label, "name", in.name)
	return k, false, nil
}

// unprepareLocked undoes prepareServiceLocked for a service that never
// served: the sockets it opened close and its factory stops.
func (s *Supervisor) unprepareLocked(svc *service) {
	for i := len(svc.restoreAttrs) - 1; i >= 0; i-- {
		if err := svc.restoreAttrs[i](); err != nil {
			svc.log.Error("cannot put back the socket file's owner or mode", "err", err)
		}
	}
	svc.restoreAttrs = nil
	for _, sock := range svc.opened {
		sock.close()
		delete(s.sockets, sock.key)
	}
	svc.drainAndStop(0, stopRetired) // series shared with a running instance stay
}

// releaseSocketsLocked detaches svc from its sockets, closing each socket
// that no other service has taken over.
func (s *Supervisor) releaseSocketsLocked(svc *service) {
	for _, b := range svc.bindings {
		if b.sock.release(b) {
			delete(s.sockets, b.sock.key)
		}
	}
}

// Services returns the names of the running services, in file order.
func (s *Supervisor) Services() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.order...)
}

// ActiveConnections is the number of connections the running services
// have accepted and not yet ended (instances still draining after a reload
// not included).
func (s *Supervisor) ActiveConnections() int {
	s.mu.Lock()
	svcs := make([]*service, 0, len(s.services))
	for _, svc := range s.services {
		svcs = append(svcs, svc)
	}
	s.mu.Unlock()
	n := 0
	for _, svc := range svcs {
		svc.mu.Lock()
		n += svc.active
		svc.mu.Unlock()
	}
	return n
}

// SetAccessLog makes l the access log of every service with access_log =
// true (nil: none); it returns the previous one, for the caller to close
// once no connection can still be writing to it.
func (s *Supervisor) SetAccessLog(l *accesslog.Logger) *accesslog.Logger {
	return s.alog.Swap(l)
}
