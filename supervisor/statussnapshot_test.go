package supervisor

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
)

// Status is one moment's: a service a reload replaces is listed either
// running or draining, never both with its successor missing, and the
// generation is the running configuration's. Generation g runs with
// max_connections = g, so a draining instance is always an older one than
// the running instance of the same answer.
func TestStatusOneMomentUnderReloads(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp")
	s, _ := newTestSupervisor()
	generation := func(g int) *config.File {
		return &config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
			serviceConfig("swap", &lifecycleFactory{}, config.Limits{MaxConnections: g}, tcpEndpoint(addr)),
		}}
	}
	if err := s.Start(generation(1)); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int64
	var example atomic.Value
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				gen, svcs, _ := s.StatusOf(false)
				running := -1
				for _, st := range svcs {
					if st.State == "running" {
						running = st.Limits.MaxConnections
					}
				}
				if running != gen {
					bad.Add(1)
					example.Store(svcs)
				}
				for _, st := range svcs {
					if st.State == "draining" && st.Limits.MaxConnections >= running {
						bad.Add(1)
						example.Store(svcs)
					}
				}
			}
		}()
	}
	const reloads = 500
	for g := 2; g <= reloads && bad.Load() == 0; g++ {
		if err := s.Reload(generation(g)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := bad.Load(); n > 0 {
		t.Errorf("%d answers list an instance as draining that is not older than the running one, or another generation than the running one's, e.g. %+v", n, example.Load())
	}
}
