package supervisor

import (
	"sort"
	"time"
)

// ServiceStatus is one service as the status view shows it.
type ServiceStatus struct {
	Name      string           `json:"name"`
	Factory   string           `json:"factory"`
	State     string           `json:"state"` // running or draining
	Endpoints []EndpointStatus `json:"endpoints"`
	Active    int              `json:"active"`
	Totals    Totals           `json:"totals"`
	Limits    LimitsStatus     `json:"limits"`
}

// EndpointStatus is one endpoint of a service.
type EndpointStatus struct {
	Kind      string `json:"kind"`
	Address   string `json:"address"`   // what it listens on (endpoint.Address), or the socket's path
	Inherited bool   `json:"inherited"` // passed by the service manager
}

// Totals count connections since the service (this instance) started.
type Totals struct {
	Accepted int64 `json:"accepted"`
	Rejected int64 `json:"rejected"`
	Dropped  int64 `json:"dropped"`
}

// LimitsStatus are the limits in force.
type LimitsStatus struct {
	MaxConnections       int      `json:"max_connections"`
	MaxConnectionsPerIP  int      `json:"max_connections_per_ip"`
	MaxConnectionsPerUID int      `json:"max_connections_per_uid"`
	IdleTimeoutS         float64  `json:"idle_timeout_s"`
	Allow                []string `json:"allow"`
	Deny                 []string `json:"deny"`
	RateLimit            *Rate    `json:"rate_limit"`
	RateLimitPerIP       *Rate    `json:"rate_limit_per_ip"`
	IPv6Prefix           int      `json:"ipv6_prefix"`
	MaxPendingOutput     int      `json:"max_pending_output"`
}

// Rate is a token bucket in force.
type Rate struct {
	Rate  float64 `json:"rate"`
	Burst int     `json:"burst"`
	// DatagramsOnly: the built-in services' default per-source limit of
	// their udp endpoints, which does not apply to their connections.
	DatagramsOnly bool `json:"datagrams_only,omitempty"`
}

// ConnStatus is one open connection.
type ConnStatus struct {
	Service  string    `json:"service"`
	Endpoint string    `json:"endpoint"`
	Peer     string    `json:"peer"`
	Since    time.Time `json:"since"`
	BytesIn  int64     `json:"bytes_in"`
	BytesOut int64     `json:"bytes_out"`
	PID      int       `json:"pid,omitempty"`
}

// MaxStatusConnections bounds the connections Status lists.
const MaxStatusConnections = 10000

// Status describes the running services (in file order), then the
// services still draining after a reload or in a shutdown; with conns,
// also the open connections (at most MaxStatusConnections). The two lists
// are one moment's: a reload or a shutdown moves services from one to the
// other in one step under drainMu, the only lock taken here besides each
// service's own, so Status answers while a reload is under way.
func (s *Supervisor) Status(conns bool) ([]ServiceStatus, []ConnStatus) {
	_, services, cs := s.StatusOf(conns)
	return services, cs
}

// StatusOf is Status with the generation of the configuration it
// describes (1 at Start, one more for each successful Reload).
func (s *Supervisor) StatusOf(conns bool) (generation int, services []ServiceStatus, cs []ConnStatus) {
	s.drainMu.Lock()
	generation = s.generation
	running := s.running
	draining := make([]*service, 0, len(s.drainingSvcs)+len(s.stoppingSvcs))
	for svc := range s.drainingSvcs {
		draining = append(draining, svc)
	}
	draining = append(draining, s.stoppingSvcs...)
	s.drainMu.Unlock()
	sort.SliceStable(draining, func(i, j int) bool { return draining[i].cfg.Name < draining[j].cfg.Name })

	// Once Shutdown has begun, every service drains, also those it has
	// not taken out yet (it closes their listeners first).
	stopping := s.stopping.Load()
	for i, svc := range append(running, draining...) {
		state := "running"
		if i >= len(running) || stopping {
			state = "draining"
		}
		services = append(services, svc.status(state))
		if conns {
			cs = svc.appendConns(cs)
		}
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Since.Before(cs[j].Since) })
	return generation, services, cs
}

func (s *service) status(state string) ServiceStatus {
	l := s.cfg.Limits
	st := ServiceStatus{
		Name: s.cfg.Name, Factory: s.cfg.Factory, State: state,
		Totals: Totals{Accepted: s.accepted.Load(), Rejected: s.rejectedN.Load(), Dropped: s.dropped.Load()},
		Limits: LimitsStatus{
			MaxConnections: l.MaxConnections, MaxConnectionsPerIP: l.MaxConnectionsPerIP,
			MaxConnectionsPerUID: l.MaxConnectionsPerUID, IdleTimeoutS: l.IdleTimeout.Seconds(),
			IPv6Prefix: l.IPv6Prefix, MaxPendingOutput: l.MaxPendingOutput,
			Allow: []string{}, Deny: []string{},
		},
	}
	for _, p := range l.Allow {
		st.Limits.Allow = append(st.Limits.Allow, p.String())
	}
	for _, p := range l.Deny {
		st.Limits.Deny = append(st.Limits.Deny, p.String())
	}
	if r := l.RateLimit; r != nil {
		st.Limits.RateLimit = &Rate{Rate: r.Rate, Burst: r.Burst}
	}
	if r := l.RateLimitPerIP; r != nil {
		st.Limits.RateLimitPerIP = &Rate{Rate: r.Rate, Burst: r.Burst, DatagramsOnly: l.RateLimitPerIPDatagramsOnly}
	}
	for _, b := range s.bindings {
		addr := b.ep.Addr.String()
		if b.sock.inherited {
			// A named endpoint's address is only its fallback: it listens
			// where the service manager's socket is bound ("" for an
			// unnamed unix socket).
			addr = b.sock.addr.String()
		}
		st.Endpoints = append(st.Endpoints, EndpointStatus{Kind: b.ep.Kind, Address: addr, Inherited: b.sock.inherited})
	}
	s.mu.Lock()
	st.Active = s.active
	s.mu.Unlock()
	return st
}

func (s *service) appendConns(cs []ConnStatus) []ConnStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t := s.conns; t != nil && len(cs) < MaxStatusConnections; t = t.next {
		c := ConnStatus{Service: s.cfg.Name, Endpoint: t.b.ep.Label, Since: t.servedSince()}
		switch {
		case t.fc != nil:
			c.Peer = plainPeer(t.fc.PeerAddr())
			c.BytesIn, c.BytesOut = t.fc.BytesIn(), t.fc.BytesOut()
		case t.hc != nil:
			c.Peer = plainPeer(t.hc.Conn.RemoteAddr())
			c.PID = t.hc.RunningPID()
			c.BytesIn, c.BytesOut = t.hc.LiveBytes()
		default:
			continue // not served yet
		}
		cs = append(cs, c)
	}
	return cs
}
