//go:build linux

package exec

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/metrics"
	"github.com/superd-dev/superd/supervisor"
)

// TestIdleTimeoutKillsStubbornChild: under superd, a relayed (tls)
// connection that stays silent past idle_timeout is closed and its child
// sent stop_signal; a child that ignores it is killed with its process
// group once shutdown_timeout has passed as well, rather than holding its
// process and its connection slot until superd stops. The connection ends
// as idle_timeout; the exit counts as a signal.
func TestIdleTimeoutKillsStubbornChild(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := testkit.WriteSelfSignedFiles(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	addr := testkit.FreeAddr(t, "tcp")
	src := fmt.Sprintf(`shutdown_timeout = "300ms"
service "exec" "stubborn" {
  command      = ["/bin/sh", "-c", "trap '' TERM; echo $$; exec sleep 1000"]
  idle_timeout = "200ms"
  stderr       = "discard"
  endpoint "tls" {
    address   = %q
    cert_file = %q
    key_file  = %q
  }
}
`, addr, certFile, keyFile)
	cfg, err := config.Parse([]byte(src), filepath.Join(dir, "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	logs := &logRecords{}
	m := metrics.New("test")
	s := supervisor.New(slog.New(logs), m)
	if err := s.Start(cfg); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)

	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pid := readPID(t, bufio.NewReader(c), c)
	// The client says nothing more.

	waitFor(t, 10*time.Second, "the child ignoring SIGTERM to be gone", func() bool { return !alive(pid) })
	want := `
# HELP superd_exec_exits_total Programs started by exec services that have exited, by result (success: status 0; failure: another status; signal: killed by a signal).
# TYPE superd_exec_exits_total counter
superd_exec_exits_total{result="failure",service="stubborn"} 0
superd_exec_exits_total{result="signal",service="stubborn"} 1
superd_exec_exits_total{result="success",service="stubborn"} 0
# HELP superd_exec_processes Programs started by exec services that are running now.
# TYPE superd_exec_processes gauge
superd_exec_processes{service="stubborn"} 0
`
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "superd_exec_exits_total", "superd_exec_processes")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the exit was not counted as a signal: %v", err)
		}
	}
	dropped := func(reason string) float64 {
		return testutil.ToFloat64(m.ConnectionsDropped.WithLabelValues("stubborn", "exec", reason))
	}
	waitFor(t, 10*time.Second, "the connection to be counted as ended by idle_timeout", func() bool {
		return dropped(metrics.DropIdleTimeout) == 1
	})
	if n := dropped(metrics.DropShutdownTimeout); n != 0 {
		t.Errorf("dropped{reason=%q} = %v, want 0", metrics.DropShutdownTimeout, n)
	}
	exits := logs.with("program exited")
	if len(exits) != 1 || exits[0]["pid"] != strconv.Itoa(pid) || exits[0]["signal"] != "SIGKILL" {
		t.Errorf("exit logged as %v, want one line for pid %d with signal SIGKILL", exits, pid)
	}
}

// TestWaitProgramKilledAtShutdownTimeout: a wait-mode program that
// ignores stop_signal is killed when shutdown_timeout runs out, and, as an
// aborted connection is, counted dropped{reason="shutdown_timeout"} and
// logged as a program (not as a connection).
func TestWaitProgramKilledAtShutdownTimeout(t *testing.T) {
	addr := testkit.FreeAddr(t, "tcp")
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready") // the trap is set
	src := fmt.Sprintf(`service "exec" "stubborn" {
  command = ["/bin/sh", "-c", "trap '' TERM; : > %s; exec sleep 1000"]
  wait    = true
  stderr  = "discard"
  endpoint "tcp" { address = %q }
}
`, ready, addr)
	cfg, err := config.Parse([]byte(src), filepath.Join(dir, "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	logs := &logRecords{}
	m := metrics.New("test")
	s := supervisor.New(slog.New(logs), m)
	if err := s.Start(cfg); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr) // waiting: the program starts
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	processes := func(n int) error {
		want := fmt.Sprintf(`
# HELP superd_exec_processes Programs started by exec services that are running now.
# TYPE superd_exec_processes gauge
superd_exec_processes{service="stubborn"} %d
`, n)
		return testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "superd_exec_processes")
	}
	waitFor(t, 10*time.Second, "the program to start", func() bool {
		_, err := os.Stat(ready)
		return err == nil && processes(1) == nil
	})
	if err := s.Shutdown(300 * time.Millisecond); err != nil { // superd run passes shutdown_timeout
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.ConnectionsDropped.WithLabelValues("stubborn", "exec", metrics.DropShutdownTimeout)); n != 1 {
		t.Errorf("dropped{reason=%q} = %v, want 1 (the program killed)", metrics.DropShutdownTimeout, n)
	}
	aborted := logs.with("shutdown timeout: aborted open connections")
	if len(aborted) != 1 || aborted[0]["connections"] != "0" || aborted[0]["wait_programs"] != "1" {
		t.Errorf("the abort logged as %v, want connections=0 wait_programs=1", aborted)
	}
	if err := processes(0); err != nil {
		t.Errorf("after the shutdown: %v", err)
	}
}
