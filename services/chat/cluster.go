package chat

// A room across nodes (cluster = true; SPEC section 13).
//
// Lines. Every line a local user sends is delivered to the local users
// first (as on one node), then handed to a bounded queue that one
// goroutine publishes, in order, on the node's NATS connection, to
//
//	superd.chat.SERVICE.NODE    (SERVICE and NODE escaped by cluster.Token)
//
// The message is the line exactly as users receive it ("<bob> hi\r\n").
// Every node subscribes to superd.chat.SERVICE.* and writes what it
// receives to its own named users. The node's connection has no echo, so
// a node never delivers its own lines twice; NATS keeps the order of one
// connection's messages, so each sender's lines arrive everywhere in the
// order sent. A line that finds the queue full, or NATS unreachable, is
// dropped and counted (superd_chat_remote_lines_dropped_total, which also
// counts lines NATS dropped on their way in): nothing waits, nothing
// piles up. NATS unreachable includes an embedded server that reaches no
// other node (cluster.Node.Connected), whose connection is up but whose
// lines would reach nobody. Local delivery never depends on NATS.
//
// Names. A name is unique across the room: taken by a local user, or
// claimed in the names bucket (cluster.NamesBucket, key SERVICE.NAME) by
// any node. The claim is a JetStream create, atomic across the cluster,
// made on the user's own connection goroutine (about a millisecond; at
// most claimTimeout): until it answers, that user's later lines wait,
// which keeps the seed's "name, then lines" order. The key carries a TTL
// just under name_ttl, refreshed by this node every name_ttl/3, so a node
// that dies frees its names within name_ttl. A user who leaves frees the name
// at once (the key is purged in the background; if the same name is
// chosen here again before that, the claim takes the key over). When the
// bucket cannot be reached, a new name gets "Name service unavailable,
// try again." and users already named carry on. A claim whose answer
// never came may have been made all the same: each room instance writes
// its own holder mark as the key's value, so a user here choosing the
// name again is given it (cluster.Node.ClaimName), and otherwise the
// keeper frees it (cluster.Node.ReleaseHeldBy) rather than leave the name
// taken by nobody until name_ttl.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/superd-dev/superd/cluster"
	"github.com/superd-dev/superd/framework"
)

const (
	// outQueue and outQueueBytes bound the lines waiting to be published,
	// per room: in number, and in bytes (at the largest max_line_length
	// the number alone would let 4096 lines of a gigabyte wait).
	outQueue      = 4096
	outQueueBytes = 8 << 20
	// claimTimeout bounds one name claim (the user waits for it).
	claimTimeout = 2 * time.Second
	// releaseTimeout bounds one release; stopTimeout the releases left
	// when the room stops.
	releaseTimeout = 2 * time.Second
	stopTimeout    = 3 * time.Second
	// refreshWorkers refresh held names at once (each a JetStream
	// round trip): 10,000 users' names take about a second.
	refreshWorkers = 16
	// subjectPrefix starts the subject of every room.
	subjectPrefix = "superd.chat."
)

// remoteCounters are a room's series of the remote families.
type remoteCounters struct {
	sent, received, dropped prometheus.Counter
}

// newRemoteCounters registers the remote families through reg.
func newRemoteCounters(reg prometheus.Registerer) (remoteCounters, error) {
	lines, err := framework.RegisterCollector(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "superd_chat_remote_lines_total",
		Help: "Chat lines exchanged with other nodes of the cluster: sent (published to NATS) and received (delivered here).",
	}, []string{"direction"}))
	if err != nil {
		return remoteCounters{}, err
	}
	dropped, err := framework.RegisterCollector(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "superd_chat_remote_lines_dropped_total",
		Help: "Chat lines that could not be exchanged with other nodes (NATS unreachable, queue full, or dropped by NATS on the way in).",
	}))
	if err != nil {
		return remoteCounters{}, err
	}
	return remoteCounters{
		sent:     lines.WithLabelValues("sent"),
		received: lines.WithLabelValues("received"),
		dropped:  dropped,
	}, nil
}

type claimResult int

const (
	claimOK claimResult = iota
	claimTaken
	claimUnavailable
)

// remote is the cluster side of one room, from StartFactory to
// StopFactory.
type remote struct {
	r       *Room
	node    *cluster.Node
	nc      *nats.Conn
	subject string // this node's
	holder  string // the value of the keys of the names claimed here
	sub     *nats.Subscription
	c       remoteCounters

	out    chan []byte
	queued atomic.Int64 // bytes in out
	// warnedTooLong is set once a line too long for NATS was logged.
	warnedTooLong atomic.Bool
	quit          chan struct{} // closed by stop
	wake          chan struct{} // a release to make
	pubDone       chan struct{}
	wg            sync.WaitGroup

	mu        sync.Mutex
	held      map[string]uint64   // name -> revision of its key, held by a user here
	releasing map[string]released // names left, key not purged yet
	// claiming holds the names being claimed here (false) or freed by
	// the keeper after an unanswered claim (true), one at a time each.
	claiming map[string]bool
	// unanswered holds, from when, the names whose claim went
	// unanswered: perhaps made, perhaps not, and if made, nobody's.
	unanswered map[string]time.Time
	subDrops   uint64 // what the subscription had dropped, last looked
}

