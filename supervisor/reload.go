package supervisor

import (
	"time"

	"github.com/superd-dev/superd/config"
)

// ShutdownTimeout is the shutdown_timeout of the configuration in force.
func (s *Supervisor) ShutdownTimeout() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdownTimeout
}

// Reload applies a new configuration as SPEC section 7 says. Services whose
// block did not change keep running untouched. New and changed services are
// prepared first (sockets bound or taken over, factories started); if any
// cannot start, everything prepared is undone and the running services are
// untouched. Then the sockets switch to their new owners in one step (a
// socket whose address stays is never closed, so no connection attempt is
// refused), and removed and replaced services drain in the background within
// the new shutdown_timeout.
func (s *Supervisor) Reload(cfg *config.File) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping.Load() {
		return ErrShuttingDown
	}
	var prepared []*service
	newServices := make(map[string]*service, len(cfg.Services))
	newOrder := make([]string, 0, len(cfg.Services))
	for _, sc := range cfg.Services {
		newOrder = append(newOrder, sc.Name)
		if old := s.services[sc.Name]; old != nil && old.cfg.Fingerprint == sc.Fingerprint {
			newServices[sc.Name] = old
			continue
		}
		svc, err := s.prepareServiceLocked(sc)
		if err != nil {
			for _, p := range prepared {
				s.unprepareLocked(p)
			}
			return err
		}
		prepared = append(prepared, svc)
		newServices[sc.Name] = svc
	}

	for _, svc := range prepared {
		svc.activate()
	}
	for _, name := range s.order {
		old := s.services[name]
		if newServices[name] == old {
			continue
		}
		next := newServices[name]
		// Detach first: sockets the successor took over stay open; the
		// others close now, so the old service gets no new connections.
		s.releaseSocketsLocked(old)
		s.draining.Add(1)
		s.drainMu.Lock()
		s.drainingSvcs[old] = struct{}{}
		s.drainMu.Unlock()
		go func() {
			defer s.draining.Done()
			old.drainAndStop(cfg.ShutdownTimeout, stopRetired)
			s.drainMu.Lock()
			delete(s.drainingSvcs, old)
			s.drainMu.Unlock()
			if next == nil {
				old.log.Info("service removed")
			} else {
				old.log.Info("service replaced")
			}
		}()
	}
	for _, svc := range prepared {
		svc.log.Info("service started", "endpoints", len(svc.bindings))
	}
	s.services = newServices
	s.order = newOrder
	s.shutdownTimeout = cfg.ShutdownTimeout
	s.updateGuardsLocked()
	return nil
}
