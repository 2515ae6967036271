// Package cluster owns superd's membership in a NATS cluster (SPEC section
// 13): the embedded NATS server (the default), or a connection to an
// existing NATS deployment (nats_urls), and the JetStream key-value bucket
// where names are claimed across nodes.
//
// cmd/superd starts one Node from the configuration's cluster block before
// any service (Start), publishes it with SetDefault, and closes it after
// every service has stopped. A factory that spans nodes (chat with
// cluster = true) takes Default() in its StartFactory:
//
//	n := cluster.Default()       // nil: no cluster block
//	nc := n.Conn()               // publish and subscribe (no echo: a node never hears itself)
//	kv, err := n.Names()         // the names bucket, once JetStream has answered
//
// Everything here survives NATS being away: the connection reconnects
// forever, publishing while disconnected fails at once (nothing is
// buffered), and Names reports ErrNamesUnavailable until the bucket is
// bound again.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/superd-dev/superd/config"
)

// NamesBucket is the JetStream key-value bucket of chat names: one key per
// name held, whose value is the holding node, each with its own TTL.
const NamesBucket = "superd_chat_names"

// markerTTL is how long the bucket keeps the marker left by a key that
// expired (at least 1s for JetStream); markers only matter to watchers.
const markerTTL = 5 * time.Second

// ErrNamesUnavailable: the names bucket cannot be used now (not connected
// to NATS, JetStream not answering or the bucket not yet created).
var ErrNamesUnavailable = errors.New("cluster: the names bucket is unavailable")

// Timeouts.
const (
	readyTimeout  = 10 * time.Second       // the embedded server's listeners
	bindTimeout   = 2 * time.Second        // one attempt at binding the bucket
	bindRetry     = 500 * time.Millisecond // between attempts
	reconnectWait = 250 * time.Millisecond // between reconnection attempts
	pingInterval  = 5 * time.Second        // a silent server is noticed within about 3 of these
	flushTimeout  = 2 * time.Second        // flushing on Close
	serverStop    = 10 * time.Second       // the embedded server's shutdown
	maxNamesRetry = 100 * time.Millisecond // no tighter loop when binding fails at once
	routesCheck   = 250 * time.Millisecond // how often an embedded server's routes are counted
)

// Node is this superd in the cluster: its NATS connection, its embedded
// server (unless nats_urls), and the names bucket once bound.
type Node struct {
	name      string
	cfg       *config.Cluster
	log       *slog.Logger // component=cluster
	natsLog   *slog.Logger // component=nats: the embedded server's own
	connected prometheus.Gauge
	closing   atomic.Bool
	// routed: the embedded server reaches at least one other node, or
	// needs none (a cluster of one, or nats_urls). watchRoutes keeps it.
	routed atomic.Bool

	srvMu sync.Mutex
	srv   *server.Server // the embedded server; nil with nats_urls or while stopped
	opts  *server.Options

	nc *nats.Conn
	js jetstream.JetStream

	names    atomic.Pointer[jetstream.KeyValue]
	kick     chan struct{} // wakes the binder
	stop     chan struct{}
	wg       sync.WaitGroup
	closeMu  sync.Once
	replicas int
}

var current atomic.Pointer[Node]

// SetDefault makes n the node of this process (nil: none).
func SetDefault(n *Node) { current.Store(n) }

// Default is the node of this process, or nil when the configuration has
// no cluster block.
func Default() *Node { return current.Load() }

