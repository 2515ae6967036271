// Package metrics owns superd's Prometheus families (the names of SPEC
// section 4, a contract with operators' dashboards), its own registry, and
// the HTTP endpoints /metrics, /healthz and /readyz.
package metrics

import (
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// Rejection reasons: a connection refused at accept, before any protocol.
const (
	RejectMaxConnections      = "max_connections"
	RejectMaxConnectionsPerIP = "max_connections_per_ip"
	// RejectMaxConnectionsPerUID: max_connections_per_uid, unix sockets.
	RejectMaxConnectionsPerUID = "max_connections_per_uid"
	RejectRateLimit            = "rate_limit"
	RejectRateLimitPerIP       = "rate_limit_per_ip"
	RejectDenied               = "denied"
	RejectTLSHandshake         = "tls_handshake"
	RejectFactory              = "factory"
	// RejectProxyProtocol: a trusted peer's PROXY header was missing
	// (where required), malformed, over-long or late.
	RejectProxyProtocol = "proxy_protocol"
	// RejectSpawn: a factory that runs a program per connection (exec)
	// could not start it.
	RejectSpawn = "spawn"
)

// Drop reasons: a connection superd ended after handing it to a protocol.
const (
	DropIdleTimeout     = "idle_timeout"
	DropSlowConsumer    = "slow_consumer"
	DropShutdownTimeout = "shutdown_timeout"
	// DropUpstream: a proxy could not reach its upstream, or lost it.
	DropUpstream = "upstream"
)

// Datagram drop reasons: a datagram superd did not deliver or send.
const (
	DatagramDenied         = "denied"
	DatagramRateLimit      = "rate_limit"
	DatagramRateLimitPerIP = "rate_limit_per_ip"
	DatagramReflection     = "reflection"
	DatagramSendFailed     = "send_failed"
)

// DatagramDropReasons lists every datagram drop reason.
var DatagramDropReasons = []string{DatagramDenied, DatagramRateLimit, DatagramRateLimitPerIP,
	DatagramReflection, DatagramSendFailed}

// RejectReasons and DropReasons list every reason, so each service's series
// exist (at 0) from startup.
var (
	RejectReasons = []string{RejectMaxConnections, RejectMaxConnectionsPerIP, RejectMaxConnectionsPerUID, RejectRateLimit,
		RejectRateLimitPerIP, RejectDenied, RejectTLSHandshake, RejectFactory, RejectSpawn, RejectProxyProtocol}
	DropReasons = []string{DropIdleTimeout, DropSlowConsumer, DropShutdownTimeout, DropUpstream}
)

// Metrics holds every family superd exports.
type Metrics struct {
	Registry *prometheus.Registry

	ConnectionsActive   *prometheus.GaugeVec
	ConnectionsTotal    *prometheus.CounterVec
	ConnectionsRejected *prometheus.CounterVec
	ConnectionsDropped  *prometheus.CounterVec
	ConnectionDuration  *prometheus.HistogramVec
	ReceivedBytes       *prometheus.CounterVec
	SentBytes           *prometheus.CounterVec
	FactoryUp           *prometheus.GaugeVec
	FactoryStarts       *prometheus.CounterVec
	FactoryStops        *prometheus.CounterVec
	ConfigReloads       *prometheus.CounterVec
	LastReloadOK        prometheus.Gauge
	BuildInfo           *prometheus.GaugeVec
	DatagramsReceived   *prometheus.CounterVec
	DatagramsSent       *prometheus.CounterVec
	DatagramsDropped    *prometheus.CounterVec
	TLSHandshakes       *prometheus.GaugeVec
	AccessLogDropped    prometheus.Counter
	CertExpiry          *prometheus.GaugeVec
	// ClusterConnected is 1 while the cluster block's NATS connection is
	// up (always 0 without a cluster block).
	ClusterConnected prometheus.Gauge

	// own are the registerers of the services' own families, by service
	// and factory: one for every instance of a service (a reload that
	// replaces it runs two at once), dropped by Service.Delete.
	ownMu sync.Mutex
	own   map[string]*ownRegisterer
}

// New builds the families on a fresh registry, with the Go and process
// collectors.
func New(version string) *Metrics {
	sf := []string{"service", "factory"}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		ConnectionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "superd_connections_active", Help: "Connections open now, per service.",
		}, sf),
		ConnectionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_connections_total", Help: "Connections handed to a protocol, per endpoint.",
		}, []string{"service", "factory", "endpoint"}),
		ConnectionsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_connections_rejected_total", Help: "Connections refused at accept, by reason.",
		}, []string{"service", "factory", "reason"}),
		ConnectionsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_connections_dropped_total", Help: "Connections superd ended after handing them to a protocol, by reason.",
		}, []string{"service", "factory", "reason"}),
		ConnectionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "superd_connection_duration_seconds",
			Help:    "How long connections stayed open.",
			Buckets: []float64{.001, .01, .1, 1, 10, 60, 600, 3600, 86400},
		}, sf),
		ReceivedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_received_bytes_total", Help: "Application bytes received from peers.",
		}, sf),
		SentBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_sent_bytes_total", Help: "Application bytes sent to peers.",
		}, sf),
		FactoryUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "superd_factory_up", Help: "1 while the service's factory is started.",
		}, sf),
		FactoryStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_factory_starts_total", Help: "StartFactory calls that succeeded.",
		}, sf),
		FactoryStops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_factory_stops_total", Help: "StopFactory calls.",
		}, sf),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_config_reloads_total", Help: "Configuration reloads, by result.",
		}, []string{"result"}),
		LastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "superd_config_last_reload_successful", Help: "1 if the last reload succeeded (or none happened), else 0.",
		}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "superd_build_info", Help: "Always 1; labels give the build.",
		}, []string{"version", "goversion"}),
		DatagramsReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_datagrams_received_total", Help: "Datagrams received on udp endpoints (before allow, deny and rate limits).",
		}, []string{"service", "factory", "endpoint"}),
		DatagramsSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_datagrams_sent_total", Help: "Datagrams sent from udp endpoints.",
		}, []string{"service", "factory", "endpoint"}),
		DatagramsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "superd_datagrams_dropped_total", Help: "Datagrams not delivered (denied, rate limited) or not sent (reflection, send_failed), by reason.",
		}, []string{"service", "factory", "reason"}),
		TLSHandshakes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "superd_tls_handshakes_in_progress",
			Help: "TLS handshakes under way: accepted connections not yet handed to a protocol (they count against max_connections and max_connections_per_ip).",
		}, []string{"service"}),
		AccessLogDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "superd_access_log_dropped_total",
			Help: "Access log lines dropped because the writer could not keep up (logging never blocks a connection) or the write failed (a full disk).",
		}),
		CertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "superd_tls_certificate_expiry_timestamp_seconds",
			Help: "When each certificate a TLS endpoint serves expires (its NotAfter, Unix time); name is the certificate's first DNS name, common name or first IP address.",
		}, []string{"service", "endpoint", "name"}),
		ClusterConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "superd_cluster_connected",
			Help: "1 while connected to NATS (the cluster block), else 0.",
		}),
		own: map[string]*ownRegisterer{},
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.ConnectionsActive, m.ConnectionsTotal, m.ConnectionsRejected, m.ConnectionsDropped,
		m.ConnectionDuration, m.ReceivedBytes, m.SentBytes, m.FactoryUp, m.FactoryStarts,
		m.FactoryStops, m.ConfigReloads, m.LastReloadOK, m.BuildInfo,
		m.DatagramsReceived, m.DatagramsSent, m.DatagramsDropped, m.TLSHandshakes,
		m.AccessLogDropped, m.CertExpiry, m.ClusterConnected,
	)
	m.ConfigReloads.WithLabelValues("success")
	m.ConfigReloads.WithLabelValues("failure")
	m.LastReloadOK.Set(1)
	m.BuildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	return m
}

