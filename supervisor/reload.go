package supervisor

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
)

// ShutdownTimeout is the shutdown_timeout of the configuration in force.
func (s *Supervisor) ShutdownTimeout() time.Duration {
	return time.Duration(s.shutdownTimeout.Load())
}

// Reload applies a new configuration as SPEC section 7 says. Services whose
// block did not change keep running untouched; when the only change is the
// contents of their certificate or key files (config.Service's
// CertFingerprint), the new certificates are swapped in place: the service
// and its connections are untouched, the next handshakes get the new
// certificates, and a file that fails to load fails the whole reload (the
// files are read before anything changes). New and changed services are
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
	s.round++
	s.endpointNames = endpointNames(cfg)
	// The passed sockets of the services kept stay theirs: no endpoint
	// prepared below takes them by name or address.
	for _, sc := range cfg.Services {
		if old := s.services[sc.Name]; old != nil && old.cfg.Fingerprint == sc.Fingerprint {
			for _, b := range old.bindings {
				b.sock.round = s.round
			}
		}
	}
	var prepared []*service
	var swaps []certSwap
	newServices := make(map[string]*service, len(cfg.Services))
	newOrder := make([]string, 0, len(cfg.Services))
	for _, sc := range cfg.Services {
		newOrder = append(newOrder, sc.Name)
		if old := s.services[sc.Name]; old != nil && old.cfg.Fingerprint == sc.Fingerprint {
			newServices[sc.Name] = old
			if old.certFingerprint != sc.CertFingerprint {
				// Only the contents of its certificate or key files
				// changed: read them now, swap them in once nothing
				// can fail any more.
				sw, err := old.loadCertificates(sc.CertFingerprint)
				if err != nil {
					for _, p := range prepared {
						s.unprepareLocked(p)
					}
					return fmt.Errorf("service %q: reload certificates: %w", sc.Name, err)
				}
				swaps = append(swaps, sw)
			}
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

	s.shutdownTimeout.Store(int64(cfg.ShutdownTimeout))
	for _, svc := range prepared {
		svc.activate()
	}
	for _, sw := range swaps {
		sw.apply()
	}
	// Started before any old instance can say it is done: an old one
	// with nothing to drain says so at once.
	for _, svc := range prepared {
		svc.log.Info("service started", "endpoints", len(svc.bindings))
	}
	var retired []*service
	for _, name := range s.order {
		old := s.services[name]
		if newServices[name] == old {
			continue
		}
		// Detach first: sockets the successor took over stay open; the
		// others close now, so the old service gets no new connections.
		s.releaseSocketsLocked(old)
		retired = append(retired, old)
	}
	s.draining.Add(len(retired))
	s.drainMu.Lock()
	for _, old := range retired {
		s.drainingSvcs[old] = struct{}{}
	}
	s.running = runningOf(newOrder, newServices)
	s.generation++
	s.drainMu.Unlock()
	for _, old := range retired {
		next := newServices[old.cfg.Name]
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
	s.services = newServices
	s.order = newOrder
	s.updateGuardsLocked()
	return nil
}

// certSwap is the new certificates of a kept service, read and waiting
// for the reload to commit.
type certSwap struct {
	svc         *service
	fingerprint string
	certs       map[*binding][]tls.Certificate
}

// loadCertificates reads the certificate and key files of the service's
// tls endpoints again (their paths did not change), for a swap once the
// reload commits.
func (s *service) loadCertificates(fingerprint string) (certSwap, error) {
	sw := certSwap{svc: s, fingerprint: fingerprint, certs: map[*binding][]tls.Certificate{}}
	for _, b := range s.bindings {
		if b.tls == nil || b.ep.SelfSigned {
			continue
		}
		certs, err := endpoint.LoadCertificates(*b.ep)
		if err != nil {
			return certSwap{}, err
		}
		sw.certs[b] = certs
	}
	return sw, nil
}

// apply swaps the certificates in and updates their expiry series.
func (sw certSwap) apply() {
	s := sw.svc
	for _, b := range s.bindings {
		certs, ok := sw.certs[b]
		if !ok {
			continue
		}
		b.tls.SetCertificates(certs)
		s.recordCertificates(b)
		names := make([]string, 0, len(certs))
		for _, c := range certs {
			names = append(names, endpoint.CertificateName(c.Leaf))
		}
		s.log.Info("certificates reloaded", "endpoint", b.ep.Label, "certificates", names)
	}
	s.certFingerprint = sw.fingerprint
}
