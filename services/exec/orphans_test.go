//go:build linux

package exec

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// TestOrphansReaped: where superd is PID 1 or a child subreaper (here the
// test process, made one), a program's background job that outlives it
// is handed to superd when it exits, and ReapOrphans reaps it; the
// programs' own exits are still their connections' (none is taken for an
// orphan's).
func TestOrphansReaped(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	if !isSubreaper() {
		t.Fatal("isSubreaper: false after PR_SET_CHILD_SUBREAPER")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ReapOrphans(ctx, nil)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "sleep 0.2 </dev/null >/dev/null 2>&1 & echo $!"]`)
	const programs = 5
	var orphans []int
	for range programs {
		client, server := tcpPair(t)
		h := serveConn(t, f, server, 0)
		orphans = append(orphans, readPID(t, bufio.NewReader(client), client))
		if err := h.wait(t, 10*time.Second); err != nil {
			t.Fatalf("ServeConn returned %v", err)
		}
	}
	for _, pid := range orphans {
		waitFor(t, 10*time.Second, fmt.Sprintf("orphan %d to be reaped", pid), func() bool {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				return true // reaped (its pid is not taken again this soon)
			}
			if i := strings.LastIndexByte(string(b), ')'); i >= 0 && strings.HasPrefix(string(b[i:]), ") Z") {
				return false // a zombie: not reaped yet
			}
			return false // still running
		})
	}
	if n := testutil.ToFloat64(f.results[ResultSuccess]); n != programs {
		t.Errorf("exits_total{result=success} = %v, want %d", n, programs)
	}
	if errs := logs.with("cannot wait for program"); len(errs) > 0 {
		t.Errorf("a program's exit was taken: %v", errs)
	}
}
