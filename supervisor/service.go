package supervisor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/engine"
	"github.com/superd-dev/superd/internal/rawconn"
	"github.com/superd-dev/superd/metrics"
)

// maxTLSHandshake bounds a TLS handshake (a shorter idle_timeout bounds it
// more); a client that does not finish in time is rejected as tls_handshake.
const maxTLSHandshake = 10 * time.Second

// service is one running service: its factory, the limits it enforces at
// accept, and its connections.
type service struct {
	cfg      *config.Service
	factory  framework.Factory
	log      *slog.Logger
	m        *metrics.Service
	bindings []*binding
	opened   []*socket // sockets this service bound itself (not taken over)
	// restoreAttrs put back the owner, group and mode of the socket files
	// of the unix sockets taken over, which preparing the service changed
	// to its endpoints' (for a reload undone; under the supervisor's mu).
	restoreAttrs []func() error
	// certFingerprint is the config.Service CertFingerprint of the
	// certificates served now (a reload may swap them; under the
	// supervisor's mu).
	certFingerprint string
	connOpts        engine.ConnOptions

	mu          sync.Mutex
	closing     bool
	active      int                   // connections accepted and not yet ended
	perSource   map[netip.Prefix]int  // active, by source key
	perUID      map[uint32]int        // active on unix sockets by peer uid (with max_connections_per_uid)
	conns       *tracked              // the active ones, a list (see tracked)
	listening   map[*handoff]struct{} // wait mode: listening sockets handed to the factory now
	handoff     *handoff              // for every connection handed to a framework.ConnHandler
	rate        *tokenBucket
	sourceRates map[netip.Prefix]*tokenBucket
	// sweep the full buckets out of sourceRates when it reaches this size
	sourceSweepAt int
	sourceSweptAt time.Time
	connWG        sync.WaitGroup
	factoryUp     bool
	activated     bool // served: its endpoint series exist

	refs   *seriesRefs
	guards *guardPorts
	alog   *atomic.Pointer[accesslog.Logger] // the supervisor's, swapped by reload
	// shutdownTimeout is the supervisor's shutdown_timeout in force (a
	// time.Duration), set by reload.
	shutdownTimeout *atomic.Int64
	drops           map[string]prometheus.Counter // datagram drops by reason; made with the first udp endpoint
	cut             chan struct{}                 // closed to abort the drain now (Shutdown)

	// Totals for the status view (the metrics hold them by reason).
	accepted, rejectedN, dropped atomic.Int64

	cutOnce sync.Once
}

// retireSeries drops the service's uses of its series (see seriesRefs),
// deleting those no other instance uses: those of its endpoints if it
// served, then its own.
func (s *service) retireSeries() {
	name, fact := s.cfg.Name, s.cfg.Factory
	if s.activated {
		for _, b := range s.bindings {
			label := b.ep.Label
			s.refs.release(factoryEndpointKey(name, fact, label), func() { s.m.DeleteEndpoint(label) })
			s.refs.release(nameEndpointKey(name, label), func() { s.m.DeleteNameEndpoint(label) })
		}
	}
	retireServiceSeries(s.refs, s.m, name, fact)
}

// retireServiceSeries drops an instance's uses of the series of service
// name and factory fact (acquired by newService).
func retireServiceSeries(refs *seriesRefs, m *metrics.Service, name, fact string) {
	refs.release(factoryKey(name, fact), m.Delete)
	refs.release(nameKey(name), m.DeleteName)
}

// cutDrain ends the drain's wait: what is still open is aborted.
func (s *service) cutDrain() { s.cutOnce.Do(func() { close(s.cut) }) }

// binding ties one endpoint of a service to its socket.
type binding struct {
	svc   *service
	ep    *endpoint.Config
	tls   *endpoint.TLSServer // tls endpoints
	total prometheus.Counter  // stream endpoints
	sock  *socket
	dgram *dgramBinding // udp endpoints, unless the service waits
}

// acceptsBare reports whether b's connections can be served from bare
// descriptors (see package rawconn): plain TCP or a unix socket, to a
// protocol or to a factory that takes the socket itself (exec hands the
// descriptor to its program). TLS and a PROXY header work on net's
// connections.
func (b *binding) acceptsBare() bool {
	return b.tls == nil && b.ep.Proxy == nil
}

