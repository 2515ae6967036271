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
// exited; a child that fails soon after its start (exits non-zero, or
// exits leaving connections queued that it never took) delays the next
// start, 1 s doubling to 1 min.
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
	ch, err := f.start(fds, env, "", f.listenFDs)
	if err != nil {
		delay := f.backoff.failed()
		f.log.Error("cannot start program; retrying", "program", f.path, "endpoint", l.Endpoint, "err", err, "delay", delay)
		sleep(delay, l.Stopping.Done())
		return &framework.RejectError{Reason: metrics.RejectSpawn, Err: err}
	}
	f.log.Info("program started for waiting connections", "pid", ch.pid, "endpoint", l.Endpoint)
	unwatch := ch.watch(l.Stopping, l.Killed)
	ws, err := ch.wait()
	unwatch()
	quick := time.Since(ch.start) < quickExit
	failed := err != nil || !ws.Exited() || ws.ExitStatus() != 0
	if quick && (failed || pending(l.File)) {
		delay := f.backoff.failed()
		f.log.Warn("program ended soon after its start; restarting after a delay",
			"pid", ch.pid, "endpoint", l.Endpoint, "delay", delay)
		sleep(delay, l.Stopping.Done())
	} else {
		f.backoff.reset()
	}
	return nil
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