type released struct {
	rev uint64
	at  time.Time
}

func startRemote(r *Room) (*remote, error) {
	n := r.node
	svc := cluster.Token(r.service)
	x := &remote{
		r:       r,
		node:    n,
		nc:      n.Conn(),
		subject: subjectPrefix + svc + "." + cluster.Token(n.Name()),
		// Unique to this instance of the room: another instance on this
		// node (a reload's) holds its own names.
		holder:     fmt.Sprintf("%s %016x", n.Name(), rand.Uint64()),
		c:          r.counters,
		out:        make(chan []byte, outQueue),
		quit:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		pubDone:    make(chan struct{}),
		held:       map[string]uint64{},
		releasing:  map[string]released{},
		claiming:   map[string]bool{},
		unanswered: map[string]time.Time{},
	}
	sub, err := x.nc.Subscribe(subjectPrefix+svc+".*", x.deliver)
	if err != nil {
		return nil, err
	}
	x.sub = sub
	x.wg.Add(1)
	go x.publisher()
	x.wg.Add(1)
	go x.keeper()
	return x, nil
}

// keyTTL is the TTL of a name's key: name_ttl less a second (JetStream
// counts TTLs in whole seconds and expires keys a little after), at least
// one second, so the names of a node that died are free within name_ttl.
func (x *remote) keyTTL() time.Duration {
	return max(time.Second, x.r.nameTTL-time.Second)
}

// refreshEvery is how often held names are written again: a third of
// name_ttl, and at least twice within the key's TTL.
func (x *remote) refreshEvery() time.Duration {
	return min(x.r.nameTTL/3, x.keyTTL()/2)
}

// key is the name's key in the names bucket.
func (x *remote) key(name string) string {
	return cluster.Token(x.r.service) + "." + cluster.Token(name)
}

// deliver writes a line from another node to every local named user (on
// the subscription's goroutine, one message at a time: in order).
func (x *remote) deliver(m *nats.Msg) {
	if !wellFormed(m.Data) { // not from a superd: dropped
		x.c.dropped.Inc()
		return
	}
	x.c.received.Inc()
	x.r.broadcast(nil, m.Data)
}

// wellFormed: one "<NAME> LINE\r\n", as a node publishes.
func wellFormed(b []byte) bool {
	n := len(b)
	return n >= 6 && b[0] == '<' && b[n-2] == '\r' && b[n-1] == '\n' && bytes.Contains(b[:min(n, MaxNameLength+3)], []byte("> "))
}

// publish queues a copy of line for the other nodes, or counts it dropped.
func (x *remote) publish(line []byte) {
	if !x.node.Connected() { // NATS away, or an embedded server that reaches no other node
		x.c.dropped.Inc()
		return
	}
	n := int64(len(line))
	if most := x.nc.MaxPayload(); n > most {
		// NATS would refuse it (max_payload, 1 MB unless the servers say
		// otherwise): say so once, rather than only counting.
		x.c.dropped.Inc()
		if !x.warnedTooLong.Swap(true) {
			x.r.log.Warn("a chat line is longer than the largest message NATS carries: lines this long reach this node's users only, and are counted in superd_chat_remote_lines_dropped_total (not logged again); set max_line_length to at most max_payload",
				"bytes", n, "max_payload", most)
		}
		return
	}
	if x.queued.Add(n) > outQueueBytes {
		x.queued.Add(-n)
		x.c.dropped.Inc()
		return
	}
	b := make([]byte, len(line))
	copy(b, line)
	select {
	case x.out <- b:
	default:
		x.queued.Add(-n)
		x.c.dropped.Inc()
	}
}

// publisher sends the queued lines in order, until stop; then what is
// left.
func (x *remote) publisher() {
	defer x.wg.Done()
	send := func(b []byte) {
		x.queued.Add(-int64(len(b)))
		if !x.node.Connected() {
			x.c.dropped.Inc()
			return
		}
		if err := x.nc.Publish(x.subject, b); err != nil {
			x.c.dropped.Inc()
			return
		}
		x.c.sent.Inc()
	}
	for {
		select {
		case b := <-x.out:
			send(b)
		case <-x.quit:
			for {
				select {
				case b := <-x.out:
					send(b)
				default:
					return
				}
			}
		}
	}
}

