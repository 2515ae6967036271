//go:build linux

package exec

import (
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/metrics"
)

// ServeListener runs one child with the listening socket (wait mode): as
// fd 0 and 1 (inetd), or as fd 3 with LISTEN_FDS=1, LISTEN_PID and
// LISTEN_FDNAMES (systemd) under listen_fds. It returns when the child has
// exited, after the delay the endpoint's restarts call for.
func (f *Factory) ServeListener(l *framework.HandedListener) error {
	sock, devNull := int(l.File.Fd()), int(f.devNull.Fd())
	var fds []int
	var env []string
	if f.listenFDs {
		fds = []int{devNull, devNull, sock}
		env = []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=" + fdName(f.service)}
	} else {
		fds = []int{sock, sock}
	}
	r := f.restartsOf(l.Endpoint)
	ch, err := f.start(fds, env, "", f.listenFDs)
	if err != nil {
		delay := r.failed()
		f.log.Error("cannot start program; retrying", "program", f.path, "endpoint", l.Endpoint, "err", err, "delay", delay)
		sleep(delay, l.Stopping.Done())
		return &framework.RejectError{Reason: metrics.RejectSpawn, Err: err}
	}
	f.log.Info("program started for waiting connections", "pid", ch.pid, "endpoint", l.Endpoint)
	unwatch := ch.watch(l.Stopping, l.Killed)
	ws, err := ch.wait()
	unwatch()
	ended := time.Now()
	quick := ended.Sub(ch.start) < quickExit
	failed := err != nil || !ws.Exited() || ws.ExitStatus() != 0
	switch {
	case quick && failed:
		delay := r.failed()
		f.log.Warn("program ended soon after its start; restarting after a delay",
			"pid", ch.pid, "endpoint", l.Endpoint, "delay", delay)
		sleep(delay, l.Stopping.Done())
	case quick && pending(l.File):
		if delay, looping := r.ranLeavingInput(ended); looping {
			f.log.Warn("program started too often, each run ending at once with input still waiting; restarting after a delay",
				"pid", ch.pid, "endpoint", l.Endpoint, "starts", r.quickRuns, "within", loopWindow, "delay", delay)
			sleep(delay, l.Stopping.Done())
		}
	default:
		r.reset()
	}
	return nil
}

// restartsOf returns the restart record of the wait-mode endpoint with
// the given label (each endpoint backs off on its own).
func (f *Factory) restartsOf(endpoint string) *restarts {
	f.restartsMu.Lock()
	defer f.restartsMu.Unlock()
	if f.restarts == nil {
		f.restarts = map[string]*restarts{}
	}
	r := f.restarts[endpoint]
	if r == nil {
		r = &restarts{}
		f.restarts[endpoint] = r
	}
	return r
}

// restarts is one wait-mode endpoint's restart policy. A child that fails
// within quickExit of its start (exits non-zero or by a signal), or that
// cannot be started, delays the next start by 1 s, doubling to 1 min. A
// child that exits 0 at once with input still waiting is restarted at
// once: a program that answers one datagram or one connection per run
// does just that. Only when that happens more than maxQuickRuns times
// within loopWindow (inetd's rule for a looping service: a program that
// never takes what woke it would otherwise be restarted in a busy loop)
// is the next start delayed as after a failure. A run that lasts, or that
// leaves nothing waiting, clears both. The calls for one endpoint come one
// at a time (the framework watches the socket again only after
// ServeListener returns), so restarts needs no lock.
type restarts struct {
	delay     time.Duration
	since     time.Time // when the current window of quick runs began
	quickRuns int       // quick runs leaving input waiting, since then
}

const (
	quickExit    = time.Second
	minBackoff   = time.Second
	maxBackoff   = time.Minute
	loopWindow   = time.Minute
	maxQuickRuns = 256
)

// failed returns the delay before the next start after a quick failure.
func (r *restarts) failed() time.Duration {
	if r.delay == 0 {
		r.delay = minBackoff
	} else {
		r.delay = min(2*r.delay, maxBackoff)
	}
	return r.delay
}

// ranLeavingInput records a run that ended at now, within quickExit of
// its start, with input still waiting; it returns the delay before the
// next start when such runs come too often.
func (r *restarts) ranLeavingInput(now time.Time) (time.Duration, bool) {
	if r.quickRuns == 0 || now.Sub(r.since) > loopWindow {
		r.since, r.quickRuns = now, 0
	}
	r.quickRuns++
	if r.quickRuns <= maxQuickRuns {
		return 0, false
	}
	return r.failed(), true
}

func (r *restarts) reset() {
	r.delay, r.quickRuns = 0, 0
}

// pending reports whether the listening socket still has input queued.
func pending(file *os.File) bool {
	fds := []unix.PollFd{{Fd: int32(file.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// sleep waits d, or less when stop closes.
func sleep(d time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
	}
}

// fdName makes a LISTEN_FDNAMES entry: systemd allows printable ASCII
// without ':' (which separates names), up to 255 characters.
func fdName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r <= ' ' || r > '~' || r == ':' {
			r = '_'
		}
		b.WriteRune(r)
	}
	out := b.String()
	if len(out) > 255 {
		out = out[:255]
	}
	return out
}
