package supervisor

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
)

// greeting dials addr and returns the first n bytes the service sends.
func greeting(t *testing.T, addr string, n int) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("greeting from %s: %v", addr, err)
	}
	return string(buf)
}

// A reload that only re-spells an address keeps its socket: the
// configuration and the supervisor agree on what one socket is
// (endpoint.Address), so what validate lets through is carried over,
// never bound a second time.
func TestReloadRespelledAddressKeepsSocket(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp") // 127.0.0.1:P
	_, port, _ := net.SplitHostPort(addr)
	s, _ := newTestSupervisor()
	first := &lifecycleFactory{greet: []byte("v0")}
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("a", first, config.Limits{}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	sock := s.sockets["tcp:"+addr]
	if sock == nil {
		t.Fatalf("no socket under the key tcp:%s; keys: %v", addr, keys(s.sockets))
	}

	for i, spelling := range []string{
		"localhost:" + port,
		"[::ffff:127.0.0.1]:" + port,
		"LocalHost.:" + port,
		"127.0.0.1:0" + port,
		addr,
	} {
		greet := []byte{'v', byte('1' + i)}
		if err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
			serviceConfig("a", &lifecycleFactory{greet: greet}, config.Limits{}, tcpEndpoint(spelling)),
		}}); err != nil {
			t.Fatalf("reload from %s to %s: %v", addr, spelling, err)
		}
		if got := s.sockets["tcp:"+addr]; got != sock || len(s.sockets) != 1 {
			t.Fatalf("after the reload to %s the socket was not carried over (keys: %v)", spelling, keys(s.sockets))
		}
		if got := greeting(t, addr, 2); got != string(greet) {
			t.Fatalf("after the reload to %s the service greets %q, want %q", spelling, got, greet)
		}
	}
}

// A reload to an address that overlaps the running one without being the
// same socket (here every address, :P, against 127.0.0.1:P) cannot carry
// the socket over, nor bind beside it: it fails with "address already in
// use", says superd itself holds the address (not another process), and
// leaves the running
// service as it was.
func TestReloadOverlappingAddressFailsCleanly(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp")
	_, port, _ := net.SplitHostPort(addr)
	s, _ := newTestSupervisor()
	running := &lifecycleFactory{greet: []byte("old")}
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("a", running, config.Limits{}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	svc := s.services["a"]

	next := &lifecycleFactory{greet: []byte("new")}
	err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("a", next, config.Limits{}, tcpEndpoint(":"+port)),
	}})
	if err == nil {
		t.Fatal("a reload from 127.0.0.1:P to :P succeeded")
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v is not EADDRINUSE", err)
	}
	want := `service "a", endpoint tcp::` + port + `: listen tcp::` + port + `: address already in use: superd itself holds it, for its endpoint tcp:` + addr + ` of service "a", and a reload carries a socket over only to the same address`
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error = %q\nwant prefix %q", err, want)
	}
	if s.services["a"] != svc || running.stops.Load() != 0 || next.starts.Load() != 0 {
		t.Errorf("the failed reload touched the running service (same: %v, stops %d) or started the new one (%d)",
			s.services["a"] == svc, running.stops.Load(), next.starts.Load())
	}
	if got := greeting(t, addr, 3); got != "old" {
		t.Errorf("after the failed reload the service greets %q, want %q", got, "old")
	}
}

// Port 0 is a free port each time: two endpoints on 127.0.0.1:0 get one
// socket each, each serving its own service.
func TestPortZeroSocketsAreNotShared(t *testing.T) {
	s, _ := newTestSupervisor()
	fa, fb := &lifecycleFactory{greet: []byte("a")}, &lifecycleFactory{greet: []byte("b")}
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("a", fa, config.Limits{}, tcpEndpoint("127.0.0.1:0")),
		serviceConfig("b", fb, config.Limits{}, tcpEndpoint("127.0.0.1:0")),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	for _, name := range []string{"a", "b"} {
		b := s.services[name].bindings[0]
		if got := greeting(t, b.sock.ln.Addr().String(), 1); got != name {
			t.Errorf("service %s's socket is served by %q", name, got)
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
