// Package chat implements the chat server of Twisted's "Writing Servers"
// tutorial: users choose a name, then every line a user sends reaches every
// other named user of the same service.
//
// Name: chat. Attributes:
//
//	max_line_length = 16384   a longer line closes that user's connection
//	cluster         = false   true: one room across every node (needs a cluster block)
//	name_ttl        = "30s"   cluster: how long a dead node's names stay taken
//
// Protocol (every line ends with CRLF):
//
//	S: What's your name?
//	C: bob
//	S: Name taken, please choose another.    (if bob is online; no new prompt)
//	S: Welcome, bob!
//	C: hello                                 (others receive "<bob> hello")
//
// Beyond the tutorial: a name that is empty, longer than 64 bytes, not valid
// UTF-8, or holds a control character (C0, DEL or C1) gets
// "Invalid name, please choose another."; with cluster = true, a name
// whose uniqueness cannot be checked (NATS away) gets
// "Name service unavailable, try again."
//
// Broadcast goes through each transport's non-blocking Write, so a user who
// never reads is cut off as slow_consumer (max_pending_output) and never
// slows the room.
//
// Metrics: superd_chat_users{service}, users online (named);
// superd_chat_remote_lines_total{service,direction} and
// superd_chat_remote_lines_dropped_total{service} (see below; 0 unless
// the room spans nodes).
//
//	service "chat" "lobby" {
//	  max_connections = 1000
//	  endpoint "tcp" { address = "127.0.0.1:8123" }
//	}
//
// With cluster = true (and a top-level cluster block) the room spans every
// node of the cluster: see cluster.go. name_ttl (default "30s") is how long
// the names of a node that died stay taken.
package chat

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/superd-dev/superd/cluster"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/basic"
)

// MaxNameLength is the longest name accepted, in bytes.
const MaxNameLength = 64

// The server's lines.
const (
	promptLine  = "What's your name?"
	takenLine   = "Name taken, please choose another."
	invalidLine = "Invalid name, please choose another."
	// unavailableLine: cluster = true and the names bucket cannot be
	// reached, so uniqueness cannot be checked.
	unavailableLine = "Name service unavailable, try again."
)

// DefaultNameTTL is name_ttl's default.
const DefaultNameTTL = 30 * time.Second

func init() {
	framework.Register(framework.Spec{
		Name:        "chat",
		Description: "the chat server of the Writing Servers tutorial: choose a name, then talk to everyone",
		Config:      Config{MaxLineLength: basic.DefaultMaxLineLength, NameTTL: framework.Duration(DefaultNameTTL)},
		New:         framework.Typed(New),
	})
}

// Config is the configuration of a chat service.
type Config struct {
	MaxLineLength int                `hcl:"max_line_length,optional" min:"1" doc:"longest line accepted, in bytes; a longer one closes the connection"`
	Cluster       bool               `hcl:"cluster,optional" doc:"the room spans every node of the cluster (needs a top-level cluster block)"`
	NameTTL       framework.Duration `hcl:"name_ttl,optional" doc:"with cluster = true: how long the names of a node that died stay taken (whole seconds, at least 1s)"`
}

// New builds a chat room from its configuration. Every error is
// reported, each on its attribute (validate shows them all at once).
func New(env *framework.Env, cfg *Config) (framework.Factory, error) {
	var errs []error
	if cfg.Cluster && !env.Cluster {
		errs = append(errs, framework.Errorf(&cfg.Cluster, "cluster = true needs a top-level cluster block (the node and its NATS)"))
	}
	// JetStream's TTLs are whole seconds.
	if ttl := time.Duration(cfg.NameTTL); ttl < time.Second || ttl%time.Second != 0 {
		errs = append(errs, framework.Errorf(&cfg.NameTTL, "must be a whole number of seconds, at least 1s (JetStream's TTLs are in seconds), not %q", ttl.String()))
	}
	if errs != nil {
		return nil, errors.Join(errs...)
	}
	return &Room{
		maxLine:   cfg.MaxLineLength,
		service:   env.Service,
		log:       env.Log,
		metrics:   env.Metrics,
		users:     map[string]*User{},
		clustered: cfg.Cluster,
		nameTTL:   time.Duration(cfg.NameTTL),
	}, nil
}

// Room is the factory: the users of one chat service.
type Room struct {
	maxLine int
	service string
	log     *slog.Logger
	metrics prometheus.Registerer
	online  prometheus.Gauge // set by StartFactory

	// The cluster side (cluster = true): node is the process's node
	// unless a test set it; remote runs from StartFactory to StopFactory.
	clustered bool
	nameTTL   time.Duration
	node      *cluster.Node
	remote    *remote
	counters  remoteCounters

	mu    sync.RWMutex
	users map[string]*User
	order []*User // registration order, for delivery order
}

// BuildProtocol implements framework.Factory.
func (r *Room) BuildProtocol(net.Addr) framework.Protocol {
	return &User{room: r}
}

