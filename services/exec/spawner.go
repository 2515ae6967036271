//go:build linux

package exec

import (
	"runtime"
	"sync"
	"syscall"
)

// spawn starts a program (syscall.StartProcess) on the process's spawner
// thread and records its pid as a program's (see programs).
//
// Go lets one fork happen at a time in a process: syscall.ForkLock is held
// from the clone until the child has called exec, which the vfork-style
// clone waits for, and that takes milliseconds on a busy machine. Starts
// from many connections therefore wait their turn anyway. Waiting for it
// on the lock, each start's goroutine is parked and woken on a thread of
// its own, and under load the handoffs between threads cost more than the
// fork: with exec /bin/echo per connection and 8 clients at once (CRX in
// make bench), superd spent 1.09-1.14 times the CPU per connection of a
// plain Go server starting programs with os/exec, and 1.00-1.04 times
// with the starts made one after another on one thread, which forks back
// to back while connections queue (BenchmarkSpawnConcurrent shows the
// same in this package).
func spawn(path string, argv []string, attr *syscall.ProcAttr) (pid int, err error) {
	r := &spawnRequest{path: path, argv: argv, attr: attr, done: make(chan struct{})}
	spawnRequests() <- r
	<-r.done
	return r.pid, r.err
}

// spawnRequest is one start for the spawner thread; done is closed when
// pid and err are set.
type spawnRequest struct {
	path string
	argv []string
	attr *syscall.ProcAttr

	pid  int
	err  error
	done chan struct{}
}

// spawnRequests is the spawner's queue; the spawner is started on first
// use and lives for the process, as the fork lock it takes turns for
// does. The buffer lets a start queue without waking anyone but the
// spawner: its caller sleeps once, until done.
var spawnRequests = sync.OnceValue(func() chan<- *spawnRequest {
	reqs := make(chan *spawnRequest, 64)
	go runSpawner(reqs)
	return reqs
})

// runSpawner makes the starts queued on reqs, one after another, on a
// thread of its own. The thread is locked so that nothing else runs on it,
// and a child never inherits another goroutine's thread state (nice,
// scheduling policy and CPU affinity are per thread on Linux).
func runSpawner(reqs <-chan *spawnRequest) {
	runtime.LockOSThread()
	for r := range reqs {
		spawning.RLock() // see programs
		r.pid, _, r.err = syscall.StartProcess(r.path, r.argv, r.attr)
		if r.err == nil {
			ownProgram(r.pid)
		}
		spawning.RUnlock()
		close(r.done)
	}
}