// Service is the set of series of one service, resolved once so the hot
// paths touch no label maps. Two instances of a service run at once while
// a reload replaces it, and may differ in factory: the series labelled
// with the factory are the instance's (Delete, DeleteEndpoint), those
// labelled by service name alone (Handshakes, the certificate expiry) are
// shared by every instance of the name (DeleteName, DeleteNameEndpoint).
type Service struct {
	Active     prometheus.Gauge
	Duration   prometheus.Observer
	Received   prometheus.Counter
	Sent       prometheus.Counter
	Up         prometheus.Gauge
	Starts     prometheus.Counter
	Stops      prometheus.Counter
	Handshakes prometheus.Gauge
	rejected   map[string]prometheus.Counter
	dropped    map[string]prometheus.Counter
	m          *Metrics
	name, fact string
}

// ForService creates every series of a service (at 0), so they are present
// from startup.
func (m *Metrics) ForService(service, factory string) *Service {
	s := &Service{
		Active:     m.ConnectionsActive.WithLabelValues(service, factory),
		Duration:   m.ConnectionDuration.WithLabelValues(service, factory),
		Received:   m.ReceivedBytes.WithLabelValues(service, factory),
		Sent:       m.SentBytes.WithLabelValues(service, factory),
		Up:         m.FactoryUp.WithLabelValues(service, factory),
		Starts:     m.FactoryStarts.WithLabelValues(service, factory),
		Stops:      m.FactoryStops.WithLabelValues(service, factory),
		Handshakes: m.TLSHandshakes.WithLabelValues(service),
		rejected:   map[string]prometheus.Counter{},
		dropped:    map[string]prometheus.Counter{},
		m:          m, name: service, fact: factory,
	}
	for _, r := range RejectReasons {
		s.rejected[r] = m.ConnectionsRejected.WithLabelValues(service, factory, r)
	}
	for _, r := range DropReasons {
		s.dropped[r] = m.ConnectionsDropped.WithLabelValues(service, factory, r)
	}
	return s
}

