package accesslog

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