func newService(log *slog.Logger, m *metrics.Metrics, sc *config.Service, refs *seriesRefs, guards *guardPorts,
	alog *atomic.Pointer[accesslog.Logger], shutdownTimeout *atomic.Int64) (*service, error) {
	// The series are acquired before any is obtained (the registerer
	// included): an instance of the same name stopping meanwhile then
	// leaves them (see seriesRefs).
	refs.acquire(nameKey(sc.Name), factoryKey(sc.Name, sc.Factory))
	ms := m.ForService(sc.Name, sc.Factory)
	f, err := sc.NewFactory(log, m.Registerer(sc.Name, sc.Factory))
	if err != nil {
		retireServiceSeries(refs, ms, sc.Name, sc.Factory)
		return nil, fmt.Errorf("service %q: %w", sc.Name, err)
	}
	svc := &service{
		cfg:       sc,
		factory:   f,
		log:       log.With("service", sc.Name, "factory", sc.Factory),
		m:         ms,
		perSource: map[netip.Prefix]int{},
		perUID:    map[uint32]int{},
		listening: map[*handoff]struct{}{},
		handoff:   newHandoff(),
		refs:      refs,
		guards:    guards,
		alog:      alog,
		cut:       make(chan struct{}),

		certFingerprint: sc.CertFingerprint,
		shutdownTimeout: shutdownTimeout,
	}
	svc.connOpts = engine.ConnOptions{
		IdleTimeout:      sc.Limits.IdleTimeout,
		MaxPendingOutput: sc.Limits.MaxPendingOutput,
		Received:         ms.Received,
		Sent:             ms.Sent,
		Logger:           svc.log,
	}
	if r := sc.Limits.RateLimit; r != nil {
		svc.rate = newTokenBucket(r.Rate, r.Burst, time.Now())
	}
	if sc.Limits.RateLimitPerIP != nil {
		svc.sourceRates = map[netip.Prefix]*tokenBucket{}
		svc.sourceSweepAt = minSourceSweep
	}
	return svc, nil
}

func (s *service) newBinding(ep *endpoint.Config) (*binding, error) {
	b := &binding{svc: s, ep: ep} // total: at activate, so a failed reload adds no series
	if ep.Kind == endpoint.KindTLS {
		srv, err := endpoint.NewTLSServer(*ep, time.Now())
		if err != nil {
			return nil, err
		}
		if ep.SelfSigned {
			s.log.Warn("TLS endpoint uses a self-signed certificate generated at start (for trying things out)",
				"endpoint", ep.Label)
		}
		b.tls = srv
	}
	return b, nil
}

