package framework_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if an example leaves a goroutine behind.
func TestMain(m *testing.M) {
	// The idle-connection poller is one goroutine for the whole process.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/superd-dev/superd/internal/engine.(*idlePoller).loop"))
}