// claim claims name in the cluster for a user of this room.
func (x *remote) claim(name string) claimResult {
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	defer cancel()
	key := x.key(name)
	x.mu.Lock()
	if _, ours := x.held[name]; ours {
		// Claimed by a user here who is not registered yet (chooseName
		// between claim and register): the key holds this room's mark,
		// which ClaimName would give back, and the first user's release
		// of it after losing register would purge the other's name.
		x.mu.Unlock()
		return claimTaken
	}
	if freeing, busy := x.claiming[name]; busy {
		x.mu.Unlock()
		if freeing { // an unanswered claim of it being freed: soon free
			return claimUnavailable
		}
		return claimTaken // another user here is claiming it
	}
	x.claiming[name] = false
	defer func() {
		x.mu.Lock()
		delete(x.claiming, name)
		x.mu.Unlock()
	}()
	delete(x.unanswered, name) // ours again if it was made: ClaimName says
	old, wasReleasing := x.releasing[name]
	delete(x.releasing, name)
	x.mu.Unlock()
	var rev uint64
	var err error
	if wasReleasing {
		// Left here a moment ago, its key not purged yet: take it over
		// (or claim it afresh if it is gone).
		rev, err = x.node.RefreshName(ctx, key, x.holder, old.rev, x.keyTTL())
		if errors.Is(err, cluster.ErrNameLost) {
			err = cluster.ErrNameTaken
		}
	} else {
		rev, err = x.node.ClaimName(ctx, key, x.holder, x.keyTTL())
	}
	if testHookClaimAnswered != nil {
		testHookClaimAnswered(name, &err)
	}
	switch {
	case err == nil:
		x.mu.Lock()
		x.held[name] = rev
		x.mu.Unlock()
		return claimOK
	case errors.Is(err, cluster.ErrNameTaken):
		return claimTaken
	default:
		x.mu.Lock()
		if wasReleasing { // still ours to release
			if _, again := x.releasing[name]; !again {
				x.releasing[name] = old
			}
		}
		// Made perhaps, at a revision nobody here knows (a takeover too:
		// the release of old.rev would then find the key moved on and
		// leave it): freed by the holder mark.
		x.unanswered[name] = time.Now()
		x.mu.Unlock()
		x.r.log.Debug("name claim undecided", "name", name, "err", err)
		return claimUnavailable
	}
}

// testHookClaimAnswered, when set by a test, runs in claim once the
// cluster has answered, before the answer is recorded; it may replace the
// answer (with a lost one).
var testHookClaimAnswered func(name string, err *error)

// release frees a name a user of this room held (in the background).
func (x *remote) release(name string) {
	x.mu.Lock()
	rev, ok := x.held[name]
	delete(x.held, name)
	if ok {
		x.releasing[name] = released{rev: rev, at: time.Now()}
	}
	x.mu.Unlock()
	if ok {
		select {
		case x.wake <- struct{}{}:
		default:
		}
	}
}

// keeper refreshes the held names every name_ttl/3, releases the names of
// users who left, and counts what NATS dropped on the way in.
func (x *remote) keeper() {
	defer x.wg.Done()
	tick := time.NewTicker(x.refreshEvery())
	defer tick.Stop()
	for {
		select {
		case <-x.quit:
			return
		case <-x.wake:
			x.releaseAll(time.Now().Add(releaseTimeout))
		case <-tick.C:
			x.refreshAll()
			x.releaseAll(time.Now().Add(releaseTimeout))
			x.countSubDrops()
		}
	}
}