func (s *service) startFactory() error {
	if st, ok := s.factory.(framework.FactoryStarter); ok {
		if err := st.StartFactory(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.factoryUp = true
	s.mu.Unlock()
	s.m.Starts.Inc()
	s.m.Up.Set(1)
	return nil
}

// accept runs on the accept loop: the checks that refuse a connection
// before any protocol exists, then the connection's own goroutine. A peer
// trusted to send a PROXY header is checked once the header has told who
// the client is (see acceptProxied).
func (s *service) accept(c net.Conn, b *binding) {
	if bc, ok := c.(*rawconn.Conn); ok && !b.acceptsBare() {
		// Accepted for an owner that a reload has since replaced with one
		// that needs net's connection (TLS, PROXY).
		nc, err := bc.Standard()
		if err != nil {
			s.log.Warn("cannot serve a connection accepted during a reload", "peer", plainPeer(bc.RemoteAddr()), "err", err)
			return
		}
		c = nc
	}
	if pp := b.ep.Proxy; pp != nil {
		if ip, ok := peerAddr(c.RemoteAddr()); ok && pp.Trusts(ip) {
			s.acceptProxied(c, b, pp)
			return
		}
	}
	if t, fromSource, ok := s.admit(c, c.RemoteAddr(), b, nil); ok {
		go s.handle(t, c, fromSource)
		// Let the new goroutine run before the next accept: a burst of
		// connections otherwise piles up as many goroutines, and their
		// stacks, before the first has parked its connection.
		runtime.Gosched()
	}
}

// admit applies allow/deny and the limits to a connection from peer. It
// returns the connection's record, and how many connections from the
// same source are open, this one included; false when the connection was
// refused (and closed). A reserved connection (t, from acceptProxied)
// already counts as active, and a refusal undoes that.
func (s *service) admit(c net.Conn, peer net.Addr, b *binding, t *tracked) (*tracked, int, bool) {
	reserved := t != nil
	key, hasSource := sourceKey(peer, s.cfg.Limits.IPv6Prefix)
	refuse := func(reason string) (*tracked, int, bool) {
		if reserved {
			s.unreserve(t)
		}
		s.reject(c, b, reason)
		return nil, 0, false
	}
	// allow and deny apply to the peer's own address: the source key of
	// an IPv6 peer is masked to ipv6_prefix bits.
	if ip, ok := peerAddr(peer); ok && !s.allowed(ip) {
		return refuse(metrics.RejectDenied)
	}
	lim := &s.cfg.Limits
	// A unix peer's credentials, read once while the socket is open.
	var cred framework.PeerCred
	hasCred := false
	if s.cfg.AccessLog || lim.MaxConnectionsPerUID > 0 {
		cred, hasCred = framework.PeerCredentials(c)
	}
	hasUID := hasCred && lim.MaxConnectionsPerUID > 0
	now := time.Now()
	s.mu.Lock()
	reason := ""
	switch {
	case s.closing && !reserved:
		s.mu.Unlock()
		// The socket's owner changed under us (a reload): the successor
		// takes the connection. Otherwise superd is stopping.
		if next := b.sock.owner.Load(); next != nil && next != b {
			next.svc.accept(c, next)
			return nil, 0, false
		}
		c.Close()
		return nil, 0, false
	case !reserved && lim.MaxConnections > 0 && s.active >= lim.MaxConnections:
		reason = metrics.RejectMaxConnections
	case hasSource && lim.MaxConnectionsPerIP > 0 && s.perSource[key] >= lim.MaxConnectionsPerIP:
		reason = metrics.RejectMaxConnectionsPerIP
	case hasUID && s.perUID[cred.UID] >= lim.MaxConnectionsPerUID:
		reason = metrics.RejectMaxConnectionsPerUID
	case s.rate != nil && !s.rate.has(now): // spent below, once admitted
		reason = metrics.RejectRateLimit
	case hasSource && s.sourceRates != nil && !lim.RateLimitPerIPDatagramsOnly && !s.takeSourceToken(key, now):
		reason = metrics.RejectRateLimitPerIP
	}
	if reason != "" {
		s.mu.Unlock()
		return refuse(reason)
	}
	if s.rate != nil {
		s.rate.spend()
	}
	if !reserved {
		t = &tracked{c: c, b: b}
		s.active++
		s.trackLocked(t)
		s.connWG.Add(1)
	}
	t.cred, t.hasCred = cred, hasCred
	fromSource := 0
	if hasSource {
		s.perSource[key]++
		fromSource = s.perSource[key]
	}
	if hasUID {
		s.perUID[cred.UID]++
		t.uidCounted = true
	}
	s.mu.Unlock()
	return t, fromSource, true
}

// acceptProxied takes a connection from a peer trusted to send a PROXY
// header. It counts at once (max_connections bounds headers in progress
// too); the header is read on the connection's own goroutine, so a slow
// one holds up nobody else; then the checks run against the client the
// header names.
func (s *service) acceptProxied(c net.Conn, b *binding, pp *endpoint.ProxyProtocol) {
	s.mu.Lock()
	switch {
	case s.closing:
		s.mu.Unlock()
		if next := b.sock.owner.Load(); next != nil && next != b {
			next.svc.accept(c, next)
			return
		}
		c.Close()
		return
	case s.cfg.Limits.MaxConnections > 0 && s.active >= s.cfg.Limits.MaxConnections:
		s.mu.Unlock()
		s.reject(c, b, metrics.RejectMaxConnections)
		return
	}
	t := &tracked{c: c, b: b}
	s.active++
	s.trackLocked(t)
	s.connWG.Add(1)
	s.mu.Unlock()
	go func() {
		stream, err := readProxyHeader(c, pp)
		if err != nil {
			s.log.Debug("PROXY protocol header refused", "peer", plainPeer(c.RemoteAddr()), "err", err)
			s.unreserve(t)
			s.reject(c, b, metrics.RejectProxyProtocol)
			return
		}
		// stream, not c: a refusal is logged with the client the
		// header names.
		if _, fromSource, ok := s.admit(stream, stream.RemoteAddr(), b, t); ok {
			s.handle(t, stream, fromSource)
		}
	}()
}

// unreserve undoes the counting of a connection refused after it was
// counted as active.
func (s *service) unreserve(t *tracked) {
	s.mu.Lock()
	s.active--
	s.untrackLocked(t)
	s.mu.Unlock()
	s.connWG.Done()
}

// allowed applies allow and deny (deny wins).
func (s *service) allowed(ip netip.Addr) bool {
	for _, p := range s.cfg.Limits.Deny {
		if p.Contains(ip) {
			return false
		}
	}
	if len(s.cfg.Limits.Allow) == 0 {
		return true
	}
	for _, p := range s.cfg.Limits.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (s *service) reject(c net.Conn, b *binding, reason string) {
	s.rejected(reason)
	s.log.Debug("connection rejected", "peer", plainPeer(c.RemoteAddr()), "reason", reason)
	s.logRejection(c, b, reason, nil)
	c.Close()
}

// The per-source token buckets. A full bucket is forgotten (a new one
// starts full, so nothing changes). The table is swept of full buckets when
// it has doubled since the last sweep, so a new source costs amortised
// O(1), and it holds at most maxSourceBuckets sources: past that, a new
// source is refused as rate limited until older ones refill (memory stays
// bounded under a flood of sources, which is cheap to make with IPv6
// prefixes; the table then is swept at most once a second).
const (
	minSourceSweep   = 4096
	maxSourceBuckets = 1 << 18
)

// takeSourceToken spends one of key's tokens, reporting false if it has
// none or the table is full.
func (s *service) takeSourceToken(key netip.Prefix, now time.Time) bool {
	tb := s.sourceRates[key]
	if tb == nil {
		if n := len(s.sourceRates); n >= s.sourceSweepAt &&
			(n < maxSourceBuckets || now.Sub(s.sourceSweptAt) >= time.Second) {
			for k, b := range s.sourceRates {
				if b.full(now) {
					delete(s.sourceRates, k)
				}
			}
			s.sourceSweptAt = now
			s.sourceSweepAt = min(max(minSourceSweep, 2*len(s.sourceRates)), maxSourceBuckets)
		}
		if len(s.sourceRates) >= maxSourceBuckets {
			return false
		}
		r := s.cfg.Limits.RateLimitPerIP
		tb = newTokenBucket(r.Rate, r.Burst, now)
		s.sourceRates[key] = tb
	}
	return tb.take(now)
}

// unlimit stops t counting against the limits: it leaves the service's
// list and its counts. peer is the address admit was given (the client a
// PROXY header names, or the socket's peer), from which its source key is
// made again.
func (s *service) unlimit(t *tracked, peer net.Addr) {
	key, hasSource := sourceKey(peer, s.cfg.Limits.IPv6Prefix)
	s.mu.Lock()
	s.active--
	if hasSource {
		if s.perSource[key]--; s.perSource[key] <= 0 {
			delete(s.perSource, key)
		}
	}
	if t.uidCounted {
		if s.perUID[t.cred.UID]--; s.perUID[t.cred.UID] <= 0 {
			delete(s.perUID, t.cred.UID)
		}
	}
	s.untrackLocked(t)
	s.mu.Unlock()
}

// release is unlimit, and it also lets a drain waiting for t go on.
func (s *service) release(t *tracked, peer net.Addr) {
	s.unlimit(t, peer)
	s.connWG.Done()
}

// handle serves an admitted connection in its own goroutine: TLS
// handshake, protocol, then serving. stream is what to read and write
// (t.c, or t.c after its PROXY header), fromSource what admit counted.
// The goroutine may end before the connection does (an idle connection
// parks without one); the connection's end callback (tracked.connEnded)
// releases it then.
func (s *service) handle(t *tracked, stream net.Conn, fromSource int) {
	c, b := t.c, t.b
	peer := stream.RemoteAddr()
	nc := stream
	if b.tls != nil {
		timeout := maxTLSHandshake
		if it := s.cfg.Limits.IdleTimeout; it > 0 && it < timeout {
			timeout = it
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		tc := tls.Server(stream, b.tls.Config())
		// A handshake holds a descriptor and a goroutine: it is counted
		// (and, from accept, against max_connections and
		// max_connections_per_ip) before any protocol exists.
		s.m.Handshakes.Inc()
		err := tc.HandshakeContext(ctx)
		s.m.Handshakes.Dec()
		cancel()
		if err != nil {
			s.rejected(metrics.RejectTLSHandshake)
			s.logRejection(stream, b, metrics.RejectTLSHandshake, t)
			s.log.Debug("TLS handshake failed", "peer", plainPeer(stream.RemoteAddr()), "err", err)
			c.Close()
			s.release(t, peer)
			return
		}
		nc = tc
	}
	if h, ok := s.factory.(framework.ConnHandler); ok {
		after := s.handOver(h, t, nc, fromSource)
		s.unlimit(t, peer)
		after() // the access log line comes once the connection no longer counts
		s.connWG.Done()
		return
	}
	p := s.buildProtocol(stream.RemoteAddr())
	if p == nil {
		s.rejected(metrics.RejectFactory)
		s.logRejection(stream, b, metrics.RejectFactory, t)
		nc.Close()
		s.release(t, peer)
		return
	}
	conn := engine.NewConn(nc, &s.connOpts)
	s.mu.Lock()
	t.fc, t.since = conn, monoNow()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		conn.Drain()
	}
	b.total.Inc()
	s.accepted.Add(1)
	s.m.Active.Inc()
	conn.Run(p, t.connEnded)
}

// ended counts the end of a connection that was served for d.
func (s *service) ended(d time.Duration, reason error) {
	s.m.Active.Dec()
	s.m.Duration.Observe(d.Seconds())
	drop := ""
	switch {
	case errors.Is(reason, framework.ErrIdleTimeout):
		drop = metrics.DropIdleTimeout
	case errors.Is(reason, framework.ErrSlowConsumer):
		drop = metrics.DropSlowConsumer
	case errors.Is(reason, framework.ErrShutdownTimeout):
		drop = metrics.DropShutdownTimeout
	case errors.Is(reason, framework.ErrUpstream):
		drop = metrics.DropUpstream
	}
	if drop != "" {
		s.m.Dropped(drop)
		s.dropped.Add(1)
	}
}

// buildProtocol calls the factory; a panic there refuses the connection
// and leaves the service running.
func (s *service) buildProtocol(addr net.Addr) (p framework.Protocol) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("BuildProtocol panicked; connection refused", "peer", addr.String(), "panic", v)
			p = nil
		}
	}()
	return s.factory.BuildProtocol(addr)
}

