//go:build linux

package exec

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/internal/testkit"
)

// TestStderrConcurrentChildren: children of one service write to their
// shared stderr socket at once; every line is logged once, whole, with the
// pid of the child that wrote it.
func TestStderrConcurrentChildren(t *testing.T) {
	const children, lines = 6, 40
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "echo $$; i=0; while [ $i -lt `+strconv.Itoa(lines)+` ]; do echo \"pid $$ line $i\" >&2; i=$((i+1)); done"]`)
	pids := map[int]bool{}
	var hs []*handed
	for range children {
		client, server := tcpPair(t)
		h := serveConn(t, f, server, 0)
		hs = append(hs, h)
		pids[readPID(t, bufio.NewReader(client), client)] = true
	}
	for _, h := range hs {
		if err := h.wait(t, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if len(pids) != children {
		t.Fatalf("%d distinct pids from %d children", len(pids), children)
	}
	got := map[int][]string{}
	for _, l := range logs.with("program stderr") {
		pid, _ := strconv.Atoi(l["pid"])
		if !strings.HasPrefix(l["line"], "pid "+l["pid"]+" line ") || l["service"] != "x" {
			t.Errorf("logged as %v", l)
		}
		got[pid] = append(got[pid], l["line"])
	}
	for pid := range pids {
		if len(got[pid]) != lines {
			t.Errorf("pid %d: %d lines logged, want %d", pid, len(got[pid]), lines)
			continue
		}
		for i, line := range got[pid] {
			if want := fmt.Sprintf("pid %d line %d", pid, i); line != want {
				t.Errorf("pid %d: line %d is %q, want %q", pid, i, line, want)
			}
		}
	}
}

// TestStderrPartialLineAtExit: a last line without its newline is logged
// when the child is reaped, before its exit line.
func TestStderrPartialLineAtExit(t *testing.T) {
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "echo $$; echo whole >&2; printf 'no newline' >&2"]`)
	client, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	pid := readPID(t, bufio.NewReader(client), client)
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// ServeConn has returned: both lines are logged already, and before
	// the exit line.
	var order []string
	logs.mu.Lock()
	for _, r := range logs.records {
		switch r.Message {
		case "program stderr":
			r.Attrs(func(a slog.Attr) bool {
				switch a.Key {
				case "line":
					order = append(order, a.Value.String())
				case "pid":
					if a.Value.String() != strconv.Itoa(pid) {
						t.Errorf("line logged with pid %v, want %d", a.Value, pid)
					}
				}
				return true
			})
		case "program exited":
			order = append(order, "(exit)")
		}
	}
	logs.mu.Unlock()
	if want := []string{"whole", "no newline", "(exit)"}; strings.Join(order, "|") != strings.Join(want, "|") {
		t.Errorf("logged %q, want %q", order, want)
	}
}

// TestStderrGrandchild: a grandchild that inherits fd 2 is logged with
// its own pid; its partial line is flushed when the service stops.
func TestStderrGrandchild(t *testing.T) {
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "echo $$; /bin/sh -c 'echo \"grandchild $$\" >&2; printf \"partial $$\" >&2'; echo child >&2"]`)
	client, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	pid := readPID(t, bufio.NewReader(client), client)
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	f.StopFactory()
	var grand string
	seen := map[string]bool{}
	for _, l := range logs.with("program stderr") {
		fields := strings.Fields(l["line"])
		switch {
		case l["line"] == "child":
			if l["pid"] != strconv.Itoa(pid) {
				t.Errorf("the child's line logged with pid %s, want %d", l["pid"], pid)
			}
		case len(fields) == 2 && (fields[0] == "grandchild" || fields[0] == "partial"):
			if l["pid"] != fields[1] || l["pid"] == strconv.Itoa(pid) {
				t.Errorf("the grandchild's %q logged with pid %s (the child's is %d)", l["line"], l["pid"], pid)
			}
			grand = fields[1]
		default:
			t.Errorf("unexpected line %v", l)
		}
		seen[strings.TrimSuffix(l["line"], " "+grand)] = true
	}
	for _, w := range []string{"child", "grandchild", "partial"} {
		if !seen[w] {
			t.Errorf("%q not logged (logged: %v)", w, logs.with("program stderr"))
		}
	}
}

// TestStderrFloodBounded: a child that writes 200,000 lines and then 64
// MiB without a newline leaves superd's heap where it was; what is logged
// is bounded by the rate and the rest is counted.
func TestStderrFloodBounded(t *testing.T) {
	const nLines = 200000
	file := filepath.Join(t.TempDir(), "lines")
	var b strings.Builder
	for i := range nLines {
		fmt.Fprintf(&b, "flood %d\n", i)
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "exec cat `+file+` >&2"]`)
	var peak uint64
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
	}()
	start := time.Now()
	_, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	if err := h.wait(t, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)

	var logged, counted int
	for _, l := range logs.with("program stderr") {
		logged++
		n, _ := strconv.Atoi(l["suppressed_before"])
		counted += n
	}
	summaries := logs.with("program stderr lines not logged (too many)")
	for _, l := range summaries {
		n, _ := strconv.Atoi(l["lines"])
		counted += n
	}
	if len(summaries) != 1 {
		t.Errorf("%d summaries of lines not logged, want 1", len(summaries))
	}
	if limit := stderrBurst + int(el.Seconds()*stderrRate) + 1; logged > limit {
		t.Errorf("%d lines logged in %v; the limit is %d", logged, el, limit)
	}
	if logged+counted != nLines {
		t.Errorf("%d lines logged + %d counted as not logged = %d, want %d", logged, counted, logged+counted, nLines)
	}

	// 64 MiB without a newline: one line logged, cut; the rest skipped.
	f, logs = newTestFactory(t, `command = ["/bin/sh", "-c", "head -c 67108864 /dev/zero | tr '\\000' a >&2"]`)
	_, server = tcpPair(t)
	h = serveConn(t, f, server, 0)
	if err := h.wait(t, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	f.StopFactory() // tr is a grandchild: flushed at the stop
	close(stop)
	wg.Wait()
	lines := logs.with("program stderr")
	if len(lines) != 1 || lines[0]["line"] != strings.Repeat("a", maxStderrLine) || lines[0]["truncated"] != "true" {
		t.Errorf("64 MiB without a newline logged as %d lines", len(lines))
	}
	if grew := int64(peak) - int64(base); grew > 8<<20 {
		t.Errorf("the heap grew by %d bytes while children wrote %d bytes to stderr", grew, 64<<20+b.Len())
	}
	t.Logf("heap: %d bytes at the start, at most %d while flooded", base, peak)
}