// Start joins the cluster cfg describes: it starts the embedded server
// (and waits until it accepts connections) or connects to nats_urls (and
// carries on if they do not answer yet: the connection keeps trying), then
// binds the names bucket in the background. connected (may be nil) is set
// to 1 while the connection is up.
func Start(cfg *config.Cluster, log *slog.Logger, connected prometheus.Gauge) (*Node, error) {
	if connected == nil {
		connected = prometheus.NewGauge(prometheus.GaugeOpts{Name: "unused"})
	}
	connected.Set(0)
	n := &Node{
		name:      cfg.Node,
		cfg:       cfg,
		log:       log.With("component", "cluster", "node", cfg.Node),
		natsLog:   log.With("component", "nats", "node", cfg.Node),
		connected: connected,
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
	}
	n.routed.Store(!n.needsRoutes())
	opts := []nats.Option{
		nats.Name("superd " + cfg.Node),
		nats.NoEcho(), // a node delivers its own lines itself
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.ReconnectBufSize(-1), // while disconnected, publishing fails at once: nothing piles up
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(2),
		nats.ConnectHandler(func(nc *nats.Conn) { n.up(nc, "connected to NATS") }),
		nats.ReconnectHandler(func(nc *nats.Conn) { n.up(nc, "reconnected to NATS") }),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			n.setGauge(nc)
			if !n.closing.Load() {
				n.log.Warn("disconnected from NATS; rooms carry on locally", "err", err)
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { n.connected.Set(0) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			n.log.Warn("NATS error", "subject", subj, "err", err)
		}),
	}
	var url string
	if cfg.Embedded != nil {
		o, err := serverOptions(cfg)
		if err != nil {
			return nil, err
		}
		n.opts = o
		n.replicas = min(3, 1+len(cfg.Embedded.Routes))
		if err := n.StartServer(); err != nil {
			return nil, err
		}
		// superd's own connection is in-process, whatever listen says;
		// after StartServer (a restart) it reaches the new server.
		opts = append(opts, nats.InProcessServer(inProcess{n}), nats.IgnoreDiscoveredServers())
		url = "nats://in-process"
	} else {
		opts = append(opts, nats.RetryOnFailedConnect(true))
		url = strings.Join(cfg.NATSURLs, ",")
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		n.stopServer()
		return nil, fmt.Errorf("cluster: connecting to NATS: %w", err)
	}
	n.nc = nc
	if cfg.Embedded != nil && !nc.IsConnected() {
		nc.Close()
		n.stopServer()
		return nil, errors.New("cluster: cannot connect to the embedded NATS server")
	}
	if !nc.IsConnected() {
		n.log.Warn("NATS does not answer yet; rooms work locally and new names wait for it", "servers", redact(cfg.NATSURLs))
	}
	n.js, err = jetstream.New(nc)
	if err != nil {
		nc.Close()
		n.stopServer()
		return nil, fmt.Errorf("cluster: JetStream: %w", err)
	}
	n.wg.Add(1)
	go n.binder()
	if n.needsRoutes() {
		n.wg.Add(1)
		go n.watchRoutes()
	}
	return n, nil
}

// needsRoutes: an embedded server with a route port is one node of a
// cluster, which it reaches through its routes only.
func (n *Node) needsRoutes() bool {
	return n.cfg.Embedded != nil && n.cfg.Embedded.ClusterListen != ""
}

// watchRoutes keeps routed (and the gauge) up to date: an embedded server
// that has lost every route (the other nodes' servers gone, the network
// cut) leaves this node's own connection up, yet nothing it publishes
// reaches another node.
func (n *Node) watchRoutes() {
	defer n.wg.Done()
	t := time.NewTicker(routesCheck)
	defer t.Stop()
	for {
		n.srvMu.Lock()
		s := n.srv
		n.srvMu.Unlock()
		routes := 0
		if s != nil {
			routes = s.NumRoutes()
		}
		was := n.routed.Swap(routes > 0)
		n.setGauge(n.nc)
		if was != (routes > 0) {
			if routes > 0 {
				n.log.Info("the embedded NATS server reaches other nodes", "routes", routes)
			} else if s != nil && !n.closing.Load() {
				n.log.Warn("the embedded NATS server reaches no other node; rooms carry on locally")
			}
		}
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
	}
}

// setGauge sets the connected gauge as Connected would say, for nc (the
// node's connection, passed by NATS' callbacks, which may run before
// Start has recorded it).
func (n *Node) setGauge(nc *nats.Conn) {
	if nc.IsConnected() && n.routed.Load() {
		n.connected.Set(1)
	} else {
		n.connected.Set(0)
	}
}

func (n *Node) up(nc *nats.Conn, msg string) {
	n.setGauge(nc)
	n.log.Info(msg, "server", nc.ConnectedServerName(), "url", nc.ConnectedUrlRedacted())
	n.Kick()
}

// Config is the cluster block the node was started with.
func (n *Node) Config() *config.Cluster { return n.cfg }

// Name is the node's name (cluster.node).
func (n *Node) Name() string { return n.name }

// Conn is the node's NATS connection, shared by every service. It never
// delivers the node's own publications back (no echo).
func (n *Node) Conn() *nats.Conn { return n.nc }

// Connected reports whether the node is connected to the cluster: its
// connection to NATS is up and, with an embedded server that has a route
// port, that server reaches at least one other node. Lines published
// while it is false reach nobody.
func (n *Node) Connected() bool { return n.nc.IsConnected() && n.routed.Load() }