// activate points the service's sockets at it: from now on they hand it
// their connections.
func (s *service) activate() {
	s.activated = true
	s.restoreAttrs = nil // the unix socket files keep what preparing gave them
	for _, b := range s.bindings {
		// Before the endpoint's series are obtained (see seriesRefs).
		s.refs.acquire(factoryEndpointKey(s.cfg.Name, s.cfg.Factory, b.ep.Label), nameEndpointKey(s.cfg.Name, b.ep.Label))
		if b.ep.Kind == endpoint.KindUDP {
			s.activateDatagrams(b)
		} else {
			b.total = s.m.Endpoint(b.ep.Label)
		}
		if b.tls != nil {
			s.recordCertificates(b)
		}
		if b.ep.Kind == endpoint.KindUDP && !slices.Contains(s.opened, b.sock) {
			// Taken over: apply this one's buffer sizes.
			s.setBuffers(b)
		}
		if (b.ep.Kind == endpoint.KindTCP || b.ep.Kind == endpoint.KindTLS) && b.sock.tcp != b.ep.TCP {
			// Taken over with other options: its next connections get
			// this one's.
			if err := endpoint.Retune(b.sock.ln, b.sock.tcp, b.ep.TCP); err != nil {
				s.log.Error("cannot apply the endpoint's socket options", "endpoint", b.ep.Label, "err", err)
			} else {
				b.sock.tcp = b.ep.TCP
			}
		}
		b.sock.serve(b)
	}
}

