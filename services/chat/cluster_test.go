package chat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/superd-dev/superd/cluster"
	"github.com/superd-dev/superd/cluster/clustertest"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

// These tests run rooms on three nodes of a real NATS cluster on loopback
// (each node an embedded NATS server routed to the others), in this
// process; the users are fake transports. cmd/superd's cluster tests do
// the same with three superd processes.

// clusterBlock is the cluster block of the configurations of these tests.
const clusterBlock = "cluster {\n  node = \"n\"\n}\n"

// newClusterRoom starts a room of service on node (cluster = true).
func newClusterRoom(t *testing.T, node *cluster.Node, service, body string) *room {
	t.Helper()
	svc, err := servicetest.Block{Before: clusterBlock, Factory: "chat", Name: service, Body: "  cluster = true\n" + body}.Service(t)
	if err != nil {
		t.Fatal(err)
	}
	fac, err := servicetest.Build(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := fac.(*Room)
	r.node = node
	// Counters of this node alone (the process-wide series are shared by
	// the three nodes' rooms of one service here).
	mk := func(n string) prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: n}) }
	r.counters = remoteCounters{sent: mk("sent"), received: mk("received"), dropped: mk("dropped")}
	if err := r.StartFactory(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.StopFactory() })
	return &room{t: t, r: r, rec: &recorder{}}
}

// eventually polls f until it returns nil (see clustertest.Eventually).
func eventually(t *testing.T, limit time.Duration, f func() error) {
	t.Helper()
	clustertest.Eventually(t, limit, f)
}

// waitFor polls until c has received want (everything it was sent since
// the last take), then takes it.
func waitFor(t *testing.T, c *client, want string) {
	t.Helper()
	var got string
	eventually(t, 10*time.Second, func() error {
		got = string(c.t.Written())
		if len(got) < len(want) {
			return fmt.Errorf("%s got %q so far, want %q", c.id, got, want)
		}
		return nil
	})
	if got = c.t.Take(); got != want {
		t.Fatalf("%s got %q, want %q", c.id, got, want)
	}
}