// StartFactory registers the users gauge (at 0 for a new service). A
// reload that replaces the service shares it with the old instance, whose
// users leave one by one, so it is never reset here.
//
// It also registers the remote-line counters (at 0, whether or not the
// room spans nodes) and, with cluster = true, joins the room across nodes.
func (r *Room) StartFactory() error {
	online, err := framework.RegisterCollector(r.metrics, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "superd_chat_users",
		Help: "Chat users online (who have chosen a name).",
	}))
	if err != nil {
		return err
	}
	r.online = online
	if r.counters.sent == nil { // tests may set their own
		if r.counters, err = newRemoteCounters(r.metrics); err != nil {
			return err
		}
	}
	if !r.clustered {
		return nil
	}
	if r.node == nil {
		r.node = cluster.Default()
	}
	if r.node == nil {
		return errors.New("cluster = true, but superd runs no cluster (the file has no cluster block)")
	}
	x, err := startRemote(r)
	if err != nil {
		return err
	}
	r.remote = x
	return nil
}

// StopFactory leaves the room across nodes (the names its users held are
// released as they left; what is left is released now).
func (r *Room) StopFactory() error {
	if r.remote != nil {
		r.remote.stop()
	}
	return nil
}

// has reports whether a user of this room holds name.
func (r *Room) has(name string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.users[name]
	return ok
}

// register claims name for u and welcomes it; false if taken. The
// welcome is written under the lock every broadcast takes, so no other
// user's line reaches u before it (the seed's transcript).
func (r *Room) register(name string, u *User) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, taken := r.users[name]; taken {
		return false
	}
	r.users[name] = u
	r.order = append(r.order, u)
	r.online.Inc()
	u.name, u.named = name, true
	u.sendLine("Welcome, " + name + "!")
	return true
}

func (r *Room) unregister(u *User) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.users[u.name] != u {
		return
	}
	if r.remote != nil {
		r.remote.release(u.name)
	}
	delete(r.users, u.name)
	for i, o := range r.order {
		if o == u {
			r.order = append(r.order[:i], r.order[i+1:]...)
			break
		}
	}
	r.online.Dec()
}

// broadcast sends msg (a whole line, CRLF included) to every named user
// but from (nil: to every one, for lines from other nodes). Writes never
// block, so holding the read lock is cheap.
func (r *Room) broadcast(from *User, msg []byte) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, u := range r.order {
		if u != from {
			u.Transport.Write(msg)
		}
	}
}

// User is the protocol of one connection: a line receiver with two states,
// choosing a name, then chatting.
type User struct {
	basic.LineReceiver
	room  *Room
	name  string // "" until registered
	named bool
	msg   []byte // reused buffer for "<name> line\r\n"
}

// ConnectionMade asks for a name.
func (u *User) ConnectionMade(t framework.Transport) {
	u.MaxLength = u.room.maxLine
	u.Init(t, u)
	u.sendLine(promptLine)
}

// ConnectionLost frees the user's name.
func (u *User) ConnectionLost(reason error) {
	if u.named {
		u.room.unregister(u)
	}
}

// LineReceived handles a name candidate, then chat lines.
func (u *User) LineReceived(line []byte) {
	if !u.named {
		u.chooseName(line)
		return
	}
	u.msg = append(u.msg[:0], '<')
	u.msg = append(u.msg, u.name...)
	u.msg = append(u.msg, "> "...)
	u.msg = append(u.msg, line...)
	u.msg = append(u.msg, "\r\n"...)
	u.room.broadcast(u, u.msg)
	if u.room.remote != nil {
		u.room.remote.publish(u.msg)
	}
}

func (u *User) chooseName(line []byte) {
	if !validName(line) {
		u.sendLine(invalidLine)
		return
	}
	name := string(line)
	if x := u.room.remote; x != nil {
		// Across nodes: taken here, or claimed in the cluster first.
		if u.room.has(name) {
			u.sendLine(takenLine)
			return
		}
		switch x.claim(name) {
		case claimTaken:
			u.sendLine(takenLine)
			return
		case claimUnavailable:
			u.sendLine(unavailableLine)
			return
		}
		if testHookClaimed != nil {
			testHookClaimed(u)
		}
	}
	if !u.room.register(name, u) {
		if x := u.room.remote; x != nil {
			x.release(name) // a local race lost after a claim: give it back
		}
		u.sendLine(takenLine)
		return
	}
	if testHookRegistered != nil {
		testHookRegistered(u)
	}
}

// testHookClaimed, when set by a test, runs in chooseName once the name
// is claimed across nodes, before it is registered.
var testHookClaimed func(u *User)

// testHookRegistered, when set by a test, runs in chooseName once the user
// is registered (so other users' lines reach it).
var testHookRegistered func(u *User)

// Blocks implements framework.Blocker: a user of a room across nodes
// choosing a name waits for the cluster's answer (up to claimTimeout)
// inside LineReceived, so until it has one its lines are delivered on its
// own goroutine, never by the loop that serves everyone else on one CPU.
func (u *User) Blocks() bool { return !u.named && u.room.remote != nil }

func (u *User) sendLine(s string) { u.Transport.WriteString(s + "\r\n") }

// validName: non-empty, at most MaxNameLength bytes, valid UTF-8, and no
// control character (C0, DEL or C1).
func validName(b []byte) bool {
	if len(b) == 0 || len(b) > MaxNameLength || !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if unicode.IsControl(r) { // C0, DEL and C1 exactly
			return false
		}
	}
	return true
}

// Interface guards.
var (
	_ framework.Factory        = (*Room)(nil)
	_ framework.FactoryStarter = (*Room)(nil)
	_ framework.FactoryStopper = (*Room)(nil)
	_ framework.Protocol       = (*User)(nil)
	_ framework.Blocker        = (*User)(nil)
)
