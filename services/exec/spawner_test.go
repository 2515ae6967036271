//go:build linux

package exec

import (
	"errors"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Starts queued on the spawner from many goroutines at once each get
// their own program, descriptors and pid: 32 shell programs, each told a
// number in its argv and its environment, write both to their own pipe
// and exit with it.
func TestSpawnKeepsStartsApart(t *testing.T) {
	const n = 32
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := strconv.Itoa(i)
			out, ws, err := spawnOutput([]string{"sh", "-c", `echo "$1 $N"; exit "$1"`, "sh", want}, []string{"N=" + want})
			if err != nil {
				t.Error(err)
				return
			}
			if got := strings.TrimSpace(out); got != want+" "+want || ws.ExitStatus() != i {
				t.Errorf("start %d: wrote %q, exit status %d", i, got, ws.ExitStatus())
			}
		}()
	}
	wg.Wait()
}

// A failed start comes back to its caller as the fork/exec error, and
// records no program.
func TestSpawnFailure(t *testing.T) {
	pid, err := spawn("/nonexistent/program", []string{"program"}, &syscall.ProcAttr{})
	if err != syscall.ENOENT {
		t.Fatalf("spawn: pid %d, err %v; want ENOENT", pid, err)
	}
	programs.Lock()
	defer programs.Unlock()
	if _, ok := programs.pids[pid]; ok && pid != 0 {
		t.Errorf("pid %d recorded", pid)
	}
}

// A program does not inherit the nice value of the thread that asked for
// it (nice is per thread on Linux, and a fork copies the calling
// thread's): starts are made on the spawner's own thread.
func TestSpawnIgnoresCallerThread(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the runtime ends this thread with the goroutine,
		// and its nice with it.
		runtime.LockOSThread()
		if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 7); err != nil {
			t.Errorf("setpriority: %v", err)
			return
		}
		out, _, err := spawnOutput([]string{"sh", "-c", "cat /proc/self/stat"}, nil)
		if err != nil {
			t.Error(err)
			return
		}
		// Field 19 is nice; the command (field 2) has no space here.
		fields := strings.Fields(out)
		if len(fields) < 19 {
			t.Errorf("/proc/self/stat: %q", out)
			return
		}
		if nice := fields[18]; nice != "0" {
			t.Errorf("program's nice %s, want 0 (the spawner's), not the caller thread's 7", nice)
		}
	}()
	<-done
}

// spawnOutput runs /bin/sh with argv and env through spawn, its standard
// output a pipe, and returns what it wrote there and its exit status.
func spawnOutput(argv, env []string) (string, syscall.WaitStatus, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", 0, err
	}
	defer r.Close()
	pid, err := spawn("/bin/sh", argv, &syscall.ProcAttr{Env: env, Files: []uintptr{0, w.Fd(), 2}})
	w.Close()
	if err != nil {
		return "", 0, err
	}
	out, rerr := io.ReadAll(r)
	var ws syscall.WaitStatus
	_, werr := syscall.Wait4(pid, &ws, 0, nil)
	disownProgram(pid)
	return string(out), ws, errors.Join(rerr, werr)
}