// Names is the names bucket, or ErrNamesUnavailable while it is not bound
// (NATS away, JetStream without a leader yet). It never waits.
func (n *Node) Names() (jetstream.KeyValue, error) {
	if kv := n.names.Load(); kv != nil && n.nc.IsConnected() {
		return *kv, nil
	}
	return nil, ErrNamesUnavailable
}

// NamesLost tells the node that an operation on the bucket found no
// stream behind it (a NATS server restarted without it): it is bound
// again, created if need be.
func (n *Node) NamesLost() {
	n.names.Store(nil)
	n.Kick()
}

// Kick wakes the binder (after a reconnection, or a lost bucket).
func (n *Node) Kick() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// binder binds the names bucket (creating it if missing) whenever it is
// not bound, retrying every bindRetry.
func (n *Node) binder() {
	defer n.wg.Done()
	failures := 0
	for {
		if n.names.Load() == nil && n.nc.IsConnected() {
			if err := n.bind(); err != nil {
				failures++
				// The first failure says why; the next ones (JetStream
				// electing a leader, peers not up yet) only at debug.
				if failures == 1 || failures%60 == 0 {
					n.log.Info("names bucket not available yet; new names are refused meanwhile", "err", err, "attempts", failures)
				} else {
					n.log.Debug("names bucket not available yet", "err", err)
				}
			} else {
				if failures > 0 {
					n.log.Info("names bucket available", "bucket", NamesBucket, "after_attempts", failures)
				} else {
					n.log.Debug("names bucket available", "bucket", NamesBucket)
				}
				failures = 0
			}
		}
		wait := bindRetry
		if n.names.Load() != nil {
			wait = time.Hour // until kicked
		}
		t := time.NewTimer(wait)
		select {
		case <-n.stop:
			t.Stop()
			return
		case <-n.kick:
			t.Stop()
			// A burst of kicks (many failed claims) binds once.
			select {
			case <-n.stop:
				return
			case <-time.After(maxNamesRetry):
			}
		case <-t.C:
		}
	}
}

func (n *Node) bind() error {
	ctx, cancel := context.WithTimeout(context.Background(), bindTimeout)
	defer cancel()
	kv, err := n.js.KeyValue(ctx, NamesBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		replicas := n.replicas
		if replicas == 0 { // nats_urls: as many as the servers we know, up to 3
			replicas = min(3, max(1, len(n.nc.Servers())))
		}
		kv, err = n.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:         NamesBucket,
			Description:    "superd chat names: one key per name held, value the holding node, each with its node's name_ttl",
			History:        1,
			Storage:        jetstream.FileStorage, // a NATS server that restarts keeps the names held (their TTLs run on)
			Replicas:       replicas,
			LimitMarkerTTL: markerTTL, // enables per-key TTLs
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // another node was first
			kv, err = n.js.KeyValue(ctx, NamesBucket)
		}
		if err == nil {
			n.log.Info("names bucket created (or found, created by another node)", "bucket", NamesBucket, "replicas", replicas)
		}
	}
	if err != nil {
		return err
	}
	s, err := n.js.Stream(ctx, "KV_"+NamesBucket)
	if err != nil {
		return err
	}
	if !s.CachedInfo().Config.AllowMsgTTL {
		return fmt.Errorf("the bucket %s exists without per-key TTLs (allow_msg_ttl); delete it, or create it with a limit marker TTL, so superd can use it", NamesBucket)
	}
	n.names.Store(&kv)
	return nil
}

// Close leaves the cluster: the connection is flushed and closed, then the
// embedded server (if any) shuts down. Run it after every service that
// uses the node has stopped.
func (n *Node) Close() {
	n.closeMu.Do(func() {
		n.closing.Store(true)
		close(n.stop)
		n.wg.Wait()
		if n.nc.IsConnected() {
			_ = n.nc.FlushTimeout(flushTimeout)
		}
		n.nc.Close()
		n.stopServer()
		n.connected.Set(0)
		if current.Load() == n {
			current.Store(nil)
		}
		n.log.Info("left the cluster")
	})
}

