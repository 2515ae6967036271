//go:build !linux

package exec

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"

	"github.com/superd-dev/superd/framework"
)

// New refuses: the exec factory is built on Linux's process interfaces
// (pidfds, waitid, SCM_CREDENTIALS for the stderr log, TCP_INFO for the
// byte counts). Every other factory runs on this system; validate and run
// name the service whose factory cannot.
func New(*framework.Env, *Config) (framework.Factory, error) {
	return nil, fmt.Errorf("the exec factory runs programs on Linux only; this superd was built for %s", runtime.GOOS)
}

// ReapOrphans returns at once: no exec factory runs here, so no program
// leaves orphans to superd.
func ReapOrphans(context.Context, *slog.Logger) {}