// setBuffers applies a udp endpoint's read_buffer and write_buffer to the
// socket it took over. A size left out gets back the one the socket had
// before any was set (the system's, or the service manager's for a passed
// socket) if an earlier owner changed it, as a restart with the same file
// would give it.
func (s *service) setBuffers(b *binding) {
	uc := b.sock.dgram.uc
	want := [2]int{b.ep.ReadBuffer, b.ep.WriteBuffer}
	if want[0] == 0 || want[1] == 0 {
		now, born := socketBuffers(uc), b.sock.dgram.born
		for i := range want {
			if want[i] == 0 && born[i] > 0 && now[i] != born[i] {
				want[i] = born[i] / reportedBufferScale
			}
		}
	}
	if n := want[0]; n > 0 {
		if err := uc.SetReadBuffer(n); err != nil {
			s.log.Error("cannot set read_buffer", "endpoint", b.ep.Label, "err", err)
		}
	}
	if n := want[1]; n > 0 {
		if err := uc.SetWriteBuffer(n); err != nil {
			s.log.Error("cannot set write_buffer", "endpoint", b.ep.Label, "err", err)
		}
	}
}

// activateDatagrams builds the protocol of a udp endpoint (not in wait
// mode, where a program takes the socket).
func (s *service) activateDatagrams(b *binding) {
	if s.drops == nil {
		s.drops = s.m.DatagramDrops()
	}
	received, sent := s.m.DatagramEndpoint(b.ep.Label) // in wait mode too: every series from startup
	if s.waits() {
		// The program gets the socket as Go makes one (broadcast
		// allowed), also when a guarded service had it before a reload.
		if err := b.sock.dgram.allowBroadcast(true); err != nil {
			s.log.Warn("cannot set SO_BROADCAST", "endpoint", b.ep.Label, "err", err)
		}
		if err := b.sock.dgram.io.lendToProgram(true); err != nil {
			s.log.Warn("cannot turn the destination address of datagrams off", "endpoint", b.ep.Label, "err", err)
		}
		return
	}
	if err := b.sock.dgram.io.lendToProgram(false); err != nil {
		s.log.Warn("cannot turn the destination address of datagrams on", "endpoint", b.ep.Label, "err", err)
	}
	df, ok := s.factory.(framework.DatagramFactory)
	if !ok {
		s.log.Error("the factory serves no datagrams; udp endpoint left unserved", "endpoint", b.ep.Label)
		return
	}
	d := &dgramBinding{
		sock:    b.sock.dgram,
		svc:     s,
		drops:   s.drops,
		guarded: s.cfg.Spec != nil && s.cfg.Spec.DatagramGuards,
	}
	// Go allows broadcast on every udp socket. A guarded service must not
	// answer a directed broadcast source (a subnet's broadcast address,
	// which reflects cannot tell from a host): without SO_BROADCAST the
	// kernel refuses such a send (counted send_failed). Set by the loop
	// for each batch's owner (see claimBatch), not here: the previous
	// owner's batch may still be delivered, under its own rule.
	d.received, d.sent = received, sent
	d.proto = df.BuildDatagramProtocol(d)
	b.dgram = d
}

