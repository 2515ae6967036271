package accesslog

import (
	"bufio"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/internal/testkit"
)

// pollUntil polls cond until it holds or the deadline passes.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s: not within 5s", what)
		}
	}
}

// A write that fails (a full disk; here a pipe whose reader went away)
// loses the lines it held, counted as dropped, and no more: once the file
// takes writes again, the lines after it are written. bufio.Writer's error
// is sticky, and kept, it silenced the log for good, uncounted.
func TestWriteErrorIsCountedAndLoggingResumes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader first, so that the logger's open does not block.
	r1, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	l, err := Open(path, FormatText, dropped)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r1.Close() // writes fail now (EPIPE)

	lost := sample
	lost.Service = "lost"
	l.Log(lost)
	pollUntil(t, "the failed line counted as dropped", func() bool { return testutil.ToFloat64(dropped) == 1 })

	r2, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	kept := sample
	kept.Service = "kept"
	l.Log(kept)
	r2.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(r2).ReadString('\n')
	if err != nil {
		t.Fatalf("no line once the file takes writes again: %v", err)
	}
	if !strings.Contains(line, "service=kept ") {
		t.Errorf("line %q, want the one logged after the failure", line)
	}
	if got := testutil.ToFloat64(dropped); got != 1 {
		t.Errorf("dropped = %v, want 1", got)
	}
}

// A line that comes after Close (a connection that ended as a reload
// swapped the log for another) is not written, and is counted as dropped
// like any line that could not be written.
func TestLineAfterCloseIsCounted(t *testing.T) {
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	l, err := Open(filepath.Join(t.TempDir(), "access.log"), FormatJSON, dropped)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	l.Log(sample)
	if got := testutil.ToFloat64(dropped); got != 1 {
		t.Errorf("dropped = %v, want 1", got)
	}
}

// stuckPipe opens a logger on a FIFO whose reader never reads, and logs
// until the writer is blocked in write(2) on the full pipe (lines pile up
// in the queue again). The reader is closed at the end of the test.
func stuckPipe(t *testing.T) (*Logger, prometheus.Counter, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "access.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	var l *Logger
	t.Cleanup(func() { l.Close() }) // after the reader's close, which unsticks it
	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	l, err = Open(path, FormatText, dropped)
	if err != nil {
		t.Fatal(err)
	}
	// A pipe holds 64 KiB; lines of about 200 bytes fill it and the
	// writer's buffer within a few thousand.
	for i := 0; i < 2000; i++ {
		l.Log(sample)
	}
	pollUntil(t, "the writer blocked on the full pipe", func() bool {
		l.Log(sample)
		return len(l.queue) > 0
	})
	return l, dropped, path
}

// returnsWithin fails the test unless f returns within d.
func returnsWithin(t *testing.T, what string, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

// Close does not wait for good for a writer that the file does not let
// write (a FIFO whose reader stopped reading): superd's exit waited for
// it forever, deaf to a second SIGTERM. What is still unwritten is dropped
// and counted.
func TestCloseOnStuckPipeReturns(t *testing.T) {
	l, dropped, _ := stuckPipe(t)
	returnsWithin(t, "Close", 10*time.Second, func() { l.Close() })
	if testutil.ToFloat64(dropped) == 0 {
		t.Error("the lines Close gave up on were not counted as dropped")
	}
}

// Reopen (SIGUSR1) is not held for good by a writer stuck on the old file
// (it held every later reload and reopen), and the new file gets the lines
// after it.
func TestReopenOnStuckPipeReturns(t *testing.T) {
	l, _, path := stuckPipe(t)
	// The rotation: the FIFO moves away and a regular file takes its path.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	returnsWithin(t, "Reopen", 10*time.Second, func() {
		if err := l.Reopen(); err != nil {
			t.Error(err)
		}
	})
	kept := sample
	kept.Service = "after-reopen"
	pollUntil(t, "a line in the new file", func() bool {
		l.Log(kept)
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), "service=after-reopen ")
	})
}

// A write that fails (a full disk; here a pipe whose reader went away) is
// logged, not only counted: a warning with the error, at most every
// warnEvery however many writes fail, and a line once the file takes
// writes again. Before, nothing said that the access log had stopped.
func TestWriteErrorIsLogged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	r1, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	l, err := Open(path, FormatText, dropped)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var out testkit.Buffer
	l.SetErrorLog(slog.New(slog.NewTextHandler(&out, nil)))
	r1.Close() // writes fail now (EPIPE)

	for i := 1; i <= 50; i++ {
		l.Log(sample)
		pollUntil(t, "the failed line counted", func() bool { return testutil.ToFloat64(dropped) == float64(i) })
	}
	if got := strings.Count(out.String(), "cannot write the access log"); got != 1 {
		t.Fatalf("%d warnings for 50 failed writes, want 1:\n%s", got, out.String())
	}
	if !strings.Contains(out.String(), "broken pipe") || !strings.Contains(out.String(), path) {
		t.Errorf("the warning does not say what failed, where:\n%s", out.String())
	}

	r2, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	l.Log(sample)
	pollUntil(t, "the recovery logged", func() bool {
		return strings.Contains(out.String(), "access log takes writes again")
	})
	if !strings.Contains(out.String(), "dropped=50") {
		t.Errorf("the recovery line does not say how many lines were lost:\n%s", out.String())
	}
}
