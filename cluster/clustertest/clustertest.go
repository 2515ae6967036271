// Package clustertest starts real NATS clusters on loopback for tests:
// nodes of package cluster, each with its embedded NATS server routed to
// the others, on free ports and in temporary folders. Only tests import it.
package clustertest

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/superd-dev/superd/cluster"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
)

// GoleakOptions are what goleak must overlook in a package whose tests
// run NATS: the framework's idle poller (started on first use for the
// life of the process), and the two goroutines of a JetStream file store
// that a server shutting down can leave unstopped (its state flusher, and
// the access-time ticker that lives while any store is open): a replica
// created as the server stops, which the server's shutdown no longer
// reaches. Seen once in six runs of package cluster under load, with every
// server shut down and waited for; a NATS server's own race, not a
// server or connection left open. A test that forgets a server or a
// connection leaves their other goroutines, and fails.
func GoleakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/superd-dev/superd/internal/engine.(*idlePoller).loop"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushStreamStateLoop"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server/ats.Register.func1"),
	}
}

// Config is the cluster block of node i of n, with their route ports.
func Config(t testing.TB, names []string, routes []string, i int) *config.Cluster {
	var others []string
	for j, r := range routes {
		if j != i {
			others = append(others, "nats://"+r)
		}
	}
	return &config.Cluster{
		Node: names[i],
		Embedded: &config.EmbeddedNATS{
			ClusterListen: routes[i],
			Routes:        others,
			StoreDir:      t.TempDir(),
		},
	}
}

// Logger is where the nodes of a test log: nowhere, unless
// SUPERD_TEST_NATS_LOG is set (then stderr, at debug level).
func Logger() *slog.Logger {
	if os.Getenv("SUPERD_TEST_NATS_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Start starts n nodes named a, b, c, ... routed to each other, and closes
// them when the test ends. Their names buckets become available once
// JetStream has a leader: see WaitNames.
func Start(t testing.TB, n int) []*cluster.Node {
	t.Helper()
	names := make([]string, n)
	routes := make([]string, n)
	for i := range names {
		names[i] = string(rune('a' + i))
		routes[i] = testkit.FreeAddr(t, "tcp")
	}
	if n == 1 {
		routes[0] = ""
	}
	nodes := make([]*cluster.Node, n)
	errs := make(chan error, n)
	for i := range nodes {
		go func() {
			cfg := Config(t, names, routes, i)
			if n == 1 {
				cfg.Embedded.ClusterListen, cfg.Embedded.Routes = "", nil
			}
			nd, err := cluster.Start(cfg, Logger().With("test_node", names[i]), nil)
			nodes[i] = nd
			errs <- err
		}()
	}
	var first error
	for range nodes {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			if nd != nil {
				nd.Close()
			}
		}
	})
	if first != nil {
		t.Fatal(first)
	}
	return nodes
}

// WaitNames waits until every node's names bucket is bound.
func WaitNames(t testing.TB, nodes []*cluster.Node, limit time.Duration) {
	t.Helper()
	Eventually(t, limit, func() error {
		var missing []string
		for _, nd := range nodes {
			if _, err := nd.Names(); err != nil {
				missing = append(missing, nd.Name())
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("names bucket not bound on %s", strings.Join(missing, ", "))
		}
		return nil
	})
}

// Eventually polls f every 20 ms until it returns nil, or fails the test
// with its last error after limit.
func Eventually(t testing.TB, limit time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
