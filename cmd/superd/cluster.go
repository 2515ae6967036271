package main

import (
	"errors"
	"log/slog"
	"os"
	"sync/atomic"

	"github.com/superd-dev/superd/cluster"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/metrics"
)

// The cluster block (SPEC section 13): superd joins NATS before any
// service starts (a chat room with cluster = true takes the node in its
// StartFactory) and leaves after every service has stopped. It is not part
// of /readyz (a node without NATS still serves its rooms locally; /status
// and superd_cluster_connected tell), and a reload cannot change it.

// abandonCluster makes stopCluster do nothing: a second signal exits at
// once, without waiting for NATS.
var abandonCluster atomic.Bool

// startCluster starts the node of cfg's cluster block (nothing without
// one) and publishes it as the process's node; the returned function
// leaves the cluster.
func startCluster(log *slog.Logger, cfg *config.File, m *metrics.Metrics) (stop func(), err error) {
	if cfg.Cluster == nil {
		return func() {}, nil
	}
	if cfg.Cluster.Embedded != nil && cfg.RunAs != nil && os.Geteuid() == 0 {
		// Its store would be created as root, then written as the user.
		return nil, errors.New("the embedded NATS server cannot run with user and group set (its JetStream store would belong to root): " +
			"start superd as that user instead (systemd's User=), or use nats_urls")
	}
	node, err := cluster.Start(cfg.Cluster, log, m.ClusterConnected)
	if err != nil {
		return nil, err
	}
	cluster.SetDefault(node)
	return func() {
		if !abandonCluster.Load() {
			node.Close()
		}
	}, nil
}

// clusterStatus is the cluster's part of /status; nil without a cluster
// block.
func clusterStatus() *ClusterStatus {
	n := cluster.Default()
	if n == nil {
		return nil
	}
	return &ClusterStatus{Node: n.Name(), Connected: n.Connected()}
}

// clusterUnchanged fails a reload whose cluster block differs from the
// running one.
func clusterUnchanged(cfg *config.File) error {
	var running *config.Cluster
	if n := cluster.Default(); n != nil {
		running = n.Config()
	}
	if !cfg.Cluster.Same(running) {
		return errors.New("the cluster block changed; restart superd to change the cluster")
	}
	return nil
}