// joinAnywhere connects to rm and chooses name, retrying while the name
// service is unavailable (JetStream electing a leader) or the name is
// still held (a release in flight), until limit.
func joinAnywhere(t *testing.T, rm *room, id, name string, limit time.Duration) *client {
	t.Helper()
	c := rm.connect(id)
	eventually(t, limit, func() error {
		c.send(name + "\r\n")
		switch got := c.t.Take(); got {
		case "Welcome, " + name + "!\r\n":
			return nil
		case unavailableLine + "\r\n", takenLine + "\r\n":
			return fmt.Errorf("%s naming itself %q: %q", id, name, got)
		default:
			t.Fatalf("%s naming itself %q: %q", id, name, got)
			return nil
		}
	})
	return c
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestWellFormed(t *testing.T) {
	for in, want := range map[string]bool{
		"<a> \r\n":         true,
		"<bob> hello\r\n":  true,
		"<bob> a\r\nb\r\n": true, // one line may hold a bare LF, never CRLF: a node never sends this, but it is harmless
		"<" + strings.Repeat("n", 64) + "> x\r\n": true,
		"<" + strings.Repeat("n", 65) + "> x\r\n": false,
		"bob> hello\r\n": false,
		"<bob> hello\n":  false,
		"<bob>hello\r\n": false,
		"":               false,
	} {
		if got := wellFormed([]byte(in)); got != want {
			t.Errorf("wellFormed(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestClusterConfig(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		wantErr    []string
		ttl        time.Duration
	}{
		{name: "default ttl", body: "  cluster = true", ttl: DefaultNameTTL},
		{name: "ttl", body: "  cluster = true\n  name_ttl = \"5s\"", ttl: 5 * time.Second},
		{name: "ttl in minutes", body: "  cluster = true\n  name_ttl = \"2m\"", ttl: 2 * time.Minute},
		{name: "ttl without cluster", body: "  name_ttl = \"10s\"", ttl: 10 * time.Second},
		{name: "sub-second ttl", body: "  cluster = true\n  name_ttl = \"500ms\"",
			wantErr: []string{"superd.hcl:6,", `Invalid value for "name_ttl"`, "whole number of seconds"}},
		{name: "fractional ttl", body: "  cluster = true\n  name_ttl = \"1.5s\"",
			wantErr: []string{"superd.hcl:6,", `Invalid value for "name_ttl"`}},
		{name: "bad ttl", body: "  cluster = true\n  name_ttl = \"soon\"",
			wantErr: []string{"superd.hcl:6,", `Invalid value for "name_ttl"`, "not a duration"}},
		{name: "cluster not a bool", body: "  cluster = \"maybe\"",
			wantErr: []string{"superd.hcl:5,", "cluster"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			svc, err := servicetest.Block{Before: clusterBlock, Factory: "chat", Name: "lobby", Body: tt.body}.Service(t)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatal("no error")
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error lacks %q:\n%s", s, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fac, err := servicetest.Build(svc, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := fac.(*Room).nameTTL; got != tt.ttl {
				t.Fatalf("name_ttl %v, want %v", got, tt.ttl)
			}
		})
	}
	// cluster = true without a cluster block: an error on the attribute.
	_, err := servicetest.Block{Factory: "chat", Name: "lobby", Body: "  cluster = true"}.Service(t)
	var de *config.DiagnosticsError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "superd.hcl:2,") || !strings.Contains(err.Error(), "top-level cluster block") {
		t.Fatalf("cluster = true without a cluster block: %v", err)
	}
	// Both errors at once, each on its attribute.
	_, err = servicetest.Block{Factory: "chat", Name: "lobby", Body: "  cluster = true\n  name_ttl = \"1500ms\""}.Service(t)
	if !errors.As(err, &de) || len(de.Diags) != 2 || !strings.Contains(err.Error(), "superd.hcl:2,") || !strings.Contains(err.Error(), "superd.hcl:3,") {
		t.Fatalf("cluster = true without a cluster block and a fractional name_ttl: want two diagnostics, got %v", err)
	}
}

// TestClusterStartWithoutNode: cluster = true needs the process's node.
func TestClusterStartWithoutNode(t *testing.T) {
	svc, err := servicetest.Block{Before: clusterBlock, Factory: "chat", Name: "lobby", Body: "  cluster = true"}.Service(t)
	if err != nil {
		t.Fatal(err)
	}
	fac, err := servicetest.Build(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fac.(*Room).StartFactory(); err == nil || !strings.Contains(err.Error(), "no cluster") {
		t.Fatalf("StartFactory without a node: %v", err)
	}
}

// TestClusterRoom: the seed's transcript across three nodes, names unique
// across them, and three senders' lines everywhere once and in order.
func TestClusterRoom(t *testing.T) {
	nodes := clustertest.Start(t, 3)
	clustertest.WaitNames(t, nodes, 30*time.Second)
	rooms := make([]*room, 3)
	for i, nd := range nodes {
		rooms[i] = newClusterRoom(t, nd, "lobby", "  name_ttl = \"10s\"")
	}
	other := newClusterRoom(t, nodes[2], "other", "") // another room on the same cluster
	a, b, c := rooms[0], rooms[1], rooms[2]

	alice := joinAnywhere(t, a, "A1", "alice", 20*time.Second)
	// Taken on node A: refused on node C, with the seed's message and no
	// new prompt.
	bob := c.connect("C1")
	bob.send("alice\r\n")
	if got := bob.t.Take(); got != "Name taken, please choose another.\r\n" {
		t.Fatalf("alice on C: %q", got)
	}
	bob.send("bob\r\n")
	if got := bob.t.Take(); got != "Welcome, bob!\r\n" {
		t.Fatalf("bob on C: %q", got)
	}
	// The same name in another room is another name.
	oAlice := joinAnywhere(t, other, "O1", "alice", 10*time.Second)
	carol := joinAnywhere(t, b, "B1", "carol", 10*time.Second)

	// Interest travels over the routes: wait until a line from each node
	// reaches the others before checking transcripts byte for byte.
	eventually(t, 10*time.Second, func() error {
		for i, x := range []*remote{a.r.remote, b.r.remote, c.r.remote} {
			if !x.nc.IsConnected() {
				return fmt.Errorf("node %d not connected", i)
			}
		}
		return nil
	})
	probe := func(from *client, rest ...*client) {
		t.Helper()
		eventually(t, 10*time.Second, func() error {
			from.send("probe\r\n")
			time.Sleep(50 * time.Millisecond)
			for _, r := range rest {
				if !strings.Contains(r.t.Take(), "probe") {
					return fmt.Errorf("%s did not hear %s's probe", r.id, from.id)
				}
			}
			return nil
		})
		time.Sleep(100 * time.Millisecond) // stray probes
		for _, r := range rest {
			r.t.Take()
		}
	}
	probe(alice, bob, carol)
	probe(bob, alice, carol)
	probe(carol, alice, bob)
	oAlice.t.Take()
	if got := oAlice.t.Take(); got != "" {
		t.Fatalf("the other room heard %q", got)
	}

	// Something on the room's subject that no superd sent is dropped and
	// counted, never shown.
	if err := nodes[0].Conn().Publish("superd.chat.lobby.intruder", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if d := counter(t, c.r.counters.dropped); d != 1 {
			return fmt.Errorf("C dropped %v", d)
		}
		return nil
	})

	bob.send("hello\r\n")
	waitFor(t, alice, "<bob> hello\r\n")
	waitFor(t, carol, "<bob> hello\r\n")
	alice.send("hi bob\r\n")
	waitFor(t, bob, "<alice> hi bob\r\n")
	waitFor(t, carol, "<alice> hi bob\r\n")
	// Several lines in one chunk, including the name: the lines wait for
	// the claim, then go everywhere in order.
	k := c.connect("C2")
	k.send("k\r\nafter\r\nand more\r\n")
	waitFor(t, k, "Welcome, k!\r\n")
	for _, u := range []*client{alice, bob, carol} {
		waitFor(t, u, "<k> after\r\n<k> and more\r\n")
	}

	// A user who leaves frees the name for every node.
	alice.leave()
	alice2 := joinAnywhere(t, c, "C3", "alice", 10*time.Second)
	// And on its own node, at once (the claim takes the key over).
	carol.leave()
	c2 := b.connect("B2")
	c2.send("carol\r\n")
	if got := c2.t.Take(); got != "Welcome, carol!\r\n" {
		t.Fatalf("carol again on B right after leaving: %q", got)
	}
	// Racing for one name from the three nodes: one wins.
	var wg sync.WaitGroup
	racers := make([]*client, 9)
	for i := range racers {
		racers[i] = rooms[i%3].connect(fmt.Sprintf("R%d", i))
	}
	for _, r := range racers {
		wg.Go(func() { r.send("same\r\n") })
	}
	wg.Wait()
	won := 0
	for _, r := range racers {
		switch got := r.t.Take(); got {
		case "Welcome, same!\r\n":
			won++
		case "Name taken, please choose another.\r\n":
		default:
			t.Fatalf("%s: %q", r.id, got)
		}
	}
	if won != 1 {
		t.Fatalf("%d users got the name, want 1", won)
	}
	for _, r := range racers {
		r.leave()
	}

	// Three senders, one per node, 200 lines each; two more listeners per
	// node: every user hears every other sender's lines once, in order.
	for _, u := range []*client{bob, k, alice2, c2, oAlice} {
		u.leave()
	}
	const lines = 200
	senders := []*client{
		joinAnywhere(t, a, "S0", "s0", 10*time.Second),
		joinAnywhere(t, b, "S1", "s1", 10*time.Second),
		joinAnywhere(t, c, "S2", "s2", 10*time.Second),
	}
	var listeners []*client
	for i := range 6 {
		listeners = append(listeners, joinAnywhere(t, rooms[i%3], fmt.Sprintf("L%d", i), fmt.Sprintf("l%d", i), 10*time.Second))
	}
	for s, sc := range senders {
		wg.Go(func() {
			for j := range lines {
				sc.send(fmt.Sprintf("m %d %d\r\n", s, j))
			}
		})
	}
	wg.Wait()
	check := func(u *client, skip int) error {
		out := string(u.t.Written())
		next := make([]int, len(senders))
		for line := range strings.SplitSeq(strings.TrimSuffix(out, "\r\n"), "\r\n") {
			if line == "" {
				continue
			}
			var s, j int
			if _, err := fmt.Sscanf(line, "<s%d> m %d %d", new(int), &s, &j); err != nil {
				return fmt.Errorf("%s: bad line %q", u.id, line)
			}
			if s == skip || j != next[s] {
				return fmt.Errorf("%s: from s%d got line %d, want %d (lost, repeated, reordered or echoed)", u.id, s, j, next[s])
			}
			next[s]++
		}
		for s, n := range next {
			if s != skip && n != lines {
				return fmt.Errorf("%s: %d lines from s%d so far", u.id, n, s)
			}
		}
		return nil
	}
	eventually(t, 20*time.Second, func() error {
		for i, u := range senders {
			if err := check(u, i); err != nil {
				return err
			}
		}
		for _, u := range listeners {
			if err := check(u, -1); err != nil {
				return err
			}
		}
		return nil
	})
	// Each node sent its sender's lines and received the two others'.
	for i, rm := range rooms {
		if s := counter(t, rm.r.counters.sent); s < lines {
			t.Errorf("node %d sent %v lines, want at least %d", i, s, lines)
		}
		if d := counter(t, rm.r.counters.dropped); d != 0 && !(i > 0 && d == 1) { // the intruder's message
			t.Errorf("node %d dropped %v lines", i, d)
		}
	}
	for _, u := range append(senders, listeners...) {
		u.leave()
	}
	eventually(t, 10*time.Second, func() error {
		for _, rm := range rooms {
			if rm.users() != 0 {
				return fmt.Errorf("%v users", rm.users())
			}
		}
		return nil
	})

	// A name held longer than its TTL stays held: its node refreshes it
	// (name_ttl 2s: the key lives 1s, refreshed every 0.5s).
	short := []*room{newClusterRoom(t, nodes[0], "short", "  name_ttl = \"2s\""), newClusterRoom(t, nodes[2], "short", "  name_ttl = \"2s\"")}
	holder := joinAnywhere(t, short[0], "H1", "holder", 10*time.Second)
	tries := short[1].connect("T1")
	for until := time.Now().Add(3 * time.Second); time.Now().Before(until); {
		tries.send("holder\r\n")
		if got := tries.t.Take(); got != takenLine+"\r\n" {
			t.Fatalf("a name held on A, on C: %q", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	holder.leave()
	joinAnywhere(t, short[1], "T2", "holder", 10*time.Second).leave()
	tries.leave()
}

// TestClusterOutage: node B's NATS server stops (what B's NATS being cut
// off looks like) and starts again. Meanwhile B's room works locally and A
// and C carry on; B's lines are dropped and counted; new names on B get
// "Name service unavailable"; B's names are free on A within name_ttl.
// Once B's server is back, delivery across nodes resumes by itself.
func TestClusterOutage(t *testing.T) {
	nodes := clustertest.Start(t, 3)
	clustertest.WaitNames(t, nodes, 30*time.Second)
	const ttl = 3 * time.Second
	rooms := make([]*room, 3)
	for i, nd := range nodes {
		rooms[i] = newClusterRoom(t, nd, "lobby", fmt.Sprintf("  name_ttl = %q", ttl.String()))
	}
	a, b, c := rooms[0], rooms[1], rooms[2]
	alice := joinAnywhere(t, a, "A1", "alice", 20*time.Second)
	bob := joinAnywhere(t, b, "B1", "bob", 10*time.Second)
	bea := joinAnywhere(t, b, "B2", "bea", 10*time.Second)
	carol := joinAnywhere(t, c, "C1", "carol", 10*time.Second)
	eventually(t, 10*time.Second, func() error {
		bob.send("probe\r\n")
		time.Sleep(50 * time.Millisecond)
		if !strings.Contains(alice.t.Take(), "probe") || !strings.Contains(carol.t.Take(), "probe") {
			return errors.New("bob's probe not heard on A and C")
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond)
	for _, u := range []*client{alice, bob, bea, carol} {
		u.t.Take()
	}

	nodes[1].StopServer()
	cut := time.Now()
	eventually(t, 5*time.Second, func() error {
		if nodes[1].Connected() {
			return errors.New("B still connected")
		}
		return nil
	})
	// B's room carries on locally; its lines are dropped for the others.
	dropped := counter(t, b.r.counters.dropped)
	bob.send("only here\r\n")
	waitFor(t, bea, "<bob> only here\r\n")
	if d := counter(t, b.r.counters.dropped); d != dropped+1 {
		t.Fatalf("dropped %v, want %v", d, dropped+1)
	}
	// A and C carry on between them.
	alice.send("A and C\r\n")
	waitFor(t, carol, "<alice> A and C\r\n")
	// No new name on B.
	nb := b.connect("B3")
	nb.send("newbie\r\n")
	if got := nb.t.Take(); got != "Name service unavailable, try again.\r\n" {
		t.Fatalf("a new name on B while cut off: %q", got)
	}
	// B's names are still taken right after the cut, and free on A within
	// name_ttl (plus JetStream electing a new leader for the bucket if B
	// led it: then the answer is "unavailable" meanwhile).
	x := a.connect("A2")
	x.send("bob\r\n")
	if got := x.t.Take(); got != takenLine+"\r\n" && got != unavailableLine+"\r\n" {
		t.Fatalf("bob on A right after B was cut off: %q", got)
	}
	eventually(t, ttl+10*time.Second, func() error {
		x.send("bob\r\n")
		if got := x.t.Take(); got != "Welcome, bob!\r\n" {
			return fmt.Errorf("bob on A: %q", got)
		}
		return nil
	})
	t.Logf("bob's name free on A %v after B was cut off (name_ttl %v)", time.Since(cut), ttl)
	if got := alice.t.Take() + carol.t.Take(); got != "" {
		t.Fatalf("A and C heard %q from cut-off B", got)
	}

	if err := nodes[1].StartServer(); err != nil {
		t.Fatal(err)
	}
	// Remote delivery resumes, both ways, by itself.
	eventually(t, 20*time.Second, func() error {
		bea.send("back\r\n")
		time.Sleep(50 * time.Millisecond)
		if !strings.Contains(alice.t.Take(), "<bea> back") || !strings.Contains(carol.t.Take(), "<bea> back") {
			return errors.New("bea not heard on A and C yet")
		}
		return nil
	})
	eventually(t, 10*time.Second, func() error {
		carol.send("hello B\r\n")
		time.Sleep(50 * time.Millisecond)
		if !strings.Contains(bea.t.Take(), "<carol> hello B") {
			return errors.New("carol not heard on B yet")
		}
		return nil
	})
	// New names on B again.
	joinAnywhere(t, b, "B4", "newbie", 20*time.Second)
	for _, u := range []*client{alice, bob, bea, carol, nb, x} {
		u.leave()
	}
	if counter(t, b.r.counters.received) == 0 || counter(t, a.r.counters.received) == 0 {
		t.Fatal("received counters did not count")
	}
}

// TestRefreshRacingReclaimFreesName: a name is refreshed while its user
// leaves and the name is chosen again here at once. The reclaim loses the
// race (the key moved on under it), but the key the refresh wrote must not
// stay held by nobody until name_ttl: the name is free again at once.
func TestRefreshRacingReclaimFreesName(t *testing.T) {
	nodes, rm, x := oneNodeRoom(t)
	bob := joinAnywhere(t, rm, "U1", "bob", 20*time.Second)
	rev := heldRevision(t, x, "bob")

	var reclaimed claimResult
	testHookRefreshed = func(name string) {
		bob.leave()                // the user leaves as the refresh lands...
		reclaimed = x.claim("bob") // ...and the name is chosen again here
	}
	t.Cleanup(func() { testHookRefreshed = nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !x.refresh(ctx, "bob", rev) {
		t.Fatal("refresh undecided")
	}
	testHookRefreshed = nil
	if reclaimed == claimOK {
		// The reclaim was given the key the refresh wrote (it holds this
		// room's mark): it must stay held, not be released as nobody's.
		stillHeld(t, nodes[0], x, "bob", "bob, reclaimed here, claimed by another room")
		return
	}
	// The name must be free again well within name_ttl (60s).
	eventually(t, 5*time.Second, func() error {
		if got := x.claim("bob"); got != claimOK {
			return fmt.Errorf("claiming bob again: %v (the key is held by nobody)", got)
		}
		return nil
	})
}

// TestNamingAcrossNodesBlocks: a user of a room across nodes who has no
// name yet says its callbacks may block (the name claim waits for the
// cluster), so superd's event loop leaves it to its own goroutine; once
// named, or in a room of one node, it does not.
func TestNamingAcrossNodesBlocks(t *testing.T) {
	blocks := func(c *client) bool { return c.p.(framework.Blocker).Blocks() }
	local := newRoom(t, "local", "")
	if u := local.connect("L"); blocks(u) {
		t.Error("a user choosing a name in a room of one node blocks")
	}
	nodes := clustertest.Start(t, 1)
	clustertest.WaitNames(t, nodes, 30*time.Second)
	rm := newClusterRoom(t, nodes[0], "lobby", "")
	u := rm.connect("U1")
	if !blocks(u) {
		t.Error("a user choosing a name in a room across nodes does not block")
	}
	u = joinAnywhere(t, rm, "U2", "bob", 20*time.Second)
	if blocks(u) {
		t.Error("a named user of a room across nodes blocks")
	}
}

// TestWelcomeBeforeRemoteLines: a line from another node that arrives the
// moment a name is registered reaches its user after "Welcome, NAME!".
func TestWelcomeBeforeRemoteLines(t *testing.T) {
	nodes := clustertest.Start(t, 1)
	clustertest.WaitNames(t, nodes, 30*time.Second)
	rm := newClusterRoom(t, nodes[0], "lobby", "")
	testHookRegistered = func(*User) {
		rm.r.remote.deliver(&nats.Msg{Data: []byte("<far> hi\r\n")}) // from another node, now
	}
	t.Cleanup(func() { testHookRegistered = nil })
	bob := rm.connect("B1")
	bob.send("bob\r\n")
	if got := bob.t.Take(); got != "Welcome, bob!\r\n<far> hi\r\n" {
		t.Fatalf("bob got %q, want the welcome first", got)
	}
}

// TestClusterCutOffDropsLines: node B's embedded server loses its routes
// (node A's server gone: what a network cut looks like from B). B's own
// connection stays up, but its lines reach nobody: they are dropped and
// counted, not counted as sent; once A is back, delivery resumes.
func TestClusterCutOffDropsLines(t *testing.T) {
	nodes := clustertest.Start(t, 2)
	clustertest.WaitNames(t, nodes, 30*time.Second)
	a := newClusterRoom(t, nodes[0], "lobby", "")
	b := newClusterRoom(t, nodes[1], "lobby", "")
	alice := joinAnywhere(t, a, "A1", "alice", 20*time.Second)
	bob := joinAnywhere(t, b, "B1", "bob", 20*time.Second)
	bea := joinAnywhere(t, b, "B2", "bea", 20*time.Second)
	eventually(t, 10*time.Second, func() error {
		bob.send("probe\r\n")
		time.Sleep(50 * time.Millisecond)
		if !strings.Contains(alice.t.Take(), "probe") {
			return errors.New("bob's probe not heard on A")
		}
		return nil
	})
	bea.t.Take()

	nodes[0].StopServer()
	eventually(t, 10*time.Second, func() error {
		if nodes[1].Connected() {
			return errors.New("B reaches no other node, yet says it is connected")
		}
		return nil
	})
	sent, dropped := counter(t, b.r.counters.sent), counter(t, b.r.counters.dropped)
	bob.send("nobody else hears this\r\n")
	waitFor(t, bea, "<bob> nobody else hears this\r\n")
	eventually(t, 5*time.Second, func() error {
		if s, d := counter(t, b.r.counters.sent), counter(t, b.r.counters.dropped); s != sent || d != dropped+1 {
			return fmt.Errorf("sent %v (was %v), dropped %v (was %v): want the line dropped", s, sent, d, dropped)
		}
		return nil
	})

	if err := nodes[0].StartServer(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		bob.send("back\r\n")
		time.Sleep(50 * time.Millisecond)
		if !strings.Contains(alice.t.Take(), "<bob> back") {
			return errors.New("bob not heard on A yet")
		}
		return nil
	})
	for _, u := range []*client{alice, bob, bea} {
		u.leave()
	}
}

// The lines waiting to be published are bounded in bytes as well as in
// number: with the publisher not keeping up (here not running), long lines
// are queued up to outQueueBytes, and the rest dropped and counted.
func TestOutgoingQueueBoundedInBytes(t *testing.T) {
	node := clustertest.Start(t, 1)[0]
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	x := &remote{node: node, nc: node.Conn(), out: make(chan []byte, outQueue), c: remoteCounters{dropped: dropped}}
	line := []byte("<alice> " + strings.Repeat("x", 64<<10-10) + "\r\n")
	const lines = 200
	for range lines {
		x.publish(line)
	}
	queued := len(x.out)
	if want := outQueueBytes / len(line); queued != want {
		t.Errorf("%d lines of %d bytes queued, want %d (%d bytes at most)", queued, len(line), want, outQueueBytes)
	}
	if got := counter(t, dropped); got != float64(lines-queued) {
		t.Errorf("%v lines counted dropped, want %d", got, lines-queued)
	}
	if q := x.queued.Load(); q != int64(queued*len(line)) {
		t.Errorf("%d bytes counted queued, want %d", q, queued*len(line))
	}
}

// A line longer than NATS's max_payload cannot be published: it is dropped
// and counted, without a copy queued, and said once in the log, so that an
// operator with a max_line_length above it learns why long lines stay on
// one node. A line of max_payload bytes is queued.
func TestOutgoingLineTooLongForNATS(t *testing.T) {
	node := clustertest.Start(t, 1)[0]
	var logged testkit.Buffer
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	x := &remote{
		r:    &Room{log: slog.New(slog.NewTextHandler(&logged, nil))},
		node: node, nc: node.Conn(),
		out: make(chan []byte, outQueue), c: remoteCounters{dropped: dropped},
	}
	most := int(x.nc.MaxPayload())
	if most <= 0 {
		t.Fatalf("max_payload %d", most)
	}
	long := []byte(strings.Repeat("x", most+1))
	x.publish(long)
	x.publish(long)
	if got := counter(t, dropped); got != 2 {
		t.Errorf("%v lines counted dropped, want 2", got)
	}
	if len(x.out) != 0 || x.queued.Load() != 0 {
		t.Errorf("%d lines (%d bytes) queued, want none", len(x.out), x.queued.Load())
	}
	if n := strings.Count(logged.String(), "longer than the largest message NATS carries"); n != 1 {
		t.Errorf("warned %d times, want once; log:\n%s", n, logged.String())
	}
	if !strings.Contains(logged.String(), fmt.Sprintf("max_payload=%d", most)) {
		t.Errorf("the warning does not give max_payload: %s", logged.String())
	}
	x.publish(long[:most])
	if len(x.out) != 1 {
		t.Errorf("a line of max_payload bytes was not queued")
	}
}

// A claim whose answer never came (NATS slow to answer within
// claimTimeout) may have been made: the user was told to try again, and
// the name must not then be taken by nobody until name_ttl. The same user
// trying again here is given the name; if nobody here tries, the keeper
// frees it for every node. The unanswered claim is made here as the room
// would have made it (its create landed; its answer is what was lost).
func TestUnansweredClaim(t *testing.T) {
	nodes := clustertest.Start(t, 2)
	clustertest.WaitNames(t, nodes, 30*time.Second)
	a := newClusterRoom(t, nodes[0], "lobby", "")
	b := newClusterRoom(t, nodes[1], "lobby", "")
	made := func(name string) {
		t.Helper()
		x := a.r.remote
		if _, err := x.node.ClaimName(context.Background(), x.key(name), x.holder, x.keyTTL()); err != nil {
			t.Fatal(err)
		}
		x.mu.Lock()
		x.unanswered[name] = time.Now()
		x.mu.Unlock()
	}

	// Tried again here: given.
	made("alice")
	alice := a.connect("A1")
	alice.send("alice\r\n")
	if got := alice.t.Take(); got != "Welcome, alice!\r\n" {
		t.Fatalf("alice trying her name again got %q, want the welcome", got)
	}
	if _, err := nodes[1].ClaimName(context.Background(), a.r.remote.key("alice"), "someone else", time.Minute); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("alice's name, claimed from b: %v, want taken", err)
	}

	// Not tried again: freed by the keeper, for a user on another node.
	made("carol")
	a.r.remote.releaseAll(time.Now().Add(releaseTimeout))
	joinAnywhere(t, b, "B1", "carol", 10*time.Second)
	a.r.remote.mu.Lock()
	left := len(a.r.remote.unanswered)
	a.r.remote.mu.Unlock()
	if left != 0 {
		t.Errorf("%d unanswered claims left after they were freed", left)
	}

	// Another user here claiming a name while one claims it is refused,
	// not given the same claim.
	x := a.r.remote
	x.mu.Lock()
	x.claiming["dave"] = false
	x.mu.Unlock()
	if got := x.claim("dave"); got != claimTaken {
		t.Errorf("a name being claimed here: %v, want taken", got)
	}
	x.mu.Lock()
	delete(x.claiming, "dave")
	x.mu.Unlock()
}

// TestClaimBeforeRegisterRefusesSecond: a user here whose claim of a name
// has been answered but who is not registered yet holds the name: another
// user here choosing it in that moment is refused (the key's value is
// this room's mark, which ClaimName gives back to it), and the name stays
// held in the cluster, not purged by the first user's lost register.
func TestClaimBeforeRegisterRefusesSecond(t *testing.T) {
	nodes, rm, x := oneNodeRoom(t)
	first := rm.connect("U1")
	second := rm.connect("U2")
	fired := false // the hook runs on the goroutine of the user it names
	testHookClaimed = func(u *User) {
		if !fired {
			fired = true
			second.send("bob\r\n") // chosen as the first's claim is answered
		}
	}
	t.Cleanup(func() { testHookClaimed = nil })
	eventually(t, 20*time.Second, func() error {
		first.send("bob\r\n")
		switch got := first.t.Take(); got {
		case "Welcome, bob!\r\n":
			return nil
		case unavailableLine + "\r\n": // JetStream electing a leader
			return fmt.Errorf("U1 naming itself bob: %q", got)
		default:
			t.Fatalf("U1 naming itself bob got %q, want the welcome (U2, choosing bob as U1's claim was answered, got %q)", got, second.t.Take())
			return nil
		}
	})
	testHookClaimed = nil
	if got := second.t.Take(); got != takenLine+"\r\n" {
		t.Errorf("U2 choosing bob while U1 claimed it got %q, want %q", got, takenLine)
	}
	stillHeld(t, nodes[0], x, "bob", "bob, claimed by another room while U1 holds it")
}

// TestRefreshDuringReclaimKeepsName: a held name is refreshed while its
// user leaves and a user here chooses it again, the claim answered (with
// the revision the refresh wrote: the key holds this room's mark) but not
// recorded yet when the refresh records its own. The refresh must not take
// the key for nobody's and purge it: the new user holds the name.
func TestRefreshDuringReclaimKeepsName(t *testing.T) {
	nodes, rm, x := oneNodeRoom(t)
	bob := joinAnywhere(t, rm, "U1", "bob", 20*time.Second)
	rev := heldRevision(t, x, "bob")

	answered := make(chan struct{})
	proceed := make(chan struct{})
	reclaimed := make(chan claimResult, 1)
	testHookClaimAnswered = func(string, *error) {
		close(answered)
		<-proceed
	}
	testHookRefreshed = func(string) {
		bob.leave()                                 // the user leaves as the refresh lands...
		go func() { reclaimed <- x.claim("bob") }() // ...and the name is chosen again here
		<-answered                                  // the claim is answered, not yet recorded
	}
	t.Cleanup(func() { testHookRefreshed, testHookClaimAnswered = nil, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !x.refresh(ctx, "bob", rev) {
		t.Fatal("refresh undecided")
	}
	testHookRefreshed = nil
	close(proceed)
	if got := <-reclaimed; got != claimOK {
		t.Fatalf("choosing bob again here: %v, want given (the key holds this room's mark)", got)
	}
	testHookClaimAnswered = nil
	stillHeld(t, nodes[0], x, "bob", "bob, claimed by another room while held here")
}

// TestUnansweredTakeoverFreed: a user chose again a name left here a
// moment ago, whose key was not purged yet; the takeover (a refresh of the
// key) was made but its answer lost. The key is then at a revision nobody
// here knows, and releasing the old one finds it moved on: it must be
// freed all the same, not left taken by nobody until name_ttl.
func TestUnansweredTakeoverFreed(t *testing.T) {
	nodes, rm, x := oneNodeRoom(t)
	joinAnywhere(t, rm, "U1", "bob", 20*time.Second)
	// The user leaves; the keeper (not woken) has not purged the key yet.
	x.mu.Lock()
	rev, ok := x.held["bob"]
	delete(x.held, "bob")
	x.releasing["bob"] = released{rev: rev, at: time.Now()}
	x.mu.Unlock()
	if !ok {
		t.Fatal("bob's name is not held")
	}
	testHookClaimAnswered = func(_ string, err *error) {
		if *err == nil {
			*err = fmt.Errorf("%w: %w", cluster.ErrNamesUnavailable, context.DeadlineExceeded) // the answer lost
		}
	}
	t.Cleanup(func() { testHookClaimAnswered = nil })
	if got := x.claim("bob"); got != claimUnavailable {
		t.Fatalf("a takeover whose answer was lost: %v, want unavailable", got)
	}
	testHookClaimAnswered = nil
	x.releaseAll(time.Now().Add(releaseTimeout))
	if _, err := nodes[0].ClaimName(context.Background(), x.key("bob"), "someone else", time.Minute); err != nil {
		t.Fatalf("bob, claimed by another room after the keeper ran: %v, want free", err)
	}
}

// stillHeld waits until x has no release pending, then checks that name
// is held in the cluster: another holder's claim of it is refused. what
// says whose claim, for the failure.
func stillHeld(t *testing.T, node *cluster.Node, x *remote, name, what string) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		x.mu.Lock()
		defer x.mu.Unlock()
		if len(x.releasing) != 0 {
			return fmt.Errorf("%d releases pending", len(x.releasing))
		}
		return nil
	})
	if _, err := node.ClaimName(context.Background(), x.key(name), "someone else", time.Minute); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("%s: %v, want taken", what, err)
	}
}

// oneNodeRoom starts a one-node cluster and a room on it whose names stay
// taken for a minute after a node dies (longer than any test here waits).
func oneNodeRoom(t *testing.T) ([]*cluster.Node, *room, *remote) {
	t.Helper()
	nodes := clustertest.Start(t, 1)
	clustertest.WaitNames(t, nodes, 30*time.Second)
	rm := newClusterRoom(t, nodes[0], "lobby", "  name_ttl = \"60s\"")
	return nodes, rm, rm.r.remote
}

// heldRevision is the revision of the key of name, held by a user of x.
func heldRevision(t *testing.T, x *remote, name string) uint64 {
	t.Helper()
	x.mu.Lock()
	rev, ok := x.held[name]
	x.mu.Unlock()
	if !ok {
		t.Fatalf("%s's name is not held", name)
	}
	return rev
}
