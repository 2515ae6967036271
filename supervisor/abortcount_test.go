package supervisor

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/metrics"
)

// TestAbortCountsAWaitProgramOnce: a wait-mode program aborted twice (a
// second signal's abandon, then the shutdown's own abort, before the
// program killed by the first has been reaped) is one program dropped.
func TestAbortCountsAWaitProgramOnce(t *testing.T) {
	m := metrics.New("test")
	s := &service{m: m.ForService("w", "exec"), handoff: newHandoff(), listening: map[*handoff]struct{}{newHandoff(): {}}}
	for range 2 {
		s.mu.Lock()
		conns, programs := s.abortLocked()
		s.mu.Unlock()
		if conns != 0 || programs != 1 {
			t.Fatalf("abortLocked: %d connections, %d programs; want 0, 1", conns, programs)
		}
	}
	if n := testutil.ToFloat64(m.ConnectionsDropped.WithLabelValues("w", "exec", metrics.DropShutdownTimeout)); n != 1 {
		t.Errorf("dropped{reason=%q} = %v after two aborts, want 1", metrics.DropShutdownTimeout, n)
	}
	if n := s.dropped.Load(); n != 1 {
		t.Errorf("the status view's dropped count is %d, want 1", n)
	}
}