// TestStderrPidsBounded: the state kept per writing process is capped;
// the process that wrote least recently is flushed to make room.
func TestStderrPidsBounded(t *testing.T) {
	logs := &logRecords{}
	s, err := newStderrLog(slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	s.mu.Lock()
	for pid := int32(1); pid <= 3*maxStderrPids; pid++ {
		s.write(pid, []byte("partial of "+strconv.Itoa(int(pid))))
		if len(s.pids) > maxStderrPids {
			t.Fatalf("%d processes kept, the cap is %d", len(s.pids), maxStderrPids)
		}
	}
	s.mu.Unlock()
	flushed := logs.with("program stderr")
	if len(flushed) != 2*maxStderrPids {
		t.Fatalf("%d partial lines flushed, want %d", len(flushed), 2*maxStderrPids)
	}
	for i, l := range flushed[:3] {
		if want := strconv.Itoa(i + 1); l["pid"] != want || l["line"] != "partial of "+want {
			t.Errorf("flushed %v, want pid %s's first", l, want)
		}
	}
}

// TestStderrLines: how bytes become lines (what bufio.Reader.ReadSlice
// with a 4 KiB buffer did for the pipe): cut at maxStderrLine with the
// rest of the line skipped, pieces joined, CR LF trimmed, empty lines
// kept.
func TestStderrLines(t *testing.T) {
	logs := &logRecords{}
	s, err := newStderrLog(slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	long := strings.Repeat("x", maxStderrLine)
	s.mu.Lock()
	for _, piece := range []string{"a", "b\n", "\r\n", "c\r\nd", "\n", long[:100], long[100:], "rest of it\n", long[1:] + "\n", "tail"} {
		s.write(7, []byte(piece))
	}
	s.end(7, s.pids[7])
	s.mu.Unlock()
	want := []string{"ab", "", "c", "d", long + " (truncated)", long[1:], "tail"}
	var got []string
	for _, l := range logs.with("program stderr") {
		line := l["line"]
		if l["truncated"] == "true" {
			line += " (truncated)"
		}
		got = append(got, line)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("logged\n%q\nwant\n%q", got, want)
	}
}

// TestStderrShutDown: a program that shuts its stderr down is warned
// about once, and the reader does not spin.
func TestStderrShutDown(t *testing.T) {
	logs := &logRecords{}
	s, err := newStderrLog(slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	unixShutdownWrite(t, int(s.fd()))
	waitFor(t, 5*time.Second, "the warning", func() bool {
		return len(logs.with("program stderr socket shut down by a program: the service's programs can no longer write to stderr")) == 1
	})
}

func unixShutdownWrite(t *testing.T, fd int) {
	t.Helper()
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
}

// TestStderrFloodDoesNotHoldExits: while writers flood the service's
// stderr (four here, with empty lines, each faster than superd reads), the exits of other
// children are handled at once: their connections end, though what they
// wrote is read first. The reader read the flood in one loop holding the
// log's lock until nothing was queued, which a flood never lets happen,
// and an exit waited for that lock: a client had its program's output but
// no end of stream for seconds (0.2 to 8 s measured).
func TestStderrFloodDoesNotHoldExits(t *testing.T) {
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "echo hi; echo bye $$ >&2"]`)
	chunk := []byte(strings.Repeat("\n", 64<<10))
	defer testkit.Repeat(4, func() bool {
		_, err := unix.Write(int(f.stderrLog.fd()), chunk)
		return err == nil
	})()
	waitFor(t, 10*time.Second, "the flood to be read", func() bool { return len(logs.with("program stderr")) > 0 })

	// Each connection takes milliseconds (a start, an exit, and the
	// queue, at most a few hundred KiB, read once).
	for range 5 {
		client, server := tcpPair(t)
		start := time.Now()
		h := serveConn(t, f, server, 0)
		client.SetReadDeadline(time.Now().Add(20 * time.Second))
		if b, err := io.ReadAll(client); err != nil || string(b) != "hi\n" {
			t.Fatalf("read %q, %v", b, err)
		}
		if err := h.wait(t, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el > 500*time.Millisecond {
			t.Errorf("the connection ended %v after it began, behind the flood", el)
		}
		if h.hc.PID == 0 {
			t.Fatal("no program recorded")
		}
		var bye bool
		for _, l := range logs.with("program stderr") {
			bye = bye || l["line"] == "bye "+strconv.Itoa(h.hc.PID)
		}
		if !bye {
			t.Errorf("the stderr line of %d was not logged by its exit", h.hc.PID)
		}
	}
}
