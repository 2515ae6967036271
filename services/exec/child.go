package exec

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// child is one running program.
type child struct {
	f     *Factory
	proc  *os.Process
	pid   int
	peer  string // for the exit line; "" in wait mode
	start time.Time
	// stderrDone is closed when the stderr logger has read everything
	// (nil without one).
	stderrDone chan struct{}
}

// start starts the program with files as its fd 0, 1, ... (fd 2 is set
// here, per the stderr attribute) and env added to the base environment.
func (f *Factory) start(files []*os.File, env []string, peer string, listenPID bool) (*child, error) {
	all := make([]*os.File, 0, 3+len(files))
	all = append(all, files[0], files[1])
	var stderrR, stderrW *os.File
	switch f.stderr {
	case StderrLog:
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		stderrR, stderrW = r, w
		all = append(all, w)
	case StderrInherit:
		all = append(all, os.Stderr)
	default:
		all = append(all, f.devNull)
	}
	all = append(all, files[2:]...)

	path, argv := f.path, f.argv
	st := f.setup
	st.listenPID = listenPID
	if st.needed() {
		path = "/proc/self/exe"
		argv = append([]string{shimName, st.encode(), f.path}, f.argv...)
	}
	attr := &os.ProcAttr{
		Dir:   f.dir,
		Env:   append(append(make([]string, 0, len(f.baseEnv)+len(env)), f.baseEnv...), env...),
		Files: all,
		Sys: &syscall.SysProcAttr{
			Setsid:     true, // its own session and process group, no terminal
			Credential: f.cred,
		},
	}
	f.children.Add(1)
	proc, err := os.StartProcess(path, argv, attr)
	if stderrW != nil {
		stderrW.Close() // the child has its own copy
	}
	if err != nil {
		f.children.Done()
		if stderrR != nil {
			stderrR.Close()
		}
		return nil, err
	}
	c := &child{f: f, proc: proc, pid: proc.Pid, peer: peer, start: time.Now()}
	f.procs.Inc()
	if stderrR != nil {
		c.stderrDone = make(chan struct{})
		go c.logStderr(stderrR)
	}
	return c, nil
}

// wait reaps the child (it runs as soon as the child exits, so no zombie
// stays), logs its exit and counts it. It reports whether the child exited
// with status 0.
func (c *child) wait() (*os.ProcessState, error) {
	state, err := c.proc.Wait()
	c.f.children.Done()
	c.f.procs.Dec()
	if err != nil {
		c.f.log.Error("cannot wait for program", "pid", c.pid, "err", err)
		return nil, err
	}
	dur := time.Since(c.start)
	attrs := []any{"pid", c.pid}
	if c.peer != "" {
		attrs = append(attrs, "peer", c.peer)
	}
	ws := state.Sys().(syscall.WaitStatus)
	result := ResultSuccess
	switch {
	case ws.Signaled():
		result = ResultSignal
		attrs = append(attrs, "signal", unix.SignalName(ws.Signal()))
	case ws.ExitStatus() != 0:
		result = ResultFailure
		attrs = append(attrs, "status", ws.ExitStatus())
	default:
		attrs = append(attrs, "status", 0)
	}
	attrs = append(attrs, "duration", dur.Round(time.Microsecond))
	c.f.results[result].Inc()
	c.f.log.Info("program exited", attrs...)
	return state, nil
}

// signal sends sig to the child's process group (its descendants too,
// unless they left it).
func (c *child) signal(sig syscall.Signal) {
	if err := syscall.Kill(-c.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		c.f.log.Warn("cannot signal program", "pid", c.pid, "signal", unix.SignalName(sig), "err", err)
	}
}

// watch sends stop_signal when stopping closes and SIGKILL when killed
// closes, until done closes. It reports (through the returned func, once
// done) whether the child was killed.
func (c *child) watch(stopping, killed <-chan struct{}, done <-chan struct{}) (wasKilled func() bool) {
	var mu sync.Mutex
	k := false
	go func() {
		for stopping != nil || killed != nil {
			select {
			case <-done:
				return
			case <-stopping:
				stopping = nil
				c.signal(c.f.stopSignal)
			case <-killed:
				killed = nil
				mu.Lock()
				k = true
				mu.Unlock()
				c.signal(syscall.SIGKILL)
			}
		}
	}()
	return func() bool { mu.Lock(); defer mu.Unlock(); return k }
}

// Stderr logging is bounded: lines are cut at maxStderrLine bytes and at
// most stderrBurst lines are logged at once, refilling stderrRate per
// second; what is left out is counted in the next line logged. A child
// that floods its stderr costs superd a fixed buffer and is slowed down by
// the pipe, never more memory.
const (
	maxStderrLine = 4096
	stderrRate    = 50
	stderrBurst   = 100
)

func (c *child) logStderr(r *os.File) {
	defer close(c.stderrDone)
	defer r.Close()
	br := bufio.NewReaderSize(r, maxStderrLine)
	tokens, last := float64(stderrBurst), time.Now()
	suppressed := 0
	cut := false // the rest of an over-long line follows
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			full := len(line) > 0 && line[len(line)-1] == '\n'
			skip := cut
			cut = !full && errors.Is(err, bufio.ErrBufferFull)
			if !skip {
				now := time.Now()
				tokens = min(stderrBurst, tokens+now.Sub(last).Seconds()*stderrRate)
				last = now
				if tokens >= 1 {
					tokens--
					text := string(bytes.TrimRight(line, "\r\n"))
					attrs := []any{"pid", c.pid, "line", text}
					if cut {
						attrs = append(attrs, "truncated", true)
					}
					if suppressed > 0 {
						attrs = append(attrs, "suppressed_before", suppressed)
						suppressed = 0
					}
					c.f.log.Info("program stderr", attrs...)
				} else {
					suppressed++
				}
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if suppressed > 0 {
				c.f.log.Warn("program stderr lines not logged (too many)", "pid", c.pid, "lines", suppressed)
			}
			if !errors.Is(err, io.EOF) {
				c.f.log.Debug("program stderr read failed", "pid", c.pid, "err", err)
			}
			return
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
