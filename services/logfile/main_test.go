package logfile

import (
	"testing"

	"github.com/superd-dev/superd/services/internal/servicetest"
)

// TestMain fails the package if a test leaves a goroutine behind (the
// fsync goroutine) or logs through the global slog.
func TestMain(m *testing.M) { servicetest.VerifyTestMain(m) }
