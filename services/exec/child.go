//go:build linux

package exec

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// child is one running program.
type child struct {
	f     *Factory
	pid   int
	peer  string // for the exit line; "" in wait mode
	start time.Time
	// pidfd is the child's pidfd, watched by the runtime's poller: the
	// goroutine waiting for the child parks instead of holding a thread in
	// waitid. nil where pidfds do not work (the wait then blocks a thread).
	pidfd *os.File

	mu     sync.Mutex
	reaped bool // its pid, and process group id, may be another's now: no more signals
	killed bool // sent SIGKILL when the drain ran out of time (Killed) while it ran
}

// start starts the program with fds as its fd 0, 1, ... (fd 2 is set here,
// per the stderr attribute) and env added to the base environment. The
// descriptors are put in the child as they are (blocking mode is the
// caller's business).
func (f *Factory) start(fds []int, env []string, peer string, listenPID bool) (*child, error) {
	all := make([]uintptr, 0, 3+len(fds))
	all = append(all, uintptr(fds[0]), uintptr(fds[1]))
	switch {
	case f.stderrLog != nil:
		// The service's stderr socket, shared by its children: nothing
		// to make or watch per child.
		all = append(all, f.stderrLog.fd())
	case f.stderr == StderrInherit:
		all = append(all, os.Stderr.Fd())
	default:
		all = append(all, f.devNull.Fd())
	}
	for _, fd := range fds[2:] {
		all = append(all, uintptr(fd))
	}

	path, argv, dir := f.path, f.argv, f.dir
	st := f.setup
	st.listenPID = listenPID
	cred := f.cred
	var report, reportW *os.File // the shim's report pipe
	if st.needed() {
		// The shim takes on the user after nice and rlimits, and enters
		// the directory after the user (as Go's own start does). What it
		// cannot do fails the start, as a failed exec does: it says why
		// on a pipe of its own, which its exec of the program closes.
		var err error
		if report, reportW, err = os.Pipe(); err != nil {
			return nil, err
		}
		st.report = len(all)
		all = append(all, reportW.Fd())
		st.cred, cred = f.cred, nil
		st.dir, dir = f.dir, ""
		path = "/proc/self/exe"
		argv = append([]string{shimName, st.encode(), f.path}, f.argv...)
	}
	sys := &syscall.SysProcAttr{
		Setsid:     true, // its own session and process group, no terminal
		Credential: cred,
	}
	pidfd := -1
	if pidfdWorks() {
		sys.PidFD = &pidfd
	}
	f.children.Add(1)
	pid, err := spawn(path, argv, &syscall.ProcAttr{
		Dir:   dir,
		Env:   append(append(make([]string, 0, len(f.baseEnv)+len(env)), f.baseEnv...), env...),
		Files: all,
		Sys:   sys,
	})
	if reportW != nil {
		reportW.Close() // the child's copy is the one that ends at its exec
	}
	if err != nil {
		if report != nil {
			report.Close()
		}
		f.children.Done()
		if dir != "" {
			// The child enters dir before its exec, and either failing
			// gives only an errno: a directory gone, or one the user may
			// not enter, says it is the one.
			if _, serr := os.Stat(dir); serr != nil || !enterable(dir, cred) {
				return nil, &os.PathError{Op: "chdir", Path: dir, Err: err}
			}
		}
		return nil, &os.PathError{Op: "fork/exec", Path: path, Err: err}
	}
	c := &child{f: f, pid: pid, peer: peer, start: time.Now()}
	if pidfd >= 0 {
		c.pidfd = pollable(pidfd, "pidfd")
	}
	if report != nil {
		if err := c.shimReport(report); err != nil {
			return nil, err
		}
	}
	f.procs.Inc()
	return c, nil
}

// shimReport waits until the shim has started the program (its report
// pipe ends at the exec) or failed (it says why, and exits); a shim that
// failed is reaped here, and its start fails. It closes r.
func (c *child) shimReport(r *os.File) error {
	why, _ := io.ReadAll(io.LimitReader(r, 4<<10))
	r.Close()
	if len(why) == 0 {
		return nil
	}
	c.reap()
	if c.f.stderrLog != nil {
		c.f.stderrLog.exited(c.pid)
	}
	c.f.children.Done()
	return &os.PathError{Op: "start", Path: c.f.path, Err: errors.New(string(why))}
}

