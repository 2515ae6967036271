package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readAccessLog parses the JSON lines of an access log.
func readAccessLog(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func waitAccessLines(t *testing.T, path string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines := readAccessLog(t, path)
		if len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d access log lines, want %d: %v", len(lines), n, lines)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One line per connection of a logged service with every field, one per
// rejection, TLS facts for TLS, nothing for a service without access_log,
// and SIGUSR1 reopens the file.
func TestAccessLog(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	tcpAddr, tlsAddr, quietAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
access_log {
  path   = %q
  format = "json"
}
service "echo" "logged" {
  access_log      = true
  max_connections = 1
  endpoint "tcp" { address = %q }
  endpoint "tls" {
    address     = %q
    self_signed = true
  }
}
service "echo" "quiet" {
  endpoint "tcp" { address = %q }
}
`, logPath, tcpAddr, tlsAddr, quietAddr))
	d := startDaemon(t, path, metrics)

	if err := echoOnce("tcp", tcpAddr, "hello"); err != nil {
		t.Fatal(err)
	}
	lines := waitAccessLines(t, logPath, 1)
	l := lines[0]
	for k, want := range map[string]any{"service": "logged", "factory": "echo", "endpoint": "tcp:" + tcpAddr,
		"reason": "clean", "bytes_in": 6.0, "bytes_out": 6.0} {
		if l[k] != want {
			t.Errorf("%s = %#v, want %#v (line %v)", k, l[k], want, l)
		}
	}
	if p, _ := l["peer"].(string); !strings.HasPrefix(p, "127.0.0.1:") {
		t.Errorf("peer = %v", l["peer"])
	}
	if _, ok := l["duration_s"].(float64); !ok {
		t.Errorf("no duration_s in %v", l)
	}
	if _, ok := l["time"].(string); !ok {
		t.Errorf("no time in %v", l)
	}

	// A rejection: the second connection while one is open.
	held, err := netDial(tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnceConn(held, "held"); err != nil {
		t.Fatal(err)
	}
	second, err := netDial(tcpAddr)
	if err == nil {
		second.Read(make([]byte, 1)) // closed by superd
		second.Close()
	}
	lines = waitAccessLines(t, logPath, 2)
	if r := lines[1]; r["reason"] != "max_connections" || r["rejected"] != true {
		t.Errorf("rejection line %v", r)
	}
	held.Close()
	waitAccessLines(t, logPath, 3)

	// TLS: version and SNI.
	tc, err := tls.Dial("tcp", tlsAddr, &tls.Config{InsecureSkipVerify: true, ServerName: "example.test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnceConn(tc, "over tls"); err != nil {
		t.Fatal(err)
	}
	tc.Close()
	lines = waitAccessLines(t, logPath, 4)
	if l := lines[3]; l["tls_version"] != "TLSv1.3" || l["sni"] != "example.test" || l["endpoint"] != "tls:"+tlsAddr {
		t.Errorf("TLS line %v", l)
	}

	// A service without access_log writes nothing.
	if err := echoOnce("tcp", quietAddr, "quiet"); err != nil {
		t.Fatal(err)
	}

	// Rotation: rename, SIGUSR1, the next line goes to a new file.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGUSR1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := echoOnce("tcp", tcpAddr, "after rotation"); err != nil {
			t.Fatal(err)
		}
		// max_connections = 1: the next try waits until this one is gone.
		d.waitMetric("superd_connections_active", map[string]string{"service": "logged"}, 0)
		if lines := readAccessLog(t, logPath); len(lines) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no line in the reopened file")
		}
	}
	for _, l := range readAccessLog(t, logPath+".1") {
		if l["service"] != "logged" {
			t.Errorf("a line of another service: %v", l)
		}
	}
	d.signal(syscall.SIGTERM)
	d.wait(10 * time.Second)
}

// startWithStalledAccessLog starts superd with an echo service whose
// access log (text) is a FIFO with a reader that never reads, returned
// (closed at cleanup); it returns superd and the echo's address.
func startWithStalledAccessLog(t *testing.T) (d *daemon, addr string, reader *os.File) {
	t.Helper()
	fifo := filepath.Join(t.TempDir(), "access.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader that never reads, so superd can open the pipe for writing.
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	addr = freeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
access_log {
  path   = %q
  format = "text"
}
service "echo" "e" {
  access_log = true
  endpoint "tcp" { address = %q }
}
`, fifo, addr))
	return startDaemon(t, path, metrics), addr, r
}

