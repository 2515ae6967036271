package chat

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/superd-dev/superd/cluster/clustertest"
)

// TestMain fails the package if a test leaves a goroutine behind: rooms
// across nodes start goroutines and NATS servers and connections.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, clustertest.GoleakOptions()...)
}
