//go:build linux

package exec

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
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

// TestOrphansBehindAProgramsExit: where the children list cannot be read
// (a /proc of another PID namespace, or none), the reaper looks at exited
// children one at a time, and a program's exit, which its connection
// reaps, ends the round. An orphan that exited with it (a program leaves
// its unreaped children to superd) is reaped once the program is, not at
// some later SIGCHLD (both of theirs were taken by that round).
//
// The kernel shows the looking thread's own children first, and hands
// orphans to superd's main thread: the program is started and the reaper
// runs on another thread, so the program comes first.
func TestOrphansBehindAProgramsExit(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	listChildren = func() ([]int, bool) { return nil, false }
	t.Cleanup(func() { listChildren = childPIDs })

	// The program: its background job exits at once and stays its zombie
	// (cat never waits); the program ends at the client's end of stream.
	f, _ := newTestFactory(t, `command = ["/bin/sh", "-c", "/bin/true </dev/null >/dev/null 2>&1 & echo $!; exec /bin/cat"]`)
	client, server := tcpPair(t)
	fd, err := dupBlocking(server.(*net.TCPConn))
	server.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan *child, 1)
	done := make(chan struct{})
	go onOtherThread(func() {
		defer close(done)
		ch, err := f.start([]int{fd, fd}, nil, "test", false)
		unix.Close(fd)
		started <- ch
		if err != nil {
			return
		}
		ReapOrphans(ctx, nil)
	})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	ch := <-started
	if ch == nil {
		t.Fatal("the program did not start")
	}
	orphan := readPID(t, bufio.NewReader(client), client)
	client.(*net.TCPConn).CloseWrite()
	waitFor(t, 10*time.Second, "the round to end at the program's exit", func() bool {
		programs.Lock()
		defer programs.Unlock()
		return programs.blocking == ch.pid
	})
	if _, err := ch.wait(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("orphan %d to be reaped", orphan), func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", orphan))
		return err != nil // reaped (its pid is not taken again this soon)
	})
}

// onOtherThread runs fn on a locked OS thread that is not the process's
// main thread.
func onOtherThread(fn func()) {
	var try func()
	held := make(chan struct{})
	defer close(held)
	ran := make(chan struct{})
	try = func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Gettid() == unix.Getpid() {
			go try() // this thread held meanwhile: the goroutine gets another
			<-held
			return
		}
		defer close(ran)
		fn()
	}
	go try()
	<-ran
}
