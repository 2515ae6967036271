package supervisor

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
)

// TestReloadReplacesKeepsAndRemoves reloads while a client connects in a
// tight loop to the replaced service: no attempt may be refused. The
// unchanged service keeps its factory and open connection; the removed one
// closes its socket and loses its series.
func TestReloadReplacesKeepsAndRemoves(t *testing.T) {
	keepF, oldF, newF, goneF := &lifecycleFactory{}, &lifecycleFactory{}, &lifecycleFactory{}, &lifecycleFactory{}
	keepAddr, swapAddr, goneAddr := testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp"), testkit.FreeAddr(t, "tcp")
	keep := serviceConfig("keep", keepF, config.Limits{}, tcpEndpoint(keepAddr))
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		keep,
		serviceConfig("swap", oldF, config.Limits{}, tcpEndpoint(swapAddr)),
		serviceConfig("gone", goneF, config.Limits{}, tcpEndpoint(goneAddr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	keepConn := dialEcho(t, "tcp", keepAddr, "before")
	defer keepConn.Close()
	oldConn := dialEcho(t, "tcp", swapAddr, "old")
	defer oldConn.Close()

	// Connect in a tight loop through the reload.
	var refused, served atomic.Int64
	stop := testkit.Repeat(1, func() bool {
		c, err := net.Dial("tcp", swapAddr)
		if err != nil {
			refused.Add(1)
			return true
		}
		c.Write([]byte("p"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			served.Add(1)
		}
		c.Close()
		return true
	})
	defer stop()
	waitFor(t, func() bool { return served.Load() > 20 })

	err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		keep,
		serviceConfig("swap", newF, config.Limits{MaxConnections: 100}, tcpEndpoint(swapAddr)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	before := served.Load()
	waitFor(t, func() bool { return served.Load() > before+20 })
	stop()
	if n := refused.Load(); n != 0 {
		t.Errorf("%d connection attempts refused during the reload", n)
	}
	if newF.starts.Load() != 1 {
		t.Error("the new instance did not start")
	}
	// The old instance drains: its connection is closed cleanly, then it stops.
	oldConn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := oldConn.Read(make([]byte, 1)); err == nil {
		t.Error("old connection still open after the old instance drained")
	}
	waitFor(t, func() bool { return oldF.stops.Load() == 1 })
	// Unchanged: same factory instance, connection still served.
	if keepF.starts.Load() != 1 || keepF.stops.Load() != 0 {
		t.Errorf("unchanged service restarted: starts %d stops %d", keepF.starts.Load(), keepF.stops.Load())
	}
	dialEcho(t, "tcp", keepAddr, "x").Close()
	if _, err := keepConn.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	keepConn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := keepConn.Read(buf); err != nil || string(buf) != "after" {
		t.Errorf("unchanged service's connection: %q %v", buf, err)
	}
	// Removed: socket closed, factory stopped, series deleted.
	waitFor(t, func() bool { return goneF.stops.Load() == 1 })
	if c, err := net.Dial("tcp", goneAddr); err == nil {
		c.Close()
		t.Error("removed service still accepts")
	}
	if n := testutil.CollectAndCount(m.FactoryUp, "superd_factory_up"); n != 2 {
		t.Errorf("factory_up has %d series after removing a service, want 2", n)
	}
	if got := testutil.ToFloat64(m.FactoryUp.WithLabelValues("swap", "lifecycle")); got != 1 {
		t.Errorf("factory_up{swap} = %v after the replacement drained", got)
	}
}

func TestReloadFailureChangesNothing(t *testing.T) {
	f := &lifecycleFactory{}
	addr := testkit.FreeAddr(t, "tcp")
	s, _ := newTestSupervisor()
	svc := serviceConfig("a", f, config.Limits{}, tcpEndpoint(addr))
	if err := s.Start(&config.File{Services: []*config.Service{svc}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	bad := &lifecycleFactory{startErr: errors.New("boom")}
	err = s.Reload(&config.File{Services: []*config.Service{
		serviceConfig("a", &lifecycleFactory{}, config.Limits{MaxConnections: 1}, tcpEndpoint(addr)),
		serviceConfig("b", bad, config.Limits{}, tcpEndpoint(ln.Addr().String())), // port taken
	}})
	if err == nil {
		t.Fatal("reload onto a busy port succeeded")
	}
	if f.stops.Load() != 0 {
		t.Error("the running service was stopped by a failed reload")
	}
	dialEcho(t, "tcp", addr, "still").Close()
	if got := s.Services(); len(got) != 1 || got[0] != "a" {
		t.Errorf("services after failed reload: %v", got)
	}
}
