package logfile

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/basic"
	"github.com/superd-dev/superd/framework/frameworktest"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestConfig(t *testing.T) {
	abs := filepath.Join(t.TempDir(), "abs.log")
	folder := t.TempDir()
	tests := []struct {
		name      string
		body      string
		wantPath  string // relative to the config folder unless absolute
		wantFsync bool
		wantMax   int
		wantErr   []string
	}{
		{name: "relative path", body: `  path = "audit.log"`, wantPath: "audit.log", wantMax: basic.DefaultMaxLineLength},
		{name: "relative path in a subfolder", body: `  path = "logs/../var/audit.log"`, wantPath: "var/audit.log", wantMax: basic.DefaultMaxLineLength},
		{name: "absolute path", body: fmt.Sprintf("  path = %q", abs), wantPath: abs, wantMax: basic.DefaultMaxLineLength},
		{name: "fsync true", body: "  path = \"a.log\"\n  fsync = true", wantPath: "a.log", wantFsync: true, wantMax: basic.DefaultMaxLineLength},
		{name: "fsync false", body: "  path = \"a.log\"\n  fsync = false", wantPath: "a.log", wantMax: basic.DefaultMaxLineLength},
		{name: "max_line_length", body: "  path = \"a.log\"\n  max_line_length = 80", wantPath: "a.log", wantMax: 80},
		{name: "path missing", body: "",
			wantErr: []string{"superd.hcl:1,", "Missing required argument", `"path"`}},
		{name: "path empty", body: `  path = ""`,
			wantErr: []string{"superd.hcl:2,", `Invalid value for "path"`, "empty"}},
		{name: "path is the config folder", body: `  path = "."`,
			wantErr: []string{"superd.hcl:2,", `Invalid value for "path"`, "folder"}},
		{name: "path is a folder", body: fmt.Sprintf("  path = %q", folder),
			wantErr: []string{"superd.hcl:2,", `Invalid value for "path"`, "is a folder"}},
		{name: "path wrong type", body: `  path = ["a.log"]`, wantErr: []string{"superd.hcl:2,", "path"}},
		{name: "fsync wrong type", body: "  path = \"a.log\"\n  fsync = \"sometimes\"",
			wantErr: []string{"superd.hcl:3,", "fsync"}},
		{name: "max_line_length zero", body: "  path = \"a.log\"\n  max_line_length = 0",
			wantErr: []string{"superd.hcl:3,", `Invalid value for "max_line_length"`}},
		{name: "max_line_length fraction", body: "  path = \"a.log\"\n  max_line_length = 2.5",
			wantErr: []string{"superd.hcl:3,", `Invalid value for "max_line_length"`}},
		{name: "max_line_length huge", body: "  path = \"a.log\"\n  max_line_length = 9223372036854775807",
			wantErr: []string{"superd.hcl:3,", `Invalid value for "max_line_length"`, "from 1 to 1073741824, not 9223372036854775807"}},
		{name: "unknown attribute", body: "  path = \"a.log\"\n  fsynk = true",
			wantErr: []string{"superd.hcl:3,", `Did you mean "fsync"?`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			svc, err := servicetest.Block{Factory: "logfile", Name: "audit", Dir: dir, Body: tt.body}.Service(t)
			if tt.wantErr != nil {
				var de *config.DiagnosticsError
				if !errors.As(err, &de) {
					t.Fatalf("error %v (%T); want a *config.DiagnosticsError", err, err)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error text lacks %q:\n%s", s, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error:\n%s", err)
			}
			fac, err := servicetest.Build(svc, nil)
			if err != nil {
				t.Fatal(err)
			}
			f := fac.(*Factory)
			want := tt.wantPath
			if !filepath.IsAbs(want) {
				want = filepath.Join(dir, want)
			}
			if f.path != want || f.fsync != tt.wantFsync || f.maxLine != tt.wantMax {
				t.Fatalf("path %q fsync %v max %d; want %q %v %d", f.path, f.fsync, f.maxLine, want, tt.wantFsync, tt.wantMax)
			}
			// Parsing (what `superd validate` does) opens nothing.
			if _, err := os.Stat(f.path); !os.IsNotExist(err) {
				t.Fatalf("the file exists after parsing: %v", err)
			}
		})
	}
}