// wait reaps the child (it runs as soon as the child exits, so no zombie
// stays), logs its exit and counts it.
func (c *child) wait() (syscall.WaitStatus, error) {
	ws, err := c.reap()
	if c.f.stderrLog != nil {
		// What it left on stderr is logged before its exit.
		c.f.stderrLog.exited(c.pid)
	}
	c.f.children.Done()
	c.f.procs.Dec()
	if err != nil {
		c.f.log.Error("cannot wait for program", "pid", c.pid, "err", err)
		return 0, err
	}
	dur := time.Since(c.start)
	result, status := ResultSuccess, slog.Int("status", 0)
	switch {
	case ws.Signaled():
		result, status = ResultSignal, slog.String("signal", unix.SignalName(ws.Signal()))
	case ws.ExitStatus() != 0:
		result, status = ResultFailure, slog.Int("status", ws.ExitStatus())
	}
	c.f.results[result].Inc()
	// The exit line's attributes are built only when it is logged.
	if ctx := context.Background(); c.f.log.Enabled(ctx, slog.LevelInfo) {
		pid, took := slog.Int("pid", c.pid), slog.Duration("duration", dur.Round(time.Microsecond))
		if c.peer != "" {
			c.f.log.LogAttrs(ctx, slog.LevelInfo, "program exited", pid, slog.String("peer", c.peer), status, took)
		} else {
			c.f.log.LogAttrs(ctx, slog.LevelInfo, "program exited", pid, status, took)
		}
	}
	return ws, nil
}

// reap waits until the child has exited and reaps it. With a pidfd the
// goroutine parks in the runtime's poller until the pidfd is readable (the
// child has exited); otherwise it blocks in waitid.
func (c *child) reap() (syscall.WaitStatus, error) {
	if c.pidfd != nil {
		defer c.pidfd.Close()
		if rc, err := c.pidfd.SyscallConn(); err == nil {
			var ws syscall.WaitStatus
			var werr error
			if err := rc.Read(func(uintptr) bool {
				var done bool
				done, ws, werr = c.tryReap()
				return done
			}); err == nil {
				return ws, werr
			}
		}
		// The poller did not take the pidfd: wait below.
	}
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, c.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			c.mu.Lock()
			c.reaped = true
			c.mu.Unlock()
			return 0, os.NewSyscallError("waitid", err)
		}
	}
	_, ws, err := c.tryReap()
	return ws, err
}

// tryReap reaps the child if it has exited; done reports whether it has
// (or cannot be waited for). Once it is reaped, signal sends nothing.
func (c *child) tryReap() (done bool, ws syscall.WaitStatus, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		var pid int
		pid, err = syscall.Wait4(c.pid, &ws, syscall.WNOHANG, nil)
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			c.reaped = true
			disownProgram(c.pid)
			return true, 0, os.NewSyscallError("wait4", err)
		case pid == 0:
			return false, 0, nil // still running
		}
		c.reaped = true
		disownProgram(c.pid)
		return true, ws, nil
	}
}

// signalLocked sends sig to the child's process group (its descendants
// too, unless they left it), unless the child has been reaped; it reports
// whether it was sent. c.mu is held.
func (c *child) signalLocked(sig syscall.Signal) bool {
	if c.reaped {
		return false
	}
	if err := syscall.Kill(-c.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		c.f.log.Warn("cannot signal program", "pid", c.pid, "signal", unix.SignalName(sig), "err", err)
	}
	return true
}

// stopSignal sends stop_signal to the child's process group, followed by
// SIGCONT, as systemd and s6 do: a stopped process (SIGSTOP, a debugger)
// would keep a handled stop_signal pending until SIGKILL, its cleanup
// never run; a running one takes SIGCONT as nothing.
func (c *child) stopSignal() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.signalLocked(c.f.stopSignal) && c.f.stopSignal != syscall.SIGKILL && c.f.stopSignal != syscall.SIGCONT {
		c.signalLocked(syscall.SIGCONT)
	}
}

// kill sends SIGKILL to the child's process group because the drain ran
// out of time (shutdown_timeout): the connection then ends as
// shutdown_timeout (wasKilled).
func (c *child) kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.signalLocked(syscall.SIGKILL) {
		c.killed = true
	}
}

// wasKilled reports whether the child was sent SIGKILL at
// shutdown_timeout while it ran.
func (c *child) wasKilled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.killed
}

// watch sends stop_signal when stopping is done and SIGKILL when killed
// is done, until the returned func is called (once the child is reaped).
// No goroutine waits meanwhile: the functions run only if the contexts are
// done.
func (c *child) watch(stopping, killed context.Context) (stop func()) {
	stopStop := context.AfterFunc(stopping, c.stopSignal)
	stopKill := context.AfterFunc(killed, c.kill)
	return func() {
		stopStop()
		stopKill()
	}
}