// refreshAll refreshes every held name, refreshWorkers at a time, within
// refreshEvery in all; it gives up at the first that cannot be decided
// (NATS away: the next tick tries again).
func (x *remote) refreshAll() {
	ctx, cancel := context.WithTimeout(context.Background(), x.refreshEvery())
	defer cancel()
	type held struct {
		name string
		rev  uint64
	}
	x.mu.Lock()
	names := make([]held, 0, len(x.held))
	for k, v := range x.held {
		names = append(names, held{k, v})
	}
	x.mu.Unlock()
	work := make(chan held)
	var wg sync.WaitGroup
	for range min(refreshWorkers, len(names)) {
		wg.Go(func() {
			for h := range work {
				if ctx.Err() == nil && !x.refresh(ctx, h.name, h.rev) {
					cancel()
				}
			}
		})
	}
feed:
	for _, h := range names {
		select {
		case work <- h:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
}

// testHookRefreshed, when set by a test, runs in refresh once a name's key
// has been written again, before the new revision is recorded.
var testHookRefreshed func(name string)

// refresh refreshes one held name; false when it could not be decided.
func (x *remote) refresh(ctx context.Context, name string, rev uint64) bool {
	nrev, err := x.node.RefreshName(ctx, x.key(name), x.holder, rev, x.keyTTL())
	if err == nil && testHookRefreshed != nil {
		testHookRefreshed(name)
	}
	switch {
	case err == nil:
		x.mu.Lock()
		orphan := false
		if cur, ok := x.held[name]; ok && cur == rev {
			x.held[name] = nrev
		} else if !ok {
			// Left meanwhile: release the new revision. When no release
			// is pending either, a claim of the name here took the release
			// over and lost to this write (the key moved on under it): the
			// key is then this node's and nobody's, so release it too
			// rather than leave the name taken until its TTL.
			// A claim here in flight decides it instead: RefreshName gives
			// a key this room holds back to it, so the revision may be the
			// claim's own, about to be held.
			_, claiming := x.claiming[name]
			if rl, ok := x.releasing[name]; ok && rl.rev == rev {
				x.releasing[name] = released{rev: nrev, at: rl.at}
			} else if !ok && !claiming {
				x.releasing[name] = released{rev: nrev, at: time.Now()}
				orphan = true
			}
		}
		x.mu.Unlock()
		if orphan {
			select {
			case x.wake <- struct{}{}:
			default:
			}
		}
	case errors.Is(err, cluster.ErrNameLost):
		// It expired while this node could not refresh it, and a user
		// elsewhere took it: both keep chatting; it is no longer ours to
		// refresh or release.
		x.r.log.Warn("a name held here was taken on another node while this node could not refresh it", "name", name)
		x.mu.Lock()
		if cur, ok := x.held[name]; ok && cur == rev {
			delete(x.held, name)
		}
		x.mu.Unlock()
	default:
		x.r.log.Debug("name refresh failed; retrying at the next tick", "name", name, "err", err)
		return false
	}
	return true
}

// releaseAll purges the keys of the names left, until deadline; names
// whose key has expired anyway are forgotten.
func (x *remote) releaseAll(deadline time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	x.mu.Lock()
	todo := make(map[string]released, len(x.releasing))
	for k, v := range x.releasing {
		todo[k] = v
	}
	x.mu.Unlock()
	for name, rl := range todo {
		err := x.node.ReleaseName(ctx, x.key(name), rl.rev)
		expired := time.Since(rl.at) > x.r.nameTTL
		if err == nil || expired {
			x.mu.Lock()
			if cur, ok := x.releasing[name]; ok && cur.rev == rl.rev {
				delete(x.releasing, name)
			}
			x.mu.Unlock()
			continue
		}
		x.r.log.Debug("name release failed; retrying", "name", name, "err", err)
		return
	}
	x.freeUnanswered(ctx)
}

// freeUnanswered frees the keys of the unanswered claims that were made
// after all, while nobody here claims the name; names whose key would
// have expired anyway are forgotten.
func (x *remote) freeUnanswered(ctx context.Context) {
	x.mu.Lock()
	todo := make(map[string]time.Time, len(x.unanswered))
	for k, v := range x.unanswered {
		todo[k] = v
	}
	x.mu.Unlock()
	for name, at := range todo {
		x.mu.Lock()
		if _, busy := x.claiming[name]; busy || x.unanswered[name] != at {
			x.mu.Unlock() // being claimed here again, which decides it
			continue
		}
		x.claiming[name] = true
		x.mu.Unlock()
		err := x.node.ReleaseHeldBy(ctx, x.key(name), x.holder)
		x.mu.Lock()
		delete(x.claiming, name)
		if err == nil || time.Since(at) > x.r.nameTTL {
			if x.unanswered[name] == at {
				delete(x.unanswered, name)
			}
		}
		x.mu.Unlock()
		if err != nil {
			x.r.log.Debug("freeing an unanswered name claim failed; retrying", "name", name, "err", err)
			return
		}
	}
}

// countSubDrops adds what NATS dropped for the subscription since the
// last look (a node too slow to take the room's lines) to the drops.
func (x *remote) countSubDrops() {
	d, err := x.sub.Dropped()
	if err != nil || d < 0 {
		return
	}
	x.mu.Lock()
	delta := uint64(d) - x.subDrops
	if uint64(d) < x.subDrops {
		delta = 0
	}
	x.subDrops = uint64(d)
	x.mu.Unlock()
	if delta > 0 {
		x.c.dropped.Add(float64(delta))
	}
}

// stop leaves the room across nodes: no more lines in, the queue
// published, the keys of the names left purged (bounded), then the
// goroutines end.
func (x *remote) stop() {
	x.countSubDrops()
	_ = x.sub.Unsubscribe()
	close(x.quit)
	x.wg.Wait()
	x.releaseAll(time.Now().Add(stopTimeout))
}
