package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// logfileService is the configuration of one logfile service "audit" on
// addr writing to logPath, with extra attributes.
func logfileService(t *testing.T, addr, logPath, extra string) (cfgPath, metricsAddr string) {
	t.Helper()
	return writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "20s"
service "logfile" "audit" {
  path = %q
%s
  endpoint "tcp" { address = %q }
}
`, logPath, extra, addr))
}

var auditLabels = map[string]string{"service": "audit", "factory": "logfile"}

// logfileWaitMetric polls until the series has the value, for up to
// timeout.
func logfileWaitMetric(d *daemon, name string, labels map[string]string, want float64, timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, ok := metric(d.scrape(), name, labels)
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s%v = %v (present %v), want %v", name, labels, got, ok, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logfileWaitFile polls until the file holds exactly want (as a multiset
// of lines, each ending in LF), for up to timeout.
func logfileWaitFile(t *testing.T, path string, want []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil && logfileSameLines(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after %v: %q (%v), want lines %q", path, timeout, b, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logfileSameLines reports whether content is exactly the lines of want, in
// any order, each once, each ending in LF.
func logfileSameLines(content string, want []string) bool {
	if len(want) == 0 {
		return content == ""
	}
	if !strings.HasSuffix(content, "\n") {
		return false
	}
	got := strings.Split(strings.TrimSuffix(content, "\n"), "\n")
	w := slices.Clone(want)
	slices.Sort(got)
	slices.Sort(w)
	return slices.Equal(got, w)
}

// logfileCheck compares the file with want line by line and reports
// missing, repeated and unexpected lines.
func logfileCheck(t *testing.T, path string, want []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	content := string(b)
	if len(want) > 0 && !strings.HasSuffix(content, "\n") {
		t.Errorf("%s does not end with a newline", path)
	}
	if strings.Contains(content, "\r") {
		t.Errorf("%s holds a CR", path)
	}
	count := map[string]int{}
	if content != "" {
		for _, l := range strings.Split(strings.TrimSuffix(content, "\n"), "\n") {
			count[l]++
		}
	}
	var missing, repeated []string
	for _, w := range want {
		switch count[w] {
		case 0:
			missing = append(missing, w)
		case 1:
		default:
			repeated = append(repeated, w)
		}
		delete(count, w)
	}
	var extra []string
	for l := range count {
		extra = append(extra, l)
	}
	report := func(what string, ls []string) {
		if len(ls) > 0 {
			slices.Sort(ls)
			t.Errorf("%s: %d %s lines, e.g. %.120q", path, len(ls), what, ls[0])
		}
	}
	report("missing", missing)
	report("repeated", repeated)
	report("unexpected (torn, interleaved or partial)", extra)
}

// logfileDial connects to addr.
func logfileDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// logfileSend writes s, failing the test on error.
func logfileSend(t *testing.T, c net.Conn, s string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

// logfileExpectClosed checks that the server closes c; it sends nothing.
func logfileExpectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server did not close the connection")
	}
	if n != 0 {
		t.Fatalf("the server sent %d bytes", n)
	}
	c.Close()
}

// logfileUmask reads the umask superd inherits from this process.
func logfileUmask(t *testing.T) os.FileMode {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status:", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Umask:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				t.Fatal(err)
			}
			return os.FileMode(n)
		}
	}
	t.Skip("no Umask in /proc/self/status")
	return 0
}

// TestLogfileConcurrentWritersThenSIGTERM: 50 connections write 200 lines
// each at once, in different ways; after SIGTERM the file holds every line
// exactly once and whole.
func TestLogfileConcurrentWritersThenSIGTERM(t *testing.T) {
	addr := freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "audit.log")
	cfg, maddr := logfileService(t, addr, logPath, "")
	d := startDaemon(t, cfg, maddr)

	const conns, lines = 50, 200
	var want []string
	payloads := make([]string, conns)
	total := 0
	for i := range conns {
		var b strings.Builder
		for j := range lines {
			// Varied lengths (0 to about 2 KB of padding), a unique id.
			line := fmt.Sprintf("c%02d-l%03d|%s|", i, j, strings.Repeat(string(rune('a'+(i+j)%26)), (i*131+j*37)%2048))
			want = append(want, line)
			b.WriteString(line)
			if (i+j)%2 == 0 {
				b.WriteString("\r\n")
			} else {
				b.WriteString("\n")
			}
		}
		b.WriteString(fmt.Sprintf("c%02d-partial-without-LF\r", i)) // not a line
		payloads[i] = b.String()
		total += b.Len()
	}

	start := time.Now()
	clients := make([]net.Conn, conns)
	for i := range clients {
		clients[i] = logfileDial(t, addr)
	}
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for i, c := range clients {
		data := payloads[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetWriteDeadline(time.Now().Add(60 * time.Second))
			var err error
			switch i % 4 {
			case 0: // all at once
				_, err = io.WriteString(c, data)
			case 1: // the first 2000 bytes one by one, then the rest
				for k := 0; k < 2000 && err == nil; k++ {
					_, err = io.WriteString(c, data[k:k+1])
				}
				if err == nil {
					_, err = io.WriteString(c, data[2000:])
				}
			case 2: // odd chunks
				for k, size := 0, 1; k < len(data) && err == nil; size = size%4093 + 97 {
					end := min(k+size, len(data))
					_, err = io.WriteString(c, data[k:end])
					k = end
				}
			case 3: // line by line
				for rest := data; rest != "" && err == nil; {
					k := strings.IndexByte(rest, '\n') + 1
					if k == 0 {
						k = len(rest)
					}
					_, err = io.WriteString(c, rest[:k])
					rest = rest[k:]
				}
			}
			// Half the clients close; the others stay connected.
			if err == nil && i%2 == 0 {
				err = c.Close()
			}
			if err != nil {
				errs <- fmt.Errorf("connection %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Everything was read by superd (the partial lines included).
	logfileWaitMetric(d, "superd_received_bytes_total", auditLabels, float64(total), 60*time.Second)
	logfileWaitMetric(d, "superd_connections_active", auditLabels, conns/2, 10*time.Second)
	// One more byte on each open connection: it is read only after the
	// previous chunk's DataReceived has returned, so once it is counted
	// every line sent before it has been processed.
	for i, c := range clients {
		if i%2 == 1 {
			logfileSend(t, c, "y")
		}
	}
	logfileWaitMetric(d, "superd_received_bytes_total", auditLabels, float64(total+conns/2), 10*time.Second)
	t.Logf("%d lines (%d bytes) on %d connections received in %v", conns*lines, total, conns, time.Since(start))

	// The open connections see the server close them, then close too.
	for i, c := range clients {
		if i%2 == 1 {
			go func() {
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	logfileCheck(t, logPath, want)
}

// TestLogfileSIGKILLKeepsProcessedLines: lines superd has processed are in
// the file even if it is killed at once.
func TestLogfileSIGKILLKeepsProcessedLines(t *testing.T) {
	addr := freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "audit.log")
	cfg, maddr := logfileService(t, addr, logPath, "")
	d := startDaemon(t, cfg, maddr)

	const conns, lines = 5, 300
	var want []string
	clients := make([]net.Conn, conns)
	sent := 0
	for i := range clients {
		clients[i] = logfileDial(t, addr)
		var b strings.Builder
		for j := range lines {
			line := fmt.Sprintf("kill-c%d-l%03d %s", i, j, strings.Repeat("k", j%97))
			want = append(want, line)
			b.WriteString(line + "\r\n")
		}
		logfileSend(t, clients[i], b.String())
		sent += b.Len()
	}
	logfileWaitMetric(d, "superd_received_bytes_total", auditLabels, float64(sent), 30*time.Second)
	// Every byte was read. One more byte per connection, read only once
	// the previous chunk's DataReceived has returned: when it is counted,
	// every line above has been handed to the kernel.
	for _, c := range clients {
		logfileSend(t, c, "x")
	}
	logfileWaitMetric(d, "superd_received_bytes_total", auditLabels, float64(sent+conns), 30*time.Second)

	d.signal(syscall.SIGKILL)
	d.wait(10 * time.Second)
	logfileCheck(t, logPath, want)
}

// TestLogfileRotation: rename the file, SIGUSR1, and the new lines go to a
// new file (mode 0640) while the old ones stay in the renamed one.
func TestLogfileRotation(t *testing.T) {
	addr := freeAddr(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	cfg, maddr := logfileService(t, addr, logPath, "")
	d := startDaemon(t, cfg, maddr)
	mode := os.FileMode(0o640) &^ logfileUmask(t)

	st, err := os.Stat(logPath)
	if err != nil {
		t.Fatalf("the file was not created at start: %v", err)
	}
	if st.Mode().Perm() != mode {
		t.Errorf("created with mode %v, want %v", st.Mode().Perm(), mode)
	}

	c := logfileDial(t, addr)
	old := []string{"old 1", "old 2", "old 3"}
	logfileSend(t, c, "old 1\nold 2\r\nold 3\n")
	logfileWaitFile(t, logPath, old, 10*time.Second)

	rotated := logPath + ".1"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	reopened := func() int { return strings.Count(d.stderr.String(), "reopened files") }
	d.signal(syscall.SIGUSR1)
	deadline := time.Now().Add(10 * time.Second)
	for reopened() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("superd did not log the reopen within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(logPath); err != nil {
		t.Fatalf("no new file after SIGUSR1: %v", err)
	}

	c2 := logfileDial(t, addr)
	newLines := []string{"new 1", "new 2", "new from c2"}
	logfileSend(t, c, "new 1\r\nnew 2\n")
	logfileSend(t, c2, "new from c2\n")
	logfileWaitFile(t, logPath, newLines, 10*time.Second)
	st, err = os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != mode {
		t.Errorf("new file mode %v, want %v (0640 under umask %#o)", st.Mode().Perm(), mode, logfileUmask(t))
	}

	// A reopen without a rename appends to the same file.
	d.signal(syscall.SIGUSR1)
	deadline = time.Now().Add(10 * time.Second)
	for reopened() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("superd did not log the second reopen within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	logfileSend(t, c2, "new 3\n")
	newLines = append(newLines, "new 3")
	logfileWaitFile(t, logPath, newLines, 10*time.Second)

	c.Close()
	c2.Close()
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	logfileCheck(t, rotated, old)
	logfileCheck(t, logPath, newLines)
}

// TestLogfileMaxLineLength: a line over the limit closes its connection and
// nothing of it is written; other connections carry on.
func TestLogfileMaxLineLength(t *testing.T) {
	addr := freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "audit.log")
	cfg, maddr := logfileService(t, addr, logPath, "  max_line_length = 100")
	d := startDaemon(t, cfg, maddr)

	other := logfileDial(t, addr)
	logfileSend(t, other, "other 1\n")

	long := logfileDial(t, addr)
	logfileSend(t, long, "long ok\n")
	logfileWaitFile(t, logPath, []string{"other 1", "long ok"}, 10*time.Second)
	logfileSend(t, long, strings.Repeat("L", 101)+"\nlost after the long line\n")
	logfileExpectClosed(t, long)

	unterminated := logfileDial(t, addr)
	logfileSend(t, unterminated, strings.Repeat("U", 150)) // no LF at all
	logfileExpectClosed(t, unterminated)

	exact := logfileDial(t, addr)
	exactLine := strings.Repeat("E", 100)
	logfileSend(t, exact, exactLine+"\n")
	// The CR of a CRLF ending is not part of the line (telnet works as
	// nc does), even when the LF comes in a later segment.
	crlfLine := strings.Repeat("F", 100)
	logfileSend(t, exact, crlfLine+"\r\n")
	logfileWaitFile(t, logPath, []string{"other 1", "long ok", exactLine, crlfLine}, 10*time.Second)
	received, _ := metric(d.scrape(), "superd_received_bytes_total", auditLabels)
	splitLine := strings.Repeat("S", 100)
	logfileSend(t, exact, splitLine+"\r")
	logfileWaitMetric(d, "superd_received_bytes_total", auditLabels, received+101, 10*time.Second)
	logfileSend(t, exact, "\n")

	logfileSend(t, other, "other 2\n")
	want := []string{"other 1", "long ok", exactLine, crlfLine, splitLine, "other 2"}
	logfileWaitFile(t, logPath, want, 10*time.Second)
	other.Close()
	exact.Close()
	logfileWaitMetric(d, "superd_connections_active", auditLabels, 0, 10*time.Second)
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	logfileCheck(t, logPath, want)
}

// TestLogfileFsync: with fsync = true lines are written, and shutdown is
// clean.
func TestLogfileFsync(t *testing.T) {
	addr := freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "audit.log")
	cfg, maddr := logfileService(t, addr, logPath, "  fsync = true")
	d := startDaemon(t, cfg, maddr)

	const conns, lines = 8, 100
	var want []string
	sent := 0
	var wg sync.WaitGroup
	var mu sync.Mutex
	var opened []net.Conn
	errs := make(chan error, conns)
	for i := range conns {
		c := logfileDial(t, addr)
		var b strings.Builder
		for j := range lines {
			line := fmt.Sprintf("fsync-c%d-l%03d", i, j)
			want = append(want, line)
			b.WriteString(line + "\n")
		}
		sent += b.Len()
		data := b.String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Line by line, so many small writes ask for syncs.
			for rest := data; rest != ""; {
				k := strings.IndexByte(rest, '\n') + 1
				if _, err := io.WriteString(c, rest[:k]); err != nil {
					errs <- err
					return
				}
				rest = rest[k:]
			}
			// Half close now; the others see the server close at SIGTERM.
			if i%2 == 0 {
				c.Close()
			} else {
				mu.Lock()
				opened = append(opened, c)
				mu.Unlock()
				go func() {
					c.SetReadDeadline(time.Now().Add(30 * time.Second))
					io.Copy(io.Discard, c)
					c.Close()
				}()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	logfileWaitMetric(d, "superd_received_bytes_total", auditLabels, float64(sent), 30*time.Second)
	logfileWaitMetric(d, "superd_connections_active", auditLabels, conns/2, 10*time.Second)
	// A partial line on each open connection: counted only once the
	// previous chunk has been processed.
	for _, c := range opened {
		logfileSend(t, c, "partial")
	}
	logfileWaitMetric(d, "superd_received_bytes_total", auditLabels, float64(sent+len(opened)*len("partial")), 10*time.Second)
	d.signal(syscall.SIGTERM)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	logfileCheck(t, logPath, want)
}