// started builds and starts a factory from body (path is set to a file in
// a fresh folder unless body sets it), stopping it at the end of the test.
func started(t *testing.T, body string) *Factory {
	t.Helper()
	if !strings.Contains(body, "path") {
		body = "  path = \"audit.log\"\n" + body
	}
	svc, err := servicetest.Block{Factory: "logfile", Name: "audit", Dir: t.TempDir(), Body: body}.Service(t)
	if err != nil {
		t.Fatal(err)
	}
	fac, err := servicetest.Build(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := fac.(*Factory)
	if err := f.StartFactory(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.mu.Lock()
		open := f.file != nil
		f.mu.Unlock()
		if open { // not stopped by the test itself
			f.StopFactory()
		}
	})
	return f
}

type conn struct {
	p framework.Protocol
	t *frameworktest.Transport
}

func (f *Factory) connect() *conn {
	tr := &frameworktest.Transport{}
	p := f.BuildProtocol(tr.PeerAddr())
	p.ConnectionMade(tr)
	return &conn{p: p, t: tr}
}

func (c *conn) send(s string) { c.p.DataReceived([]byte(s)) }

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLines(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   string
	}{
		{"LF", []string{"one\ntwo\n"}, "one\ntwo\n"},
		{"CRLF", []string{"one\r\ntwo\r\n"}, "one\ntwo\n"},
		{"mixed", []string{"a\r\nb\nc\r\n"}, "a\nb\nc\n"},
		{"empty lines", []string{"\n\r\n\n"}, "\n\n\n"},
		{"CR inside is kept", []string{"a\rb\n"}, "a\rb\n"},
		{"only one CR is dropped", []string{"a\r\r\n"}, "a\r\n"},
		{"lone CR is not an end", []string{"a\rb"}, ""},
		{"partial line is not written", []string{"whole\npart"}, "whole\n"},
		{"split across chunks", []string{"he", "llo\r", "\nwor", "ld\n"}, "hello\nworld\n"},
		{"CR and LF in different chunks", []string{"x\r", "\n"}, "x\n"},
		{"binary bytes", []string{"\x00\xff\x1b\n"}, "\x00\xff\x1b\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := started(t, "")
			c := f.connect()
			for _, ch := range tt.chunks {
				c.send(ch)
			}
			c.p.ConnectionLost(framework.ErrConnectionDone)
			if got := readFile(t, f.path); got != tt.want {
				t.Fatalf("file %q, want %q", got, tt.want)
			}
			if c.t.Disconnecting() {
				t.Fatal("the protocol closed the connection")
			}
		})
	}
}

// TestLinesByteByByte feeds one byte per DataReceived.
func TestLinesByteByByte(t *testing.T) {
	f := started(t, "")
	c := f.connect()
	in := "first\r\nsecond\n\r\nthird\rx\n"
	for i := 0; i < len(in); i++ {
		c.send(in[i : i+1])
	}
	if got, want := readFile(t, f.path), "first\nsecond\n\nthird\rx\n"; got != want {
		t.Fatalf("file %q, want %q", got, want)
	}
}

// TestWrittenBeforeReturn: the lines of a chunk are in the file when
// DataReceived returns (before more input is read).
func TestWrittenBeforeReturn(t *testing.T) {
	f := started(t, "")
	c := f.connect()
	want := ""
	for i := range 50 {
		line := fmt.Sprintf("line %d", i)
		c.send(line + "\n")
		want += line + "\n"
		if got := readFile(t, f.path); got != want {
			t.Fatalf("after line %d the file holds %q", i, got)
		}
	}
}

func TestMaxLineLength(t *testing.T) {
	f := started(t, "  max_line_length = 10")

	ok := f.connect()
	ok.send("0123456789\n") // exactly the limit
	if ok.t.Disconnecting() {
		t.Fatal("a line of exactly max_line_length closed the connection")
	}

	long := f.connect()
	long.send("before\n01234567890\nafter\n")
	if !long.t.Disconnecting() {
		t.Fatal("a line over max_line_length did not close the connection")
	}

	unterminated := f.connect()
	unterminated.send("0123456789") // 10 bytes, no LF yet: waits
	if unterminated.t.Disconnecting() {
		t.Fatal("10 bytes without LF closed the connection")
	}
	unterminated.send("X")
	if !unterminated.t.Disconnecting() {
		t.Fatal("11 bytes without LF did not close the connection")
	}

	ok.send("still ok\n")
	want := "0123456789\nbefore\nstill ok\n"
	if got := readFile(t, f.path); got != want {
		t.Fatalf("file %q, want %q", got, want)
	}
}