// stopMode says why a service stops, which decides what happens to its
// metric series.
type stopMode int

const (
	stopExit    stopMode = iota // superd exits: factory_up goes to 0
	stopRetired                 // replaced or removed by a reload, or a prepared service undone: its series go once no instance uses them
)

// drainAndStop drains the service (its sockets were released already):
// connections not yet served are closed, served ones are drained (input
// that has arrived is delivered, then LoseConnection flushes the output),
// those left after timeout are aborted; then StopFactory runs.
func (s *service) drainAndStop(timeout time.Duration, mode stopMode) error {
	s.mu.Lock()
	s.closing = true
	for t := s.conns; t != nil; t = t.next {
		// Connections not served yet (in their TLS handshake, or about
		// to start) see closing when they are, and drain then; those
		// handed to the factory drain with s.handoff.
		if t.fc != nil {
			t.fc.Drain() // what has arrived is delivered, output flushed
		}
	}
	s.handoff.Drain() // connections handed over, and those about to be
	for h := range s.listening {
		h.Drain()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.connWG.Wait(); close(done) }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	cut := false
	select {
	case <-done:
	case <-s.cut:
		cut = true
	case <-timer.C:
	}
	select {
	case <-done:
	default:
		s.mu.Lock()
		n, programs := s.abortLocked()
		s.mu.Unlock()
		if in, ok := s.factory.(framework.Interrupter); ok {
			in.Interrupt() // a callback waiting on a file or pipe returns
		}
		what := abortedAttrs(n, programs)
		switch {
		case what == nil: // nothing was open (e.g. a service undone before it served)
		case cut && mode == stopExit:
			s.log.Warn("second signal: aborted open connections", what...)
		case cut:
			s.log.Warn("shutdown: aborted connections still draining after a reload", what...)
		default:
			s.log.Warn("shutdown timeout: aborted open connections", append(what, "timeout", timeout)...)
		}
		<-done
	}

	s.mu.Lock()
	up := s.factoryUp
	s.factoryUp = false
	s.mu.Unlock()
	var err error
	if up {
		if st, ok := s.factory.(framework.FactoryStopper); ok {
			err = st.StopFactory()
		}
		s.m.Stops.Inc()
	}
	if mode == stopExit {
		s.m.Up.Set(0)
	} else {
		// Series go with their last user: a successor with the same
		// labels (or a service added back meanwhile) keeps them, by name
		// alone for the families without a factory label.
		s.retireSeries()
	}
	if err != nil {
		s.log.Error("StopFactory failed", "err", err)
		return fmt.Errorf("service %q: stop factory: %w", s.cfg.Name, err)
	}
	return nil
}