// Endpoint returns the connections_total counter of one endpoint (created at
// 0).
func (s *Service) Endpoint(label string) prometheus.Counter {
	return s.m.ConnectionsTotal.WithLabelValues(s.name, s.fact, label)
}

// DeleteEndpoint removes the series of one endpoint labelled with the
// service's factory (connections_total, datagrams received and sent): call
// it once no instance of this service and factory serves the endpoint.
func (s *Service) DeleteEndpoint(label string) {
	s.m.ConnectionsTotal.DeleteLabelValues(s.name, s.fact, label)
	s.m.DatagramsReceived.DeleteLabelValues(s.name, s.fact, label)
	s.m.DatagramsSent.DeleteLabelValues(s.name, s.fact, label)
}

// DeleteNameEndpoint removes the series of one endpoint that carry no
// factory label (certificate expiry): call it once no instance of this
// service NAME serves the endpoint, whatever its factory. An instance of
// another factory that replaced this one under the same name exports
// them too.
func (s *Service) DeleteNameEndpoint(label string) {
	s.m.CertExpiry.DeletePartialMatch(prometheus.Labels{"service": s.name, "endpoint": label})
}

// CertificateExpiry records when the certificates a TLS endpoint serves
// expire (NotAfter, Unix time, by certificate name): the endpoint's series
// become exactly these.
func (s *Service) CertificateExpiry(endpoint string, notAfter map[string]float64) {
	for _, m := range s.certSeries(endpoint) {
		if _, keep := notAfter[m]; !keep {
			s.m.CertExpiry.DeleteLabelValues(s.name, endpoint, m)
		}
	}
	for name, t := range notAfter {
		s.m.CertExpiry.WithLabelValues(s.name, endpoint, name).Set(t)
	}
}

// certSeries returns the name labels of the expiry series of one endpoint.
func (s *Service) certSeries(endpoint string) []string {
	ch := make(chan prometheus.Metric)
	go func() {
		s.m.CertExpiry.Collect(ch)
		close(ch)
	}()
	var names []string
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		labels := map[string]string{}
		for _, l := range d.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["service"] == s.name && labels["endpoint"] == endpoint {
			names = append(names, labels["name"])
		}
	}
	return names
}

// DatagramEndpoint returns the datagram counters of one udp endpoint
// (created at 0).
func (s *Service) DatagramEndpoint(label string) (received, sent prometheus.Counter) {
	return s.m.DatagramsReceived.WithLabelValues(s.name, s.fact, label),
		s.m.DatagramsSent.WithLabelValues(s.name, s.fact, label)
}

