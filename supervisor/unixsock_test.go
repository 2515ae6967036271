package supervisor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
)

// A reload that changes only the owner and group of a unix endpoint
// carries the socket over and gives its file the new ones (read back
// from the file).
func TestReloadAppliesUnixSocketOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a file another owner needs root: run the tests as root (CI does) to check it")
	}
	f := &lifecycleFactory{}
	path := filepath.Join(t.TempDir(), "o.sock")
	ep := func(uid, gid int) endpoint.Config {
		e := unixEndpoint(path, 0o660)
		e.Owner, e.UID = strconv.Itoa(uid), uid
		e.Group, e.GID = strconv.Itoa(gid), gid
		return e
	}
	owner := func() (int, int) {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return int(st.Uid), int(st.Gid)
	}
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, ep(65534, 65534)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	if u, g := owner(); u != 65534 || g != 65534 {
		t.Fatalf("socket file owned by %d:%d at start, want 65534:65534", u, g)
	}
	held := dialEcho(t, "unix", path, "before")
	defer held.Close()
	if err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, ep(65533, 65532)),
	}}); err != nil {
		t.Fatal(err)
	}
	if u, g := owner(); u != 65533 || g != 65532 {
		t.Errorf("socket file owned by %d:%d after the reload, want 65533:65532", u, g)
	}
	dialEcho(t, "unix", path, "after").Close()
}

// An abstract socket is carried over by a reload like any other (one key,
// "unix:@NAME"): clients connecting through the reload are never refused,
// and at shutdown nothing is left to remove.
func TestReloadKeepsAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@superd-test/%d/reload", os.Getpid())
	ep := makeEndpoint(endpoint.KindUnix, name)
	if !ep.Addr.Abstract() || ep.Addr.Key() != "unix:"+name {
		t.Fatalf("address %#v, key %q", ep.Addr, ep.Addr.Key())
	}
	oldF, newF := &lifecycleFactory{}, &lifecycleFactory{}
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("a", oldF, config.Limits{}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	before := s.sockets[ep.Addr.Key()]
	s.mu.Unlock()
	if before == nil {
		t.Fatalf("no socket under %q", ep.Addr.Key())
	}

	var refused, served atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.Dial("unix", name)
			if err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
					refused.Add(1)
				}
				continue
			}
			c.Write([]byte("p"))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				served.Add(1)
			}
			c.Close()
		}
	})
	waitFor(t, func() bool { return served.Load() > 20 })
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("a", newF, config.Limits{MaxConnections: 100}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	n := served.Load()
	waitFor(t, func() bool { return served.Load() > n+20 })
	close(stop)
	wg.Wait()
	if n := refused.Load(); n != 0 {
		t.Errorf("%d connections refused during the reload", n)
	}
	s.mu.Lock()
	after := s.sockets[ep.Addr.Key()]
	s.mu.Unlock()
	if after != before {
		t.Errorf("the reload bound the abstract socket again instead of handing it over")
	}
	waitFor(t, func() bool { return oldF.stops.Load() == 1 })
	s.Shutdown(5 * time.Second)
	if _, err := net.Dial("unix", name); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after shutdown: %v, want connection refused", err)
	}
}

// A reload that changes a kept unix socket file's mode and then fails
// (another service cannot start) puts the file's mode back: a failed
// reload changes nothing.
func TestFailedReloadRestoresUnixSocketMode(t *testing.T) {
	s, f, path := startUnixService(t, "m.sock")
	bad := &lifecycleFactory{startErr: errors.New("boom")}
	err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, unixEndpoint(path, 0o666)),
		serviceConfig("b", bad, config.Limits{}, unixEndpoint(filepath.Join(t.TempDir(), "b.sock"), 0o600)),
	}})
	if err == nil {
		t.Fatal("the reload succeeded although a factory failed to start")
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket file after the failed reload: %v, %v; want 0600", fi.Mode(), err)
	}
	dialEcho(t, "unix", path, "still").Close()
	if err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, unixEndpoint(path, 0o666)),
	}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket file after the reload: %v, %v; want 0666", fi.Mode(), err)
	}
}

// A reload that changes the mode of a kept unix socket whose file someone
// removed carries on (the file is not superd's to make again), as one
// whose path now names something else does.
func TestReloadUnixSocketFileGone(t *testing.T) {
	s, f, path := startUnixService(t, "g.sock")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{MaxConnections: 3}, unixEndpoint(path, 0o666)),
	}}); err != nil {
		t.Fatalf("reload with the socket file gone: %v", err)
	}
}

// startUnixService starts a supervisor with one service, u, on a unix
// socket file of mode 0600 named name in a folder of the test's; it is
// shut down at the test's end.
func startUnixService(t *testing.T, name string) (*Supervisor, *lifecycleFactory, string) {
	t.Helper()
	f := &lifecycleFactory{}
	path := filepath.Join(t.TempDir(), name)
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{}, unixEndpoint(path, 0o600)),
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(time.Second) })
	return s, f, path
}