// abortLocked aborts every open connection (ErrShutdownTimeout) and kills
// what a factory runs for one (exec's programs get SIGKILL). It returns
// the connections aborted and the wait-mode programs killed (a
// ListenerHandler serving a listening socket); each program is counted
// dropped as shutdown_timeout here, as an aborted connection is when it
// ends.
func (s *service) abortLocked() (conns, programs int) {
	n := 0
	for t := s.conns; t != nil; t = t.next {
		switch {
		case t.fc != nil:
			t.fc.Abort(framework.ErrShutdownTimeout)
			n++
		case t.handed:
			n++ // aborted with s.handoff
		default:
			t.c.Close() // still in its TLS handshake
		}
	}
	s.handoff.Abort(framework.ErrShutdownTimeout)
	for h := range s.listening {
		h.Abort(framework.ErrShutdownTimeout)
		programs++
		if !h.counted {
			// Once: a second signal's abort can come before the
			// program killed by the first has been reaped.
			h.counted = true
			s.m.Dropped(metrics.DropShutdownTimeout)
			s.dropped.Add(1)
		}
	}
	return n, programs
}

// abortedAttrs are the log attributes of what an abort ended; nil when
// it ended nothing.
func abortedAttrs(conns, programs int) []any {
	if conns == 0 && programs == 0 {
		return nil
	}
	what := []any{"connections", conns}
	if programs > 0 {
		what = append(what, "wait_programs", programs)
	}
	return what
}

// abandon is a running service's end when a second signal makes superd
// exit before the shutdown has taken the service out: new connections
// are refused, open ones aborted, programs killed.
func (s *service) abandon() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	if what := abortedAttrs(s.abortLocked()); what != nil {
		s.log.Warn("second signal: aborted open connections", what...)
	}
}

// sourceKey is the per-source limit key of a remote address: the IPv4
// address, or the IPv6 address masked to ipv6Prefix bits. Unix peers have
// none.
func sourceKey(addr net.Addr, ipv6Prefix int) (netip.Prefix, bool) {
	ip, ok := peerAddr(addr)
	if !ok {
		return netip.Prefix{}, false
	}
	bits := 32
	if ip.Is6() {
		bits = ipv6Prefix
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.PrefixFrom(ip, ip.BitLen()), true
	}
	return p, true
}

// peerAddr is the IP address of a TCP peer (IPv4-mapped addresses
// unmapped); unix peers have none.
func peerAddr(addr net.Addr) (netip.Addr, bool) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// plainPeer formats a peer address for logs, an IPv4-mapped IPv6 address
// (a dual-stack listener's IPv4 client) as the plain IPv4 one.
func plainPeer(addr net.Addr) string {
	if ta, ok := addr.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return netip.AddrPortFrom(ip.Unmap(), uint16(ta.Port)).String()
		}
	}
	return addr.String()
}

// rejected counts a refused connection.
func (s *service) rejected(reason string) {
	s.m.Rejected(reason)
	s.rejectedN.Add(1)
}

// recordCertificates sets the expiry gauge of each certificate a TLS
// endpoint serves, one series per name (see endpoint.CertificateName; when
// two certificates go by one name, the one expiring first), replacing the
// endpoint's series of certificates it no longer serves.
func (s *service) recordCertificates(b *binding) {
	expiry := map[string]float64{}
	for _, c := range b.tls.Certificates() {
		leaf := c.Leaf
		if leaf == nil && len(c.Certificate) > 0 {
			leaf, _ = x509.ParseCertificate(c.Certificate[0])
		}
		if leaf == nil {
			continue
		}
		name := endpoint.CertificateName(leaf)
		notAfter := float64(leaf.NotAfter.Unix())
		if t, seen := expiry[name]; !seen || notAfter < t {
			expiry[name] = notAfter
		}
	}
	s.m.CertificateExpiry(b.ep.Label, expiry)
}