// DatagramDrops returns the drop counters of the service, by reason,
// creating every one at 0.
func (s *Service) DatagramDrops() map[string]prometheus.Counter {
	out := make(map[string]prometheus.Counter, len(DatagramDropReasons))
	for _, r := range DatagramDropReasons {
		out[r] = s.m.DatagramsDropped.WithLabelValues(s.name, s.fact, r)
	}
	return out
}

// Rejected counts a connection refused at accept.
func (s *Service) Rejected(reason string) {
	c, ok := s.rejected[reason]
	if !ok { // a reason a factory made up: its series appears when first used
		c = s.m.ConnectionsRejected.WithLabelValues(s.name, s.fact, reason)
	}
	c.Inc()
}

// Dropped counts a connection superd ended.
func (s *Service) Dropped(reason string) { s.dropped[reason].Inc() }

// Delete removes the series of the service labelled with its factory
// (when reload removed or replaced it), including those of its factory's
// own families: call it once no instance of this service and factory is
// left. The series labelled by service name alone go with DeleteName.
func (s *Service) Delete() {
	l := prometheus.Labels{"service": s.name, "factory": s.fact}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		s.m.ConnectionsActive, s.m.ConnectionsTotal, s.m.ConnectionsRejected, s.m.ConnectionsDropped,
		s.m.ConnectionDuration, s.m.ReceivedBytes, s.m.SentBytes, s.m.FactoryUp, s.m.FactoryStarts, s.m.FactoryStops,
		s.m.DatagramsReceived, s.m.DatagramsSent, s.m.DatagramsDropped,
	} {
		v.DeletePartialMatch(l)
	}
	// Only this factory's families: a successor of another factory under
	// the same service name keeps its own series.
	s.m.ownMu.Lock()
	r := s.m.own[s.name+"\x00"+s.fact]
	delete(s.m.own, s.name+"\x00"+s.fact)
	s.m.ownMu.Unlock()
	if r != nil {
		r.unregisterAll()
	}
}

// DeleteName removes the series of the service that carry no factory
// label (handshakes in progress, and certificate expiry on any endpoint):
// call it once no instance of this service NAME is left, whatever its
// factory. A successor of another factory under the same name holds the
// same handshakes gauge, which must stay the one exported.
func (s *Service) DeleteName() {
	s.m.TLSHandshakes.DeleteLabelValues(s.name)
	s.m.CertExpiry.DeletePartialMatch(prometheus.Labels{"service": s.name})
}

// Registerer is where the factory of a service registers its own families
// (framework.Env.Metrics): their series carry service=NAME. Every
// instance of the service gets the same one, which refuses a collector
// equal to one registered already with a prometheus.AlreadyRegisteredError
// holding that one, so the instances share it (framework.RegisterCollector).
// The service's Delete unregisters them all.
func (m *Metrics) Registerer(service, factory string) prometheus.Registerer {
	key := service + "\x00" + factory
	m.ownMu.Lock()
	defer m.ownMu.Unlock()
	r := m.own[key]
	if r == nil {
		r = &ownRegisterer{reg: prometheus.WrapRegistererWith(prometheus.Labels{"service": service}, m.Registry)}
		m.own[key] = r
	}
	return r
}

// ownRegisterer registers a service's own collectors, labelled with its
// name, and remembers them.
type ownRegisterer struct {
	reg prometheus.Registerer
	mu  sync.Mutex
	cs  []prometheus.Collector
}

func (r *ownRegisterer) Register(c prometheus.Collector) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.reg.Register(c)
	if err == nil {
		r.cs = append(r.cs, c)
		return nil
	}
	// The registry's error holds the wrapped collector: find ours.
	want := descs(c)
	for _, old := range r.cs {
		if descs(old) == want {
			return prometheus.AlreadyRegisteredError{ExistingCollector: old, NewCollector: c}
		}
	}
	return err
}

func (r *ownRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *ownRegisterer) Unregister(c prometheus.Collector) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, old := range r.cs {
		if old == c {
			r.cs = append(r.cs[:i], r.cs[i+1:]...)
			return r.reg.Unregister(c)
		}
	}
	return false
}

func (r *ownRegisterer) unregisterAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.cs {
		r.reg.Unregister(c)
	}
	r.cs = nil
}

// descs describes a collector, to tell equal ones.
func descs(c prometheus.Collector) string {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	var out []string
	for d := range ch {
		out = append(out, d.String())
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}
