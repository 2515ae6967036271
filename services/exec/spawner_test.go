//go:build linux

package exec

import (
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
			r, w, err := os.Pipe()
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			want := strconv.Itoa(i)
			pid, err := spawn("/bin/sh", []string{"sh", "-c", `echo "$1 $N"; exit "$1"`, "sh", want}, &syscall.ProcAttr{
				Env:   []string{"N=" + want},
				Files: []uintptr{0, w.Fd(), 2},
			})
			w.Close()
			if err != nil {
				t.Error(err)
				return
			}
			out := make([]byte, 64)
			k, _ := r.Read(out)
			var ws syscall.WaitStatus
			if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
				t.Error(err)
				return
			}
			disownProgram(pid)
			if got := strings.TrimSpace(string(out[:k])); got != want+" "+want || ws.ExitStatus() != i {
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
		r, w, err := os.Pipe()
		if err != nil {
			t.Error(err)
			return
		}
		defer r.Close()
		pid, err := spawn("/bin/sh", []string{"sh", "-c", "cat /proc/self/stat"}, &syscall.ProcAttr{Files: []uintptr{0, w.Fd(), 2}})
		w.Close()
		if err != nil {
			t.Error(err)
			return
		}
		out := make([]byte, 4096)
		k, _ := r.Read(out)
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
		disownProgram(pid)
		// Field 19 is nice; the command (field 2) has no space here.
		fields := strings.Fields(string(out[:k]))
		if len(fields) < 19 {
			t.Errorf("/proc/self/stat: %q", out[:k])
			return
		}
		if nice := fields[18]; nice != "0" {
			t.Errorf("program's nice %s, want 0 (the spawner's), not the caller thread's 7", nice)
		}
	}()
	<-done
}