// An access log that cannot keep up (a pipe nobody reads) never slows a
// connection: every echo is served, and the lines that did not fit are
// counted in superd_access_log_dropped_total.
func TestAccessLogOnFullPipe(t *testing.T) {
	d, addr, r := startWithStalledAccessLog(t)
	const conns = 6000 // ~100 bytes a line: far past the pipe and the queue
	for i := range conns {
		if err := echoOnce("tcp", addr, fmt.Sprintf("c%d", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	fams := d.scrape()
	if v, _ := metric(fams, "superd_access_log_dropped_total", nil); v == 0 {
		t.Error("no dropped access log line counted")
	}
	r.Close() // the writer's next write fails; superd carries on
	if err := echoOnce("tcp", addr, "still"); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// exec connections carry the program's pid and exit in the access log,
// and the running program's pid in /status?connections=1.
func TestAccessLogAndStatusExec(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	addr := freeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
access_log { path = %q }
service "exec" "x" {
  access_log = true
  command    = ["/bin/sh", "-c", "echo pid $$; read line; exit 3"]
  endpoint "tcp" { address = %q }
}
`, logPath, addr))
	d := startDaemon(t, path, metrics)
	c, err := netDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var pid int
	if _, err := fmt.Fscanf(c, "pid %d\n", &pid); err != nil {
		t.Fatal(err)
	}
	// The program may write before superd has recorded its pid: poll.
	// Its bytes are the kernel's count (the socket is the program's).
	out := int64(len(fmt.Sprintf("pid %d\n", pid)))
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := getStatus(t, metrics, true)
		if len(s.Connections) == 1 && s.Connections[0].PID == pid && s.Connections[0].BytesOut == out && s.Connections[0].BytesIn == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status connections %+v, want pid %d, bytes in 0 and out %d", s.Connections, pid, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintln(c, "bye")
	lines := waitAccessLines(t, logPath, 1)
	if l := lines[0]; l["pid"] != float64(pid) || l["exit"] != "3" || l["bytes_in"] != 4.0 {
		t.Errorf("exec line %v, want pid %d exit 3 bytes_in 4", l, pid)
	}
	d.signal(syscall.SIGTERM)
	d.wait(10 * time.Second)
}

// readAccessLogAs parses the lines of an access log in format ("json" or
// "text"). JSON numbers are json.Number; logfmt values are strings, and
// a value written quoted is a quotedValue (never a number).
func readAccessLogAs(t *testing.T, path, format string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		m := map[string]any{}
		if format == "json" {
			d := json.NewDecoder(strings.NewReader(line))
			d.UseNumber()
			if err := d.Decode(&m); err != nil {
				t.Fatalf("not JSON: %q: %v", line, err)
			}
			out = append(out, m)
			continue
		}
		for s := line; s != ""; s = strings.TrimPrefix(s, " ") {
			eq := strings.IndexByte(s, '=')
			if eq <= 0 {
				t.Fatalf("not logfmt: %q at %q", line, s)
			}
			key := s[:eq]
			s = s[eq+1:]
			if strings.HasPrefix(s, `"`) {
				q, err := strconv.QuotedPrefix(s)
				if err != nil {
					t.Fatalf("not logfmt: %q: %v", line, err)
				}
				v, _ := strconv.Unquote(q)
				m[key], s = quotedValue(v), s[len(q):]
				continue
			}
			end := strings.IndexByte(s, ' ')
			if end < 0 {
				end = len(s)
			}
			m[key], s = s[:end], s[end:]
		}
		out = append(out, m)
	}
	return out
}

type quotedValue string

// accessInt is the integer a parsed line holds under key.
func accessInt(m map[string]any, key string) (int64, bool) {
	switch v := m[key].(type) {
	case json.Number:
		n, err := v.Int64()
		return n, err == nil
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	return 0, false
}

// Lines of unix socket connections carry the peer's uid, gid and pid
// (the test process connects), in both formats, on end and rejection
// lines, and for exec next to its own pid; tcp lines have no such keys.
func TestAccessLogPeerCredentials(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			logPath := filepath.Join(dir, "access.log")
			echoSock, execSock := filepath.Join(dir, "echo.sock"), filepath.Join(dir, "exec.sock")
			tcpAddr := freeAddr(t)
			path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
access_log {
  path   = %q
  format = %q
}
service "echo" "e" {
  access_log      = true
  max_connections = 1
  endpoint "unix" { path = %q }
  endpoint "tcp" { address = %q }
}
service "exec" "x" {
  access_log = true
  command    = ["/bin/sh", "-c", "echo pid $$; read line; exit 3"]
  endpoint "unix" { path = %q }
}
`, logPath, format, echoSock, tcpAddr, execSock))
			d := startDaemon(t, path, metrics)
			n := 0
			next := func() map[string]any {
				t.Helper()
				n++
				deadline := time.Now().Add(10 * time.Second)
				for {
					if lines := readAccessLogAs(t, logPath, format); len(lines) >= n {
						return lines[n-1]
					}
					if time.Now().After(deadline) {
						t.Fatalf("fewer than %d access log lines", n)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			keys := []string{"peer_uid", "peer_gid", "peer_pid"}
			hasCred := func(what string, l map[string]any) {
				t.Helper()
				for i, want := range []int{os.Getuid(), os.Getgid(), os.Getpid()} {
					if v, ok := accessInt(l, keys[i]); !ok || v != int64(want) {
						t.Errorf("%s: %s = %#v, want the integer %d (line %v)", what, keys[i], l[keys[i]], want, l)
					}
				}
			}
			noCred := func(what string, l map[string]any) {
				t.Helper()
				for _, k := range keys {
					if v, ok := l[k]; ok {
						t.Errorf("%s: %s = %#v, want no such key (line %v)", what, k, v, l)
					}
				}
			}

			if err := echoOnce("unix", echoSock, "over unix"); err != nil {
				t.Fatal(err)
			}
			hasCred("unix end", next())
			if err := echoOnce("tcp", tcpAddr, "over tcp"); err != nil {
				t.Fatal(err)
			}
			noCred("tcp end", next())

			// max_connections = 1: refused on both endpoints while one is held.
			held, err := net.DialTimeout("unix", echoSock, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := echoOnceConn(held, "held"); err != nil {
				t.Fatal(err)
			}
			for _, ep := range [][2]string{{"unix", echoSock}, {"tcp", tcpAddr}} {
				c, err := net.DialTimeout(ep[0], ep[1], 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.Read(make([]byte, 1)) // closed by superd
				c.Close()
				l := next()
				if l["reason"] != "max_connections" {
					t.Errorf("%s rejection line %v", ep[0], l)
				}
				if ep[0] == "unix" {
					hasCred("unix rejection", l)
				} else {
					noCred("tcp rejection", l)
				}
			}
			held.Close()
			hasCred("held unix end", next())

			// exec: peer_pid is the client, pid the program.
			c, err := net.DialTimeout("unix", execSock, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			var pid int
			if _, err := fmt.Fscanf(c, "pid %d\n", &pid); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(c, "bye")
			l := next()
			hasCred("exec end", l)
			if v, ok := accessInt(l, "pid"); !ok || v != int64(pid) || (l["exit"] != "3" && l["exit"] != quotedValue("3")) {
				t.Errorf("exec line %v, want pid %d exit 3", l, pid)
			}
			d.signal(syscall.SIGTERM)
			d.wait(10 * time.Second)
		})
	}
}

// An access log whose pipe is still open but no longer read (a log
// collector that hangs) does not hold superd's exit: it waited for the
// stuck writer for good, after logging "superd stopped", and took no
// further SIGTERM. The lines it gave up on are counted as dropped.
func TestAccessLogStuckPipeDoesNotHoldExit(t *testing.T) {
	d, addr, _ := startWithStalledAccessLog(t)
	const conns = 1500 // ~150 bytes a line: past the 64 KiB pipe
	for i := range conns {
		if err := echoOnce("tcp", addr, fmt.Sprintf("c%d", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// Opening an access log that blocks (a FIFO nobody has opened yet) is part
// of the startup task, as a logfile's open is: a second SIGTERM exits at
// once. It ran before the signal loop, so superd hung at start, deaf to
// any number of SIGTERMs, and never said why it was not ready.
func TestAccessLogBlockedOpenAtStartSecondSignalExits(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "access.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
access_log { path = %q }
service "echo" "e" {
  access_log = true
  endpoint "tcp" { address = %q }
}
`, fifo, freeAddr(t)))
	d := startStarting(t, path, metrics)
	if !d.logged("metrics listening") {
		t.Fatalf("superd did not start its metrics listener\n%s", d.stderr.String())
	}
	// /readyz says starting: the open blocks.
	d.signal(syscall.SIGTERM)
	if !d.logged("shutdown requested") {
		t.Fatalf("the first SIGTERM was not taken during the startup\n%s", d.stderr.String())
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != exitFailure {
		t.Errorf("exit status %d after a second signal, want %d", code, exitFailure)
	}
}
