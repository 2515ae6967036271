package chat

import (
	"testing"

	"github.com/superd-dev/superd/cluster/clustertest"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

// TestMain fails the package if a test leaves a goroutine behind (rooms
// across nodes start goroutines and NATS servers and connections) or logs
// through the global slog.
func TestMain(m *testing.M) {
	servicetest.VerifyTestMain(m, clustertest.GoleakOptions()...)
}
