package cluster

import (
	"context"
	"time"
)

// ClaimReleased exposes the leader-checked claim that ClaimName falls
// back to when a replica answered that a key is held.
func (n *Node) ClaimReleased(ctx context.Context, key, holder string, ttl time.Duration) (uint64, error) {
	return n.claimReleased(ctx, key, holder, ttl)
}
