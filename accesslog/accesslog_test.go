package accesslog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/superd-dev/superd/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var sample = Entry{
	Time: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC), Service: "echo", Factory: "echo",
	Endpoint: "tls:127.0.0.1:7443", Peer: "192.0.2.7:50000", Proxy: "127.0.0.1:41000",
	TLSVersion: "TLSv1.3", SNI: "a \"quoted\" name", Duration: 1500 * time.Millisecond,
	BytesIn: 10, BytesOut: 20, Reason: "clean", PID: 42, Exit: "0",
}

func TestJSONLineHasEveryField(t *testing.T) {
	line := Format(FormatJSON, sample)
	var got map[string]any
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("%q is not JSON: %v", line, err)
	}
	want := map[string]any{
		"time": "2026-12-03T10:00:00Z", "service": "echo", "factory": "echo", "endpoint": "tls:127.0.0.1:7443",
		"peer": "192.0.2.7:50000", "proxy": "127.0.0.1:41000", "tls_version": "TLSv1.3", "sni": "a \"quoted\" name",
		"duration_s": 1.5, "bytes_in": 10.0, "bytes_out": 20.0, "reason": "clean", "pid": 42.0, "exit": "0",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("fields %v, want exactly %v", got, want)
	}
	// Control characters and invalid UTF-8 stay one valid line.
	odd := sample
	odd.SNI = "x\ny\x00\xff"
	line = Format(FormatJSON, odd)
	if strings.Count(line, "\n") != 1 || json.Unmarshal([]byte(line), &got) != nil {
		t.Errorf("bad line for odd input: %q", line)
	}
}

func TestTextLineIsLogfmt(t *testing.T) {
	line := Format(FormatText, sample)
	for _, want := range []string{`service=echo `, `sni="a \"quoted\" name"`, `duration_s=1.500000`, `reason=clean`, `pid=42`} {
		if !strings.Contains(line, want) {
			t.Errorf("%q lacks %q", line, want)
		}
	}
	rej := Entry{Service: "s", Factory: "f", Endpoint: "tcp:x", Peer: "p", Reason: "max_connections", Rejected: true}
	if line := Format(FormatText, rej); !strings.Contains(line, "rejected=true") || strings.Contains(line, "bytes_in") {
		t.Errorf("rejection line %q", line)
	}
}

func TestFileAndReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	l, err := Open(path, FormatJSON, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Log(Entry{Service: "one", Reason: "clean"})
	waitLines(t, path, 1)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Log(Entry{Service: "two", Reason: "clean"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if lines := readLines(t, path); len(lines) != 1 || !strings.Contains(lines[0], `"service":"two"`) {
		t.Errorf("new file: %q", lines)
	}
	if lines := readLines(t, path+".1"); len(lines) != 1 || !strings.Contains(lines[0], `"service":"one"`) {
		t.Errorf("rotated file: %q", lines)
	}
	l.Log(Entry{Service: "late"}) // after Close: ignored, no panic
}

// A log stuck on a full pipe never blocks Log: what does not fit is dropped
// and counted.
func TestFullPipeDropsAndCounts(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "d"})
	l, err := Open(fmt.Sprintf("/proc/self/fd/%d", w.Fd()), FormatText, dropped)
	if err != nil {
		t.Skipf("cannot open a pipe by /proc/self/fd: %v", err)
	}
	w.Close()
	const n = 50000
	done := make(chan struct{})
	go func() {
		for range n {
			l.Log(sample)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Log blocked on a full pipe")
	}
	if got := testutil.ToFloat64(dropped); got == 0 || got > n {
		t.Errorf("dropped = %v, want some of %d", got, n)
	}
	// Let the writer finish: read everything.
	go func() { bufio.NewReader(r).WriteTo(discard{}) }()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func waitLines(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(readLines(t, path)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d lines", path, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A unix socket's peer credentials are written as integers, on the end
// line and the rejection line alike, and root's zeros too; a line without
// them (tcp, tls) has no such keys.
func TestPeerCredentialFields(t *testing.T) {
	unixEnd := Entry{Service: "s", Factory: "f", Endpoint: "unix:/run/s.sock", Peer: "@", Reason: "clean",
		HasPeerCred: true, PeerUID: 1000, PeerGID: 100, PeerPID: 4242, PID: 7}
	unixRej := Entry{Service: "s", Factory: "f", Endpoint: "unix:/run/s.sock", Peer: "@", Reason: "max_connections",
		Rejected: true, HasPeerCred: true} // root, pid 0 (a peer in another pid namespace)
	for _, c := range []struct {
		e             Entry
		uid, gid, pid string
	}{{unixEnd, "1000", "100", "4242"}, {unixRej, "0", "0", "0"}} {
		var got map[string]any
		d := json.NewDecoder(strings.NewReader(Format(FormatJSON, c.e)))
		d.UseNumber()
		if err := d.Decode(&got); err != nil {
			t.Fatal(err)
		}
		text := Format(FormatText, c.e)
		for k, want := range map[string]string{"peer_uid": c.uid, "peer_gid": c.gid, "peer_pid": c.pid} {
			if n, ok := got[k].(json.Number); !ok || n.String() != want {
				t.Errorf("json %s = %#v, want the number %s", k, got[k], want)
			}
			if !strings.Contains(" "+text, " "+k+"="+want+" ") {
				t.Errorf("text %q lacks %s=%s", text, k, want)
			}
		}
		if got["pid"] != nil && got["pid"] != json.Number("7") {
			t.Errorf("pid = %#v, want exec's 7 kept apart", got["pid"])
		}
	}
	for _, e := range []Entry{sample, {Service: "s", Factory: "f", Endpoint: "tcp:x", Peer: "p", Reason: "max_connections", Rejected: true}} {
		for _, format := range []string{FormatJSON, FormatText} {
			if line := Format(format, e); strings.Contains(line, "peer_") {
				t.Errorf("%s line without credentials has them: %q", format, line)
			}
		}
	}
}

// A peer's string (an SNI) holding a line or paragraph separator, NEL, a
// bidirectional override or another invisible character reaches neither
// format raw (a viewer would show a forged line, or reorder this one),
// and reads back whole.
func TestInvisibleCharactersEscaped(t *testing.T) {
	for _, sni := range []string{"a\u2028service=forged", "a\u2029b", "a\u0085b", "a\u202eb", "a\u00a0reason=forged", "a\U000e0041b"} {
		e := sample
		e.SNI = sni
		raw := string([]rune(sni)[1]) // the character in question
		js := Format(FormatJSON, e)
		var got map[string]any
		if err := json.Unmarshal([]byte(js), &got); err != nil || got["sni"] != sni {
			t.Errorf("JSON %q: sni %q, %v; want %q", js, got["sni"], err, sni)
		}
		text := Format(FormatText, e)
		_, after, _ := strings.Cut(text, " sni=")
		q, err := strconv.QuotedPrefix(after)
		if err != nil {
			t.Errorf("text %q: sni not quoted: %v", text, err)
			continue
		}
		if v, _ := strconv.Unquote(q); v != sni {
			t.Errorf("text %q: sni reads back as %q, want %q", text, v, sni)
		}
		for _, line := range []string{js, text} {
			if strings.Contains(line, raw) {
				t.Errorf("%q carries %q raw", line, raw)
			}
		}
	}
}

// filling writes to f until room runs out, then stops short with ENOSPC,
// as a file on a full disk does.
type filling struct {
	f    *os.File
	room int
}

func (w *filling) Write(p []byte) (int, error) {
	if len(p) <= w.room {
		w.room -= len(p)
		return w.f.Write(p)
	}
	n, err := w.f.Write(p[:w.room])
	w.room -= n
	if err == nil {
		err = syscall.ENOSPC
	}
	return n, err
}

// A full disk loses the lines that do not fit, counted as dropped, and
// leaves no torn line: once there is room again the next lines are whole,
// not glued to part of a lost one.
func TestDiskFullLeavesNoTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	l, err := Open(path, FormatJSON, dropped)
	if err != nil {
		t.Fatal(err)
	}
	full := &filling{f: l.f, room: 1000}
	l.mu.Lock()
	l.out = full
	l.mu.Unlock()
	const lines = 50
	for i := range lines {
		e := sample
		e.PID = i + 1
		l.Log(e)
	}
	whole := func() int {
		b, _ := os.ReadFile(path)
		return strings.Count(string(b), "\n")
	}
	deadline := time.Now().Add(10 * time.Second)
	for whole()+int(testutil.ToFloat64(dropped)) != lines {
		if time.Now().After(deadline) {
			t.Fatalf("%d lines written and %v dropped, want %d in all", whole(), testutil.ToFloat64(dropped), lines)
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.mu.Lock()
	full.room = 1 << 30 // space freed
	l.mu.Unlock()
	kept := sample
	kept.PID = 1000
	l.Log(kept)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	lost := int(testutil.ToFloat64(dropped))
	if lost == 0 || len(got) != lines-lost+1 {
		t.Errorf("%d lines in the file with %d dropped, want %d", len(got), lost, lines-lost+1)
	}
	for i, line := range got {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d is torn: %q (%v)", i+1, line, err)
		}
		if i == len(got)-1 && m["pid"] != float64(1000) {
			t.Errorf("the last line is %q, want the one logged once there was room", line)
		}
	}
}

// Reopen (SIGUSR1) is not held off while producers keep the queue from
// running empty: the writer lets go of the file between batches. (It
// used to hold it until the queue ran empty, for as long as the load
// lasted; here the load lasts until Reopen returns.)
func TestReopenUnderSteadyLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	l, err := Open(path, FormatJSON, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	defer testkit.Repeat(3, func() bool {
		l.Log(Entry{Service: "s", Factory: "f", Endpoint: "tcp:x", Peer: "127.0.0.1:1", Reason: "clean"})
		return true
	})()
	for len(l.queue) < cap(l.queue)/2 { // the load is on
		runtime.Gosched()
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Reopen() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Reopen still waiting after 10 s of steady logging")
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("no new file after Reopen: %v", err)
	}
}