// TestMaxLineLengthCRLF: the CR before the LF is not part of the line
// (SPEC 8: "a CR right before it is dropped"), so a line of exactly
// max_line_length bytes is accepted whether it ends in LF (nc) or CRLF
// (telnet), also when the LF comes in a later chunk.
func TestMaxLineLengthCRLF(t *testing.T) {
	f := started(t, "  max_line_length = 10")
	c := f.connect()
	c.send("0123456789\r\n")
	if c.t.Disconnecting() {
		t.Fatal("a line of exactly max_line_length bytes ending in CRLF closed the connection")
	}
	d := f.connect()
	d.send("abcdefghij\r")
	if d.t.Disconnecting() {
		t.Fatal("a line of exactly max_line_length bytes followed by CR (LF still to come) closed the connection")
	}
	d.send("\n")
	if got, want := readFile(t, f.path), "0123456789\nabcdefghij\n"; got != want {
		t.Fatalf("file %q, want %q", got, want)
	}
	// One byte more is still too long.
	e := f.connect()
	e.send("0123456789X\r\n")
	if !e.t.Disconnecting() {
		t.Fatal("a line of max_line_length+1 bytes ending in CRLF did not close the connection")
	}
	// A CR that turns out not to end the line: too long as soon as the
	// next byte comes.
	g := f.connect()
	g.send("abcdefghij\r")
	g.send("k")
	if !g.t.Disconnecting() {
		t.Fatal("max_line_length bytes, CR, and one more byte did not close the connection")
	}
	// Only one CR is dropped: the other one counts.
	h := f.connect()
	h.send("abcdefghij\r\r\n")
	if !h.t.Disconnecting() {
		t.Fatal("max_line_length bytes + CR CR LF did not close the connection")
	}
	if got, want := readFile(t, f.path), "0123456789\nabcdefghij\n"; got != want {
		t.Fatalf("file %q, want %q (nothing of a long line)", got, want)
	}
}

func TestAppendAndMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "existing.log")
	if err := os.WriteFile(path, []byte("old line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := started(t, fmt.Sprintf("  path = %q", path))
	f.connect().send("new line\n")
	if got, want := readFile(t, path), "old line\nnew line\n"; got != want {
		t.Fatalf("file %q, want %q (appended)", got, want)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("an existing file's mode changed to %v", st.Mode().Perm())
	}

	fresh := started(t, "")
	st, err := os.Stat(fresh.path)
	if err != nil {
		t.Fatal(err)
	}
	if want := 0o640 &^ umask(t); st.Mode().Perm() != want {
		t.Fatalf("new file mode %v, want %v (0640 under umask %#o)", st.Mode().Perm(), want, umask(t))
	}
}

// umask reads the process umask without changing it.
func umask(t *testing.T) os.FileMode {
	t.Helper()
	fh, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status:", err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
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

func TestStartFactoryFails(t *testing.T) {
	svc, err := servicetest.Block{Factory: "logfile", Name: "audit", Dir: t.TempDir(), Body: `  path = "no/such/folder/a.log"`}.Service(t)
	if err != nil {
		t.Fatal(err)
	}
	fac, err := servicetest.Build(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fac.(*Factory).StartFactory(); err == nil {
		t.Fatal("StartFactory succeeded with a missing folder")
	}
}

func TestReopen(t *testing.T) {
	for _, fsync := range []bool{false, true} {
		t.Run(fmt.Sprint("fsync=", fsync), func(t *testing.T) {
			f := started(t, fmt.Sprintf("  fsync = %v", fsync))
			c := f.connect()
			c.send("before rotation\n")
			rotated := f.path + ".1"
			if err := os.Rename(f.path, rotated); err != nil {
				t.Fatal(err)
			}
			c.send("still old\n")
			if err := f.Reopen(); err != nil {
				t.Fatal(err)
			}
			c.send("after rotation\n")
			f.connect().send("new conn\n")
			if got, want := readFile(t, rotated), "before rotation\nstill old\n"; got != want {
				t.Fatalf("rotated file %q, want %q", got, want)
			}
			if got, want := readFile(t, f.path), "after rotation\nnew conn\n"; got != want {
				t.Fatalf("new file %q, want %q", got, want)
			}
		})
	}
}

// TestWriteAfterStop: once the file is closed a write fails and the
// connection is aborted instead of losing lines silently.
func TestWriteAfterStop(t *testing.T) {
	f := started(t, "")
	c := f.connect()
	c.send("one\n")
	if err := f.StopFactory(); err != nil {
		t.Fatal(err)
	}
	c.send("two\n")
	if !c.t.Aborted() {
		t.Fatal("a write to a closed file did not abort the connection")
	}
	if got := readFile(t, f.path); got != "one\n" {
		t.Fatalf("file %q", got)
	}
}

// TestConcurrentWriters: lines from many connections written at once never
// interleave or tear.
func TestConcurrentWriters(t *testing.T) {
	for _, fsync := range []bool{false, true} {
		t.Run(fmt.Sprint("fsync=", fsync), func(t *testing.T) {
			f := started(t, fmt.Sprintf("  fsync = %v", fsync))
			const conns, lines = 20, 200
			var wg sync.WaitGroup
			var want []string
			for i := range conns {
				var all strings.Builder
				for j := range lines {
					line := fmt.Sprintf("c%02d-l%03d-%s", i, j, strings.Repeat("x", (i*31+j*7)%300))
					want = append(want, line)
					all.WriteString(line)
					if j%2 == 0 {
						all.WriteString("\r\n")
					} else {
						all.WriteString("\n")
					}
				}
				data := all.String()
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := f.connect()
					// Odd chunk sizes, so lines straddle chunks.
					for k, size := 0, 1; k < len(data); size = size%97 + 13 {
						end := min(k+size, len(data))
						c.send(data[k:end])
						k = end
					}
					c.p.ConnectionLost(framework.ErrConnectionDone)
				}()
			}
			wg.Wait()
			if err := f.StopFactory(); err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(readFile(t, f.path), "\n"), "\n")
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("file holds %d lines, want %d (torn or lost lines)", len(got), len(want))
			}
		})
	}
}