// stop ends the child for a reason of its connection's own (idle_timeout):
// it sends stop_signal now and, if the child is still running after
// grace, SIGKILL, so that a program ignoring stop_signal does not keep its
// process and its connection slot until superd stops. The connection's
// end stays its own (wasKilled is not set). The caller stops the returned
// timer once the child is reaped; should it fire first, it sends nothing.
func (c *child) stop(grace time.Duration) *time.Timer {
	c.stopSignal()
	return time.AfterFunc(grace, func() {
		// Logged under mu, before the signal: the reap (which takes mu)
		// and the connection's end then come after the line, never
		// before it.
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.reaped {
			c.f.log.Warn("program still running after stop_signal; killed",
				"pid", c.pid, "peer", c.peer, "reason", "idle_timeout", "grace", grace)
			c.signalLocked(syscall.SIGKILL)
		}
	})
}

// enterable reports whether dir may be entered as cred's user (nil:
// superd's own), from the permission bits of dir and of every directory
// above it (ACLs aside): the search permission that chdir needs.
func enterable(dir string, cred *syscall.Credential) bool {
	if cred == nil {
		return unix.Access(dir, unix.X_OK) == nil
	}
	if cred.Uid == 0 {
		return true
	}
	path, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return true // nothing to tell
	}
	groups := cred.Groups
	if cred.NoSetGroups { // the child keeps superd's
		gs, _ := os.Getgroups()
		groups = make([]uint32, len(gs))
		for i, g := range gs {
			groups[i] = uint32(g)
		}
	}
	for p := path; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil {
			return true
		}
		var bit uint32 = 0o001 // others
		switch {
		case st.Uid == cred.Uid:
			bit = 0o100
		case st.Gid == cred.Gid || slices.Contains(groups, st.Gid):
			bit = 0o010
		}
		if st.Mode&bit == 0 {
			return false
		}
		if p == "/" || p == "." {
			return true
		}
	}
}

// closeInheritedOnExec marks every descriptor superd inherited from its
// own parent close-on-exec, so none reaches a child (Go opens its own with
// O_CLOEXEC already).
var closeInheritedOnce sync.Once

func closeInheritedOnExec() {
	closeInheritedOnce.Do(func() {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			// Not Linux-like: close-on-exec from 3 up, as far as it goes.
			for fd := 3; fd < 1024; fd++ {
				syscall.CloseOnExec(fd)
			}
			return
		}
		for _, e := range entries {
			fd, err := strconv.Atoi(e.Name())
			if err == nil && fd > 2 {
				syscall.CloseOnExec(fd)
			}
		}
	})
}

// defaultSignalsForChildren makes every signal that superd ignores reach a
// child with its default disposition, as inetd and systemd start programs:
// an ignored signal stays ignored across exec, so a superd started under
// nohup (SIGHUP ignored) or as a shell's background job (SIGINT, SIGQUIT)
// would hand that on, and a program would ignore a stop_signal = "SIGHUP".
// Signals the Go runtime catches are reset by exec already; for an ignored
// one, superd catches it into a channel that is never read: superd itself
// still ignores it, the child does not. Signals 32 and 33, which the C
// library reserves and the runtime leaves alone (os/signal cannot catch
// them), stay as superd got them. Called at each factory start (a signal
// may have been ignored since, with signal.Ignore).
var ignoredSignalsSink = make(chan os.Signal, 1)

func defaultSignalsForChildren() {
	for sig := syscall.Signal(1); sig <= sigRTMax; sig++ {
		if !libcSignal(sig) && sig != syscall.SIGKILL && sig != syscall.SIGSTOP && signal.Ignored(sig) {
			signal.Notify(ignoredSignalsSink, sig)
		}
	}
}

// sigRTMax is Linux's last signal (SIGRTMAX).
const sigRTMax = syscall.Signal(64)

// libcSignal reports whether sig is one of the two the C library keeps for
// itself (glibc's SIGCANCEL and SIGSETXID).
func libcSignal(sig syscall.Signal) bool { return sig == 32 || sig == 33 }

// pidfdWorks reports whether children can be started with a pidfd that
// waitid accepts (Linux 5.4 and later, unless a seccomp filter forbids it).
var pidfdWorks = sync.OnceValue(func() bool {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var info unix.Siginfo
	// superd is not its own parent: ECHILD says P_PIDFD is understood.
	return unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG, nil) == unix.ECHILD
})

// pollable makes a descriptor superd just created, with no status flag set,
// an *os.File in the runtime's poller (which takes non-blocking ones).
func pollable(fd int, name string) *os.File {
	unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_NONBLOCK)
	return os.NewFile(uintptr(fd), name)
}
