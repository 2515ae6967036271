package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/superd-dev/superd/cluster"
	"github.com/superd-dev/superd/cluster/clustertest"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, clustertest.GoleakOptions()...)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestToken(t *testing.T) {
	for in, want := range map[string]string{
		"lobby":     "lobby",
		"bob smith": "bob=20smith",
		"a.b*c>d":   "a=2Eb=2Ac=3Ed",
		"=":         "=3D",
		"Zoë":       "Zo=C3=AB",
		"x_y-Z09":   "x_y-Z09",
		"":          "=",
	} {
		if got := cluster.Token(in); got != want {
			t.Errorf("Token(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestNamesAcrossNodes: a name claimed on one node is refused on the
// others until released; the claim is atomic when nodes race for it.
func TestNamesAcrossNodes(t *testing.T) {
	nodes := clustertest.Start(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	clustertest.WaitNames(t, nodes, 30*time.Second)

	rev, err := a.ClaimName(ctx(t), "s.bob", a.Name(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ClaimName(ctx(t), "s.bob", c.Name(), 30*time.Second); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("claim on c: %v, want ErrNameTaken", err)
	}
	if _, err := a.ClaimName(ctx(t), "s.bob", a.Name()+" other", 30*time.Second); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("a claim on a by another holder: %v, want ErrNameTaken", err)
	}
	// The holder claiming again (its first answer lost) is given its
	// claim, at the same revision.
	if again, err := a.ClaimName(ctx(t), "s.bob", a.Name(), 30*time.Second); err != nil || again != rev {
		t.Fatalf("the holder's claim again: revision %d, %v; want %d", again, err, rev)
	}
	if err := c.ReleaseHeldBy(ctx(t), "s.bob", c.Name()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ClaimName(ctx(t), "s.bob", b.Name(), 30*time.Second); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("after a release by one who does not hold it: %v, want ErrNameTaken", err)
	}
	// A refresh keeps it; a release with a stale revision does nothing.
	rev2, err := a.RefreshName(ctx(t), "s.bob", a.Name(), rev, 30*time.Second)
	if err != nil || rev2 <= rev {
		t.Fatalf("refresh: %d, %v", rev2, err)
	}
	if err := a.ReleaseName(ctx(t), "s.bob", rev); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ClaimName(ctx(t), "s.bob", b.Name(), 30*time.Second); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("after a stale release: %v, want ErrNameTaken", err)
	}
	if err := a.ReleaseName(ctx(t), "s.bob", rev2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ClaimName(ctx(t), "s.bob", c.Name(), 30*time.Second); err != nil {
		t.Fatalf("claim on c after the release: %v", err)
	}
	// a's refresh of a name now held by c reports it lost.
	if _, err := a.RefreshName(ctx(t), "s.bob", a.Name(), rev2, 30*time.Second); !errors.Is(err, cluster.ErrNameLost) {
		t.Fatalf("refresh of a name held elsewhere: %v, want ErrNameLost", err)
	}
	// Its holder frees it without knowing its revision.
	if err := c.ReleaseHeldBy(ctx(t), "s.bob", c.Name()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ClaimName(ctx(t), "s.bob", b.Name(), 30*time.Second); err != nil {
		t.Fatalf("claim on b after c's release by holder: %v", err)
	}

	// Racing: of 30 claims spread over the nodes, one wins.
	results := make(chan error, 30)
	for i := range 30 {
		go func() {
			_, err := nodes[i%3].ClaimName(context.Background(), "s.race", fmt.Sprint("racer-", i), 30*time.Second)
			results <- err
		}()
	}
	won := 0
	for range 30 {
		switch err := <-results; {
		case err == nil:
			won++
		case errors.Is(err, cluster.ErrNameTaken):
		default:
			t.Fatalf("racing claim: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d claims won, want 1", won)
	}
}

// TestNameExpires: a name nobody refreshes is free again within its TTL.
func TestNameExpires(t *testing.T) {
	t0 := time.Now()
	nodes := clustertest.Start(t, 3)
	t.Logf("started in %v", time.Since(t0))
	clustertest.WaitNames(t, nodes, 30*time.Second)
	t.Logf("names in %v", time.Since(t0))
	t.Cleanup(func() { t.Logf("closed at %v", time.Since(t0)) })
	const ttl = 2 * time.Second
	start := time.Now()
	if _, err := nodes[1].ClaimName(ctx(t), "s.ghost", nodes[1].Name(), ttl); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[0].ClaimName(ctx(t), "s.ghost", nodes[0].Name(), ttl); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("claim right after: %v, want ErrNameTaken", err)
	}
	clustertest.Eventually(t, ttl+3*time.Second, func() error {
		_, err := nodes[2].ClaimName(ctx(t), "s.ghost", nodes[2].Name(), ttl)
		return err
	})
	el := time.Since(start)
	t.Logf("free again after %v (ttl %v)", el, ttl)
	if el < ttl-100*time.Millisecond {
		t.Fatalf("free after %v, before its TTL %v", el, ttl)
	}
}

// TestNoEcho: a node's publications reach the others, never itself.
func TestNoEcho(t *testing.T) {
	nodes := clustertest.Start(t, 3)
	subs := make([]*nats.Subscription, 3)
	for i, nd := range nodes {
		s, err := nd.Conn().SubscribeSync("test.subject")
		if err != nil {
			t.Fatal(err)
		}
		subs[i] = s
		if err := nd.Conn().Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// Interest spreads over the routes: publish until both others hear.
	clustertest.Eventually(t, 10*time.Second, func() error {
		if err := nodes[0].Conn().Publish("test.subject", []byte("probe")); err != nil {
			return err
		}
		for _, s := range subs[1:] {
			if _, err := s.NextMsg(50 * time.Millisecond); err != nil {
				return fmt.Errorf("%s: %v", s.Subject, err)
			}
		}
		return nil
	})
	if m, err := subs[0].NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("the publisher heard itself: %q", m.Data)
	}
}

// TestServerStopAndStart: with its embedded server stopped, a node is
// disconnected and its names are unavailable; started again, both come
// back by themselves, and the gauge follows.
func TestServerStopAndStart(t *testing.T) {
	names := []string{"solo"}
	cfg := clustertest.Config(t, names, []string{""}, 0)
	cfg.Embedded.ClusterListen = ""
	cfg.Embedded.Listen = testkit.FreeAddr(t, "tcp")
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	n, err := cluster.Start(cfg, clustertest.Logger(), g)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	gauge := func() float64 {
		var m dto.Metric
		g.Write(&m)
		return m.GetGauge().GetValue()
	}
	clustertest.WaitNames(t, []*cluster.Node{n}, 20*time.Second)
	clustertest.Eventually(t, 5*time.Second, func() error {
		if gauge() != 1 {
			return errors.New("gauge not 1")
		}
		return nil
	})
	if !n.Connected() {
		t.Fatal("not connected while the gauge says so")
	}
	// Its client port answers NATS clients.
	c, err := nats.Connect("nats://" + cfg.Embedded.Listen)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	n.StopServer()
	clustertest.Eventually(t, 5*time.Second, func() error {
		if n.Connected() || gauge() != 0 {
			return errors.New("still connected")
		}
		return nil
	})
	if _, err := n.ClaimName(ctx(t), "s.x", n.Name(), 5*time.Second); !errors.Is(err, cluster.ErrNamesUnavailable) {
		t.Fatalf("claim while stopped: %v", err)
	}
	if err := n.Conn().Publish("x", []byte("y")); err == nil {
		t.Fatal("publishing while disconnected did not fail at once")
	}
	if err := n.StartServer(); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 20*time.Second, func() error {
		_, err := n.ClaimName(ctx(t), "s.x", n.Name(), 5*time.Second)
		return err
	})
	if gauge() != 1 {
		t.Fatalf("gauge %v after reconnecting", gauge())
	}
}

// TestStartErrors: a taken port is reported with the embedded server's
// reason; nothing is left running.
func TestStartErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := &config.Cluster{Node: "x", Embedded: &config.EmbeddedNATS{Listen: ln.Addr().String(), StoreDir: t.TempDir()}}
	_, err = cluster.Start(cfg, clustertest.Logger(), nil)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("error %v; want one naming %s", err, ln.Addr())
	}
	t.Log(err)
}

// TestNATSURLsUnreachable: with nats_urls that do not answer, Start
// succeeds (rooms work locally), the node is not connected, and names are
// unavailable.
func TestNATSURLsUnreachable(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp") // nobody listens
	n, err := cluster.Start(&config.Cluster{Node: "x", NATSURLs: []string{"nats://" + addr}}, clustertest.Logger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.Connected() {
		t.Fatal("connected to nobody")
	}
	if _, err := n.Names(); !errors.Is(err, cluster.ErrNamesUnavailable) {
		t.Fatalf("Names: %v", err)
	}
}

// The fallback of a claim that a lagging replica refused: the stream
// leader's last revision decides. A held name stays taken, a released one
// (or one never claimed) is claimed, and the claim then holds it against
// every node.
func TestClaimReleasedAsksTheLeader(t *testing.T) {
	nodes := clustertest.Start(t, 3)
	a, c := nodes[0], nodes[2]
	clustertest.WaitNames(t, nodes, 30*time.Second)

	rev, err := a.ClaimName(ctx(t), "s.carol", a.Name(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ClaimReleased(ctx(t), "s.carol", c.Name(), 30*time.Second); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("held name: %v, want ErrNameTaken", err)
	}
	if err := a.ReleaseName(ctx(t), "s.carol", rev); err != nil {
		t.Fatal(err)
	}
	rev2, err := c.ClaimReleased(ctx(t), "s.carol", c.Name(), 30*time.Second)
	if err != nil || rev2 <= rev {
		t.Fatalf("released name: %d, %v", rev2, err)
	}
	if _, err := a.ClaimName(ctx(t), "s.carol", a.Name(), 30*time.Second); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("after the leader-checked claim: %v, want ErrNameTaken", err)
	}
	if _, err := c.ClaimReleased(ctx(t), "s.never", c.Name(), 30*time.Second); err != nil {
		t.Fatalf("a name never claimed: %v", err)
	}
	if _, err := a.ClaimName(ctx(t), "s.never", a.Name(), 30*time.Second); !errors.Is(err, cluster.ErrNameTaken) {
		t.Fatalf("after claiming a name never claimed: %v, want ErrNameTaken", err)
	}
}

// TestCutOffFromPeers: an embedded server that no longer reaches any other
// node (their servers gone, the network cut) leaves this node's own
// connection up, but the node is cut off from the cluster all the same:
// Connected and the gauge say so, and say connected again once a route is
// back. A cluster of one (no cluster_listen) never waits for routes.
func TestCutOffFromPeers(t *testing.T) {
	names := []string{"a", "b"}
	routes := []string{testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp")}
	gauges := make([]prometheus.Gauge, 2)
	nodes := make([]*cluster.Node, 2)
	for i := range nodes {
		gauges[i] = prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
		n, err := cluster.Start(clustertest.Config(t, names, routes, i), clustertest.Logger(), gauges[i])
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes[i] = n
	}
	a, b := nodes[0], nodes[1]
	gauge := func() float64 {
		var m dto.Metric
		gauges[1].Write(&m)
		return m.GetGauge().GetValue()
	}
	clustertest.Eventually(t, 20*time.Second, func() error {
		if !b.Connected() || gauge() != 1 {
			return fmt.Errorf("b: connected %v, gauge %v", b.Connected(), gauge())
		}
		return nil
	})
	a.StopServer()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if b.Connected() || gauge() != 0 {
			return fmt.Errorf("b reaches no other node, yet: connected %v, gauge %v", b.Connected(), gauge())
		}
		return nil
	})
	if !b.Conn().IsConnected() {
		t.Fatal("b's own connection is down")
	}
	if err := a.StartServer(); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 20*time.Second, func() error {
		if !b.Connected() || gauge() != 1 {
			return fmt.Errorf("b routed again, yet: connected %v, gauge %v", b.Connected(), gauge())
		}
		return nil
	})
}

// TestRefreshAfterLostAnswer: a refresh whose answer was lost moved the
// key on; the next refresh, from the old revision, finds it held by the
// same holder and writes it again (a fresh TTL), rather than only taking
// the revision back, which would leave the key to expire a refresh early.
func TestRefreshAfterLostAnswer(t *testing.T) {
	nodes := clustertest.Start(t, 1)
	clustertest.WaitNames(t, nodes, 30*time.Second)
	a := nodes[0]
	rev, err := a.ClaimName(ctx(t), "s.dora", "holder", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lost, err := a.RefreshName(ctx(t), "s.dora", "holder", rev, 30*time.Second) // its answer "lost"
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.RefreshName(ctx(t), "s.dora", "holder", rev, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if again <= lost {
		t.Fatalf("the refresh from the old revision gave revision %d, the lost one's is %d: not written again", again, lost)
	}
}