// A Reopen that reaches a factory after StopFactory (an instance whose
// drain ended as SIGUSR1 arrived) opens nothing: no file is created again
// and none is left open.
func TestReopenAfterStopOpensNothing(t *testing.T) {
	f := started(t, "")
	if err := f.StopFactory(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f.path); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Reopen after StopFactory created %s again (%v)", f.path, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.file != nil {
		t.Error("Reopen after StopFactory left a file open")
	}
}

// TestSlowSyncDoesNotHoldWriters: with fsync = true, a sync that takes
// long (a slow disk) holds up no connection: lines are handed to the
// operating system meanwhile, and the next sync covers them.
func TestSlowSyncDoesNotHoldWriters(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	syncFile = func(f *os.File) error {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
		return f.Sync()
	}
	t.Cleanup(func() { syncFile = (*os.File).Sync })
	f := started(t, "  fsync = true")
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	f.connect().send("first\n")
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no sync after a write")
	}
	// The sync is under way and slow: another connection's line must
	// still reach the file at once.
	wrote := make(chan struct{})
	go func() {
		f.connect().send("second\n")
		close(wrote)
	}()
	select {
	case <-wrote:
	case <-time.After(5 * time.Second):
		t.Fatal("a line waited for a slow fsync of earlier lines before it could be written")
	}
	if got := readFile(t, f.path); got != "first\nsecond\n" {
		t.Fatalf("file %q", got)
	}
	close(release)
	released = true
	if err := f.StopFactory(); err != nil {
		t.Fatal(err)
	}
}

// TestQuietConnectionsHoldNoBatch: the buffer a chunk's lines are
// collected in is not kept by a connection once they are written, so
// connections that sent a burst and went quiet hold no memory for it
// (superd reads up to 32 KiB at a time; here 400 such connections).
func TestQuietConnectionsHoldNoBatch(t *testing.T) {
	f := started(t, "")
	chunk := strings.Repeat(strings.Repeat("x", 99)+"\n", 327) // 32,700 bytes: a full read
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	conns := make([]*conn, 400)
	for i := range conns {
		conns[i] = f.connect()
		conns[i].send(chunk)
	}
	// Two collections: what a sync.Pool holds is let go by the second.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	per := (int64(ms.HeapAlloc) - int64(before)) / int64(len(conns))
	if per > 4<<10 {
		t.Fatalf("each quiet connection holds %d bytes of heap after one 32 KiB chunk", per)
	}
	if got := readFile(t, f.path); len(got) != len(conns)*len(chunk) {
		t.Fatalf("file holds %d bytes, want %d", len(got), len(conns)*len(chunk))
	}
	runtime.KeepAlive(conns)
}
