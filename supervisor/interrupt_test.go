package supervisor

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// stuckFactory's protocol waits in DataReceived until the factory is
// interrupted, as a logfile write waits for a pipe nobody reads.
type stuckFactory struct {
	entered     chan struct{} // closed when a DataReceived waits
	interrupted chan struct{} // closed by Interrupt
	once, enter sync.Once
}

func (f *stuckFactory) BuildProtocol(net.Addr) framework.Protocol { return &stuckProto{f: f} }

func (f *stuckFactory) Interrupt() { f.once.Do(func() { close(f.interrupted) }) }

type stuckProto struct {
	framework.BaseProtocol
	f *stuckFactory
}

func (p *stuckProto) DataReceived([]byte) {
	p.f.enter.Do(func() { close(p.f.entered) })
	<-p.f.interrupted
	p.Transport.AbortConnection()
}

func (p *stuckProto) Blocks() bool { return true }

// A shutdown whose drain runs out of time while a callback waits on
// something outside its connection interrupts the factory once it has
// aborted the connections, and so ends: it waited for good.
func TestShutdownInterruptsStuckCallbacks(t *testing.T) {
	f := &stuckFactory{entered: make(chan struct{}), interrupted: make(chan struct{})}
	defer f.Interrupt() // whatever the outcome, nothing stays stuck
	addr := testkit.FreeAddr(t, "tcp")
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("stuck", f, config.Limits{}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("DataReceived was not called")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- s.Shutdown(100 * time.Millisecond) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the shutdown waited for a callback that waits on something else")
	}
	select {
	case <-f.interrupted:
	default:
		t.Error("the factory was not interrupted")
	}
}