// StartServer starts the embedded server and waits until it accepts
// connections. Start calls it; after StopServer it starts a new one with
// the same configuration (its store, routes and ports), and the node's
// connection finds it by itself.
func (n *Node) StartServer() error {
	if n.opts == nil {
		return errors.New("cluster: no embedded NATS server (nats_urls)")
	}
	n.srvMu.Lock()
	defer n.srvMu.Unlock()
	if n.srv != nil {
		return nil
	}
	o := n.opts.Clone()
	s, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("cluster: the embedded NATS server: %w", err)
	}
	lg := &natsLogger{log: n.natsLog}
	s.SetLoggerV2(lg, n.log.Enabled(context.Background(), slog.LevelDebug), false, false)
	s.Start()
	// Ready, or failed (a port taken: the server says so and stops), or
	// out of time.
	ready := false
	for deadline := time.Now().Add(readyTimeout); time.Now().Before(deadline) && lg.lastFatal() == ""; {
		if ready = s.ReadyForConnections(100 * time.Millisecond); ready {
			break
		}
	}
	if !ready {
		s.Shutdown()
		s.WaitForShutdown()
		why := lg.lastFatal()
		if why == "" {
			why = fmt.Sprintf("not ready within %v", readyTimeout)
		}
		return fmt.Errorf("cluster: the embedded NATS server (listen %q, cluster_listen %q) cannot start: %s",
			n.cfg.Embedded.Listen, n.cfg.Embedded.ClusterListen, why)
	}
	n.srv = s
	n.log.Info("embedded NATS server ready", "listen", n.cfg.Embedded.Listen, "cluster_listen", n.cfg.Embedded.ClusterListen,
		"routes", n.cfg.Embedded.Routes, "store_dir", n.cfg.Embedded.StoreDir)
	return nil
}

// StopServer shuts the embedded server down while the node lives on: its
// connection is lost (the rooms carry on locally) and comes back after
// StartServer. What an outage of this node's NATS looks like.
func (n *Node) StopServer() { n.stopServer() }

func (n *Node) stopServer() {
	n.srvMu.Lock()
	s := n.srv
	n.srv = nil
	n.srvMu.Unlock()
	if s == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		s.Shutdown()
		s.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(serverStop):
		n.log.Warn("the embedded NATS server did not stop in time", "timeout", serverStop)
	}
}

// inProcess gives the connection a pipe to whichever embedded server runs
// now.
type inProcess struct{ n *Node }

func (p inProcess) InProcessConn() (net.Conn, error) {
	p.n.srvMu.Lock()
	s := p.n.srv
	p.n.srvMu.Unlock()
	if s == nil {
		return nil, errors.New("the embedded NATS server is stopped")
	}
	return s.InProcessConn()
}

// serverOptions turns the nats block into the embedded server's options.
func serverOptions(cfg *config.Cluster) (*server.Options, error) {
	e := cfg.Embedded
	o := &server.Options{
		ServerName:             cfg.Node,
		NoSigs:                 true, // superd owns the signals
		JetStream:              true,
		StoreDir:               e.StoreDir,
		DisableJetStreamBanner: true,
		MaxPayload:             server.MAX_PAYLOAD_SIZE,
	}
	if e.Listen == "" {
		o.DontListen = true
	} else {
		host, port, err := splitHostPort(e.Listen)
		if err != nil {
			return nil, fmt.Errorf("cluster: nats.listen: %w", err)
		}
		o.Host, o.Port = host, port
	}
	if e.ClusterListen != "" {
		host, port, err := splitHostPort(e.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("cluster: nats.cluster_listen: %w", err)
		}
		o.Cluster = server.ClusterOpts{Name: "superd", Host: host, Port: port}
		if len(e.Routes) > 0 {
			o.Routes = server.RoutesFromStr(strings.Join(e.Routes, ","))
		}
		if o.DontListen {
			// nats-server starts routing only once its client listener
			// is up: without listen, a random loopback port, not
			// advertised to anyone.
			o.DontListen = false
			o.Host, o.Port = "127.0.0.1", server.RANDOM_PORT
			o.Cluster.NoAdvertise = true
		}
	}
	return o, nil
}

// splitHostPort: port 0 asks for any free port (NATS' -1; its 0 is the
// default port).
func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// redact drops passwords and tokens from URLs for the log.
func redact(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				u = u[:s+3] + "***" + u[at:]
			}
		}
		out[i] = u
	}
	return out
}

// natsLogger is the embedded server's log, through slog.
type natsLogger struct {
	log   *slog.Logger
	mu    sync.Mutex
	fatal string
}

func (l *natsLogger) Noticef(format string, v ...any) { l.log.Info(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Tracef(format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...), "trace", true)
}

// Fatalf logs at error level: the server stops what it was doing, superd
// decides what follows (StartServer reports it).
func (l *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	l.fatal = msg
	l.mu.Unlock()
	l.log.Error(msg, "fatal", true)
}

func (l *natsLogger) lastFatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}
