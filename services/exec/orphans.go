//go:build linux

package exec

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReapOrphans reaps, until ctx is done, the processes the kernel makes
// superd's children although superd did not start them: where superd is
// PID 1 (a container's first process) or a child subreaper, a program's
// descendant whose parent exits first (a background job, a daemon's
// double fork) is handed to superd, and a child nobody waits for stays a
// zombie for good. Each SIGCHLD, superd reaps those of its children that
// are not its programs (whose exits their connections wait for). Where
// superd is neither, orphans go elsewhere and it returns at once.
func ReapOrphans(ctx context.Context, log *slog.Logger) {
	if os.Getpid() != 1 && !isSubreaper() {
		return
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		reapOrphans(log)
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		case <-programReaped:
		}
	}
}

// isSubreaper reports whether superd is a child subreaper
// (PR_SET_CHILD_SUBREAPER, set by whoever started it).
func isSubreaper() bool {
	on := new(int32) // on the heap: the kernel writes it
	err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(on)), 0, 0, 0)
	return err == nil && *on != 0
}

// programs are the pids of the programs superd started and has not reaped
// yet. A start holds spawning (read) from before its fork until its pid is
// in programs, and reapOrphans holds it (write) while it looks, so a
// program that has just started and exited is never taken for an orphan.
//
// blocking is the program whose exit ended the last blind round (see
// reapOrphansBlind): orphans behind it wait for its reap, which sends on
// programReaped for another round (their SIGCHLDs were taken already).
var (
	spawning sync.RWMutex
	programs = struct {
		sync.Mutex
		pids     map[int]struct{}
		blocking int
	}{pids: map[int]struct{}{}}
	programReaped = make(chan struct{}, 1)
)

// ownProgram records pid as a program's; the caller holds spawning (read).
func ownProgram(pid int) {
	programs.Lock()
	programs.pids[pid] = struct{}{}
	programs.Unlock()
}

// disownProgram forgets pid, reaped.
func disownProgram(pid int) {
	programs.Lock()
	delete(programs.pids, pid)
	if programs.blocking == pid {
		programs.blocking = 0
		select {
		case programReaped <- struct{}{}:
		default: // a round is due already
		}
	}
	programs.Unlock()
}

func isProgram(pid int) bool {
	programs.Lock()
	defer programs.Unlock()
	_, ok := programs.pids[pid]
	return ok
}

// blockedBy reports whether pid is a program's, and if so has its reap
// start another round.
func blockedBy(pid int) bool {
	programs.Lock()
	defer programs.Unlock()
	_, ok := programs.pids[pid]
	if ok {
		programs.blocking = pid
	}
	return ok
}

// reapOrphans reaps every child of superd's that has exited and is not a
// program's.
func reapOrphans(log *slog.Logger) {
	spawning.Lock()
	defer spawning.Unlock()
	pids, _ := listChildren()
	for _, pid := range pids {
		if !isProgram(pid) {
			reapOrphan(pid, log) // only ever one of superd's children: wait4 takes no other
		}
	}
	// Where the list is missing, or its numbers are not superd's (a /proc
	// of another PID namespace), look the other way too.
	reapOrphansBlind(log)
}

// reapOrphan reaps pid if it has exited.
func reapOrphan(pid int, log *slog.Logger) {
	var ws syscall.WaitStatus
	for {
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err == nil && got == pid && log != nil {
			log.Debug("orphaned process reaped", "pid", pid, "status", ws.ExitStatus(), "signaled", ws.Signaled())
		}
		return
	}
}

// reapOrphansBlind reaps orphans without a list of superd's children
// (/proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN and a /proc of
// superd's PID namespace): it looks at one exited child at a time without
// reaping it, and reaps it if it is not a program's; a program's that has
// exited ends the round (the kernel shows it first again until its
// connection reaps it, and that reap starts another round).
func reapOrphansBlind(log *slog.Logger) {
	for {
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		pid := int((*chldInfo)(unsafe.Pointer(&info)).pid)
		if pid == 0 || blockedBy(pid) {
			return
		}
		reapOrphan(pid, log)
	}
}

// chldInfo is the start of a siginfo_t for a child's state change: the
// union of the signal's details starts after three int32s, aligned to a
// pointer (so at 16 bytes on 64-bit systems, at 12 on 32-bit ones), and
// the child's pid comes first in it.
type chldInfo struct {
	signo, errno, code int32
	_                  [unsafe.Sizeof(uintptr(0)) - 4]byte
	pid                int32
}

// listChildren is childPIDs; a test makes the list unreadable.
var listChildren = childPIDs

// childPIDs lists superd's children, from each of its threads' children
// file (an orphan is handed to one of the reaper's threads); false where
// there are none to read.
func childPIDs() ([]int, bool) {
	files, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil || len(files) == 0 {
		return nil, false
	}
	var pids []int
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			continue // the thread has exited
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids, true
}
