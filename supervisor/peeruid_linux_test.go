package supervisor

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/config"
)

// dialUnixAs connects to path with the effective uid set to uid on this
// thread only (the kernel's credentials are per thread; SO_PEERCRED
// records them at connect), then restores root.
func dialUnixAs(t *testing.T, path string, uid int) net.Conn {
	t.Helper()
	runtime.LockOSThread()
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		runtime.UnlockOSThread()
		t.Fatalf("setresuid: %v", e)
	}
	c, err := net.Dial("unix", path)
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		// Leave the thread locked: it dies with this goroutine, never
		// reused under another identity.
		t.Fatalf("restoring the effective uid: %v", e)
	}
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// max_connections_per_uid counts open unix connections by the peer's uid
// (SO_PEERCRED): a third connection of root is refused while another uid
// still gets in.
func TestMaxConnectionsPerUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("connecting as another uid needs root")
	}
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755) // another uid must reach the socket
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "s.sock")
	f := &lifecycleFactory{}
	s, m := newTestSupervisor()
	ep := unixEndpoint(path, 0o666)
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("u", f, config.Limits{MaxConnectionsPerUID: 2}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)
	echo := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x\n")); err != nil {
			return err
		}
		_, err := bufio.NewReader(c).ReadString('\n')
		return err
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 2 {
		c := dialUnixAs(t, path, 0)
		held = append(held, c)
		if err := echo(c); err != nil {
			t.Fatal(err)
		}
	}
	third := dialUnixAs(t, path, 0)
	defer third.Close()
	rejected := m.ConnectionsRejected.WithLabelValues("u", "lifecycle", "max_connections_per_uid")
	waitFor(t, func() bool { return testutil.ToFloat64(rejected) == 1 })
	if err := echo(third); err == nil {
		t.Error("a third connection of uid 0 was served")
	}
	other := dialUnixAs(t, path, 65534)
	held = append(held, other)
	if err := echo(other); err != nil {
		t.Fatalf("another uid was refused: %v", err)
	}
	if got := testutil.ToFloat64(rejected); got != 1 {
		t.Errorf("rejected = %v, want 1", got)
	}
}
