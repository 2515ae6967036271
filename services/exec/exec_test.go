//go:build linux

package exec

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/metrics"
)

// readPID reads the first line the child writes: its pid.
func readPID(t *testing.T, r *bufio.Reader, c net.Conn) int {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the child's pid: %v (%q)", err, line)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("the child wrote %q, not its pid", line)
	}
	return pid
}

func TestServeConnDirect(t *testing.T) {
	pairs := map[string]func(*testing.T) (net.Conn, net.Conn){
		"tcp": tcpPair, "unix": unixPair, "bare-tcp": bareTCPPair, "bare-unix": bareUnixPair,
	}
	for _, network := range []string{"tcp", "unix", "bare-tcp", "bare-unix"} {
		t.Run(network, func(t *testing.T) {
			f, logs := newTestFactory(t, `command = ["/bin/cat"]`)
			client, server := pairs[network](t)
			isUnix := strings.HasSuffix(network, "unix")
			// The peer as the exit line names it: a TCP client's address,
			// a unix client's pid and uid.
			wantPeer := client.LocalAddr().String()
			if isUnix {
				wantPeer = fmt.Sprintf("pid %d uid %d", os.Getpid(), os.Getuid())
			}
			h := serveConn(t, f, server, 0)
			const size = 2 << 20
			echoHalfClose(t, client, randomPayload(size))
			if err := h.wait(t, 10*time.Second); err != nil {
				t.Fatalf("ServeConn: %v", err)
			}
			if n := h.served.Load(); n != 1 {
				t.Errorf("Served called %d times", n)
			}
			in, out := testutil.ToFloat64(h.received), testutil.ToFloat64(h.sent)
			want := float64(size)
			if isUnix {
				want = 0 // the socket itself went to the program: not counted
			}
			if in != want || out != want {
				t.Errorf("counted %v received, %v sent; want %v each", in, out, want)
			}
			exits := logs.with("program exited")
			if len(exits) != 1 || exits[0]["status"] != "0" || exits[0]["service"] != "x" || exits[0]["pid"] == "" || exits[0]["peer"] != wantPeer {
				t.Errorf("exit logged as %v; want peer %q", exits, wantPeer)
			}
		})
	}
}

func TestServeConnRelayedTLS(t *testing.T) {
	f, _ := newTestFactory(t, `command = ["/bin/cat"]`)
	client, server := tlsPair(t)
	h := serveConn(t, f, server, 0)
	const size = 2 << 20
	echoHalfClose(t, client, randomPayload(size))
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	if in, out := testutil.ToFloat64(h.received), testutil.ToFloat64(h.sent); in != size || out != size {
		t.Errorf("counted %v received, %v sent; want %d each", in, out, size)
	}
}

// TestServeConnRelayHalfClose: the client's end of stream reaches the
// child as its end of input while the child still writes; the child's end
// of output (its socket closed) reaches the client as end of stream while
// the child still runs.
func TestServeConnRelayHalfClose(t *testing.T) {
	f, _ := newTestFactory(t, `command = ["/bin/sh", "-c", "cat >/dev/null; echo got eof; echo bye"]`)
	client, server := tlsPair(t)
	h := serveConn(t, f, server, 0)
	if _, err := client.Write([]byte("more input\n")); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(client); err != nil || string(b) != "got eof\nbye\n" {
		t.Fatalf("read %q, %v; want the child's output after our EOF, then EOF", b, err)
	}
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	if in, out := testutil.ToFloat64(h.received), testutil.ToFloat64(h.sent); in != 11 || out != 12 {
		t.Errorf("counted %v received, %v sent; want 11, 12", in, out)
	}

	f, _ = newTestFactory(t, `command = ["/bin/sh", "-c", "echo $$; exec 0<&- 1>&-; sleep 0.5"]`)
	client, server = tlsPair(t)
	h = serveConn(t, f, server, 0)
	r := bufio.NewReader(client)
	pid := readPID(t, r, client)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(r); err != nil || len(b) != 0 {
		t.Fatalf("read %q, %v; want EOF", b, err)
	}
	if !alive(pid) {
		t.Error("the child had exited before its closed socket reached the client (test too slow?)")
	}
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
}

// TestServeConnStopAndKill: stop_signal goes to the child's process group
// when the drain begins; a child that ignores it is killed when the drain's
// time is up, and ServeConn reports the shutdown timeout.
func TestServeConnStopAndKill(t *testing.T) {
	for _, kind := range []string{"tcp", "tls"} {
		t.Run(kind, func(t *testing.T) {
			pair := func() (net.Conn, net.Conn) {
				if kind == "tls" {
					c, s := tlsPair(t)
					return c, s
				}
				return tcpPair(t)
			}

			// A child that dies of stop_signal (SIGHUP here), and its
			// grandchild with it.
			f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "sleep 100 & echo $!; wait"]
  stop_signal = "SIGHUP"`)
			client, server := pair()
			h := serveConn(t, f, server, 0)
			grandchild := readPID(t, bufio.NewReader(client), client)
			h.stop()
			if err := h.wait(t, 10*time.Second); err != nil {
				t.Fatalf("a child ended by stop_signal: ServeConn returned %v, want nil", err)
			}
			waitFor(t, 5*time.Second, "the grandchild to end", func() bool { return !alive(grandchild) })
			if e := logs.with("program exited"); len(e) != 1 || e[0]["signal"] != "SIGHUP" {
				t.Errorf("exit logged as %v", e)
			}

			// A child that ignores it.
			f, logs = newTestFactory(t, `command = ["/bin/sh", "-c", "trap '' TERM; echo $$; exec sleep 100"]`)
			client, server = pair()
			h = serveConn(t, f, server, 0)
			pid := readPID(t, bufio.NewReader(client), client)
			h.stop()
			for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if h.finished() || !alive(pid) {
					t.Fatal("the child that ignores SIGTERM ended at the start of the drain")
				}
			}
			h.kill()
			if err := h.wait(t, 10*time.Second); !errors.Is(err, framework.ErrShutdownTimeout) {
				t.Fatalf("ServeConn returned %v, want ErrShutdownTimeout", err)
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
				t.Errorf("process %d still exists (a zombie?) after ServeConn returned", pid)
			}
			if e := logs.with("program exited"); len(e) != 1 || e[0]["signal"] != "SIGKILL" {
				t.Errorf("exit logged as %v", e)
			}
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, client); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the client's connection after the kill: %v", err)
			}
		})
	}
}

// TestServeConnStopStoppedChild: a stopped program (SIGSTOP: an operator,
// a debugger) that handles stop_signal gets to handle it when the drain
// begins: SIGCONT follows stop_signal, as systemd and s6 send it, instead
// of the signal waiting, pending, for the SIGKILL at shutdown_timeout.
func TestServeConnStopStoppedChild(t *testing.T) {
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "trap 'echo cleaned up; exit 7' TERM; echo $$; kill -STOP $$; exec sleep 100"]`)
	client, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	r := bufio.NewReader(client)
	pid := readPID(t, r, client)
	waitFor(t, 10*time.Second, "the child to stop", func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		i := strings.LastIndexByte(string(b), ')')
		return err == nil && i > 0 && i+2 < len(b) && b[i+2] == 'T'
	})
	h.stop()
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatalf("ServeConn returned %v, want nil", err)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(r); string(b) != "cleaned up\n" {
		t.Errorf("the child wrote %q after stop_signal, want its trap's line", b)
	}
	if e := logs.with("program exited"); len(e) != 1 || e[0]["status"] != "7" {
		t.Errorf("exit logged as %v, want status 7 (its trap's)", e)
	}
}

// TestShimNamesTheLimit: a resource limit the kernel refuses (nofile
// above fs.nr_open) fails the start, and the reason logged names the
// limit as the file does (nofile), not by its number in the kernel.
func TestShimNamesTheLimit(t *testing.T) {
	f, logs := newTestFactory(t, "command = [\"/bin/true\"]\n  rlimits {\n    nofile = 1099511627776\n  }")
	_, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	var rej *framework.RejectError
	if err := h.wait(t, 10*time.Second); !errors.As(err, &rej) || rej.Reason != metrics.RejectSpawn {
		t.Fatalf("ServeConn returned %v, want a spawn rejection", err)
	}
	if l := logs.with("cannot start program"); len(l) != 1 || !strings.Contains(l[0]["err"], "resource limit nofile = 1099511627776: ") {
		t.Errorf("failure logged as %v; want the limit named nofile", l)
	}
}

// TestServeConnIdleTimeout: idle_timeout applies where superd relays (the
// child gets stop_signal), and not to a socket handed over.
func TestServeConnIdleTimeout(t *testing.T) {
	f, _ := newTestFactory(t, `command = ["/bin/sh", "-c", "echo $$; read x; echo read"]`)
	client, server := tlsPair(t)
	start := time.Now()
	h := serveConn(t, f, server, 300*time.Millisecond)
	pid := readPID(t, bufio.NewReader(client), client)
	if err := h.wait(t, 10*time.Second); !errors.Is(err, framework.ErrIdleTimeout) {
		t.Fatalf("relayed: ServeConn returned %v, want ErrIdleTimeout", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("idle timeout after %v", el)
	}
	waitFor(t, 5*time.Second, "the idle child to end", func() bool { return !alive(pid) })

	tc, ts := tcpPair(t)
	h = serveConn(t, f, ts, 300*time.Millisecond)
	r := bufio.NewReader(tc)
	pid = readPID(t, r, tc)
	for deadline := time.Now().Add(600 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if h.finished() || !alive(pid) {
			t.Fatal("a socket handed over was ended by idle_timeout")
		}
	}
	tc.Write([]byte("x\n"))
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, _ := r.ReadString('\n'); line != "read\n" {
		t.Errorf("the child wrote %q", line)
	}
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatalf("direct: ServeConn returned %v", err)
	}
}

// TestServeConnIdleTimeoutWhileStalled: a relayed connection's
// idle_timeout counts from the client's last input whatever the relay is
// doing: while superd cannot pass the client's input on (the program does
// not read) and after the client's end of stream, a connection that
// receives nothing for idle_timeout ends by it, and the program with it.
func TestServeConnIdleTimeoutWhileStalled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client func(c *tls.Conn)
	}{
		{"program not reading", func(c *tls.Conn) {
			go c.Write(make([]byte, 8<<20)) // blocks once the buffers are full
		}},
		{"client half-closed", func(c *tls.Conn) { c.CloseWrite() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := newTestFactory(t, `command = ["/bin/sh", "-c", "echo $$; exec sleep 1000"]`)
			client, server := tlsPair(t)
			h := serveConn(t, f, server, 300*time.Millisecond, 100*time.Millisecond)
			pid := readPID(t, bufio.NewReader(client), client)
			tc.client(client)
			if err := h.wait(t, 10*time.Second); !errors.Is(err, framework.ErrIdleTimeout) {
				t.Fatalf("ServeConn returned %v, want ErrIdleTimeout", err)
			}
			if alive(pid) {
				t.Error("the child runs after ServeConn returned")
			}
		})
	}
}

// TestServeConnIdleTimeoutGrace: after idle_timeout's stop_signal, a
// program that obeys it is not killed (SIGKILL comes only after the
// grace, shutdown_timeout), and one that ignores it is, with the
// connection still ended by idle_timeout.
func TestServeConnIdleTimeoutGrace(t *testing.T) {
	for _, tc := range []struct {
		name, command string
		grace         time.Duration
		signal        string
	}{
		{"obeys", `exec sleep 1000`, time.Hour, "SIGTERM"},
		{"ignores", `trap '' TERM; exec sleep 1000`, 100 * time.Millisecond, "SIGKILL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, logs := newTestFactory(t, fmt.Sprintf(`command = ["/bin/sh", "-c", "echo $$; %s"]`, tc.command))
			client, server := tlsPair(t)
			h := serveConn(t, f, server, 200*time.Millisecond, tc.grace)
			pid := readPID(t, bufio.NewReader(client), client)
			if err := h.wait(t, 10*time.Second); !errors.Is(err, framework.ErrIdleTimeout) {
				t.Fatalf("ServeConn returned %v, want ErrIdleTimeout", err)
			}
			if alive(pid) {
				t.Error("the child runs after ServeConn returned")
			}
			exits := logs.with("program exited")
			if len(exits) != 1 || exits[0]["signal"] != tc.signal {
				t.Errorf("exit logged as %v, want signal %s", exits, tc.signal)
			}
			if killed := logs.with("program still running after stop_signal; killed"); (len(killed) == 1) != (tc.signal == "SIGKILL") {
				t.Errorf("kill logged as %v", killed)
			}
			if n := testutil.ToFloat64(f.results[ResultSignal]); n != 1 {
				t.Errorf("exits_total{result=signal} = %v, want 1", n)
			}
		})
	}
}

func TestServeConnSpawnFailure(t *testing.T) {
	prog := filepath.Join(t.TempDir(), "true")
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"tcp", "tls"} {
		if err := os.WriteFile(prog, b, 0o755); err != nil {
			t.Fatal(err)
		}
		f, logs := newTestFactory(t, `command = ["`+prog+`"]`)
		os.Remove(prog) // after validate, before the connection
		var client, server net.Conn
		if kind == "tls" {
			client, server = tlsPair(t)
		} else {
			client, server = tcpPair(t)
		}
		h := serveConn(t, f, server, 0)
		var rej *framework.RejectError
		if err := h.wait(t, 10*time.Second); !errors.As(err, &rej) || rej.Reason != metrics.RejectSpawn {
			t.Fatalf("%s: ServeConn returned %v, want a spawn rejection", kind, err)
		}
		if n := h.served.Load(); n != 0 {
			t.Errorf("%s: Served called for a connection never served", kind)
		}
		if l := logs.with("cannot start program"); len(l) != 1 {
			t.Errorf("%s: failure logged as %v", kind, l)
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("%s: the client's connection is still open: %d, %v", kind, n, err)
		}
		if testutil.ToFloat64(f.procs) != 0 {
			t.Errorf("%s: processes gauge %v after a failed spawn", kind, testutil.ToFloat64(f.procs))
		}
	}
}

// TestServeConnSpawnFailuresLogged: a client reconnecting in a loop to a
// program that cannot start costs a log line a second, not one per
// connection; the lines say how many failures they leave out, and the
// first start after the failures gives the rest, so every failure is
// accounted for.
func TestServeConnSpawnFailuresLogged(t *testing.T) {
	prog := filepath.Join(t.TempDir(), "true")
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, b, 0o755); err != nil {
		t.Fatal(err)
	}
	f, logs := newTestFactory(t, `command = ["`+prog+`"]`)
	os.Remove(prog)
	const attempts = 20
	for range attempts {
		_, server := tcpPair(t)
		var rej *framework.RejectError
		if err := serveConn(t, f, server, 0).wait(t, 10*time.Second); !errors.As(err, &rej) || rej.Reason != metrics.RejectSpawn {
			t.Fatalf("ServeConn returned %v, want a spawn rejection", err)
		}
	}
	if err := os.WriteFile(prog, b, 0o755); err != nil {
		t.Fatal(err)
	}
	_, server := tcpPair(t)
	if err := serveConn(t, f, server, 0).wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	failed := logs.with("cannot start program")
	if len(failed) == 0 || len(failed) >= attempts {
		t.Fatalf("%d failures logged in %d lines; want a line a second", attempts, len(failed))
	}
	accounted := 0
	for _, l := range failed {
		accounted++
		if n := l["failures_not_logged"]; n != "" {
			v, err := strconv.Atoi(n)
			if err != nil {
				t.Fatal(err)
			}
			accounted += v
		}
	}
	// The start logs what the failure lines left out, if anything (the
	// last failure may itself have been logged, on a slow machine).
	again := logs.with("program started again after failures")
	if len(again) > 1 || (len(again) == 0) != (accounted == attempts) {
		t.Fatalf("the start after the failures logged as %v; the failures as %v", again, failed)
	}
	for _, l := range again {
		v, err := strconv.Atoi(l["failures_not_logged"])
		if err != nil {
			t.Fatal(err)
		}
		accounted += v
	}
	if accounted != attempts {
		t.Errorf("the log accounts for %d failures, want %d: %v, then %v", accounted, attempts, failed, again)
	}
}

// TestServeConnDirGone: a dir removed after validate fails the start with
// the directory named, not the program.
func TestServeConnDirGone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "work")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, logs := newTestFactory(t, `command = ["/bin/true"]
  dir = "`+dir+`"`)
	os.Remove(dir)
	_, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	var rej *framework.RejectError
	if err := h.wait(t, 10*time.Second); !errors.As(err, &rej) || rej.Reason != metrics.RejectSpawn {
		t.Fatalf("ServeConn returned %v, want a spawn rejection", err)
	}
	l := logs.with("cannot start program")
	if len(l) != 1 || !strings.Contains(l[0]["err"], "chdir "+dir) || strings.Contains(l[0]["err"], "/bin/true") {
		t.Errorf("failure logged as %v; want the directory named", l)
	}
}

// TestStderr: "log" logs each line with service and pid, cuts long lines,
// and stays bounded when a child floods it; "discard" logs nothing.
func TestStderr(t *testing.T) {
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "echo one >&2; printf '%05000d\\n' 7 >&2; echo two >&2; echo $$"]`)
	client, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	pid := readPID(t, bufio.NewReader(client), client)
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var lines []map[string]string
	waitFor(t, 5*time.Second, "three stderr lines logged", func() bool {
		lines = logs.with("program stderr")
		return len(lines) >= 3
	})
	want := []string{"one", strings.Repeat("0", maxStderrLine), "two"}
	for i, l := range lines {
		if l["line"] != want[i] || l["pid"] != strconv.Itoa(pid) || l["service"] != "x" || (i == 1) != (l["truncated"] == "true") {
			t.Errorf("line %d logged as %v", i, l)
		}
	}

	// A flood: 3,000 lines at once. What is logged is bounded by the
	// rate; everything else is counted, so logged + counted = 3,000.
	f, logs = newTestFactory(t, `command = ["/bin/sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo flood $i >&2; i=$((i+1)); done"]`)
	client, server = tcpPair(t)
	start := time.Now()
	h = serveConn(t, f, server, 0)
	if err := h.wait(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var logged, counted int
	// The logger may still be reading when ServeConn returns.
	waitFor(t, 5*time.Second, "the flood's summary", func() bool { return len(logs.with("program stderr lines not logged (too many)")) == 1 })
	el := time.Since(start)
	for _, l := range logs.with("program stderr") {
		logged++
		n, _ := strconv.Atoi(l["suppressed_before"])
		counted += n
	}
	for _, l := range logs.with("program stderr lines not logged (too many)") {
		n, _ := strconv.Atoi(l["lines"])
		counted += n
	}
	if limit := stderrBurst + int(el.Seconds()*stderrRate) + 1; logged > limit {
		t.Errorf("%d lines logged in %v; the limit is %d", logged, el, limit)
	}
	if logged+counted != 3000 {
		t.Errorf("%d lines logged + %d counted as not logged = %d, want 3000", logged, counted, logged+counted)
	}

	f, logs = newTestFactory(t, `command = ["/bin/sh", "-c", "echo hidden >&2"]
  stderr = "discard"`)
	_, server = tcpPair(t)
	h = serveConn(t, f, server, 0)
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if l := logs.with("program stderr"); len(l) != 0 {
		t.Errorf("stderr = discard logged %v", l)
	}
}

// TestShim: umask and nice are applied by superd re-executing itself
// (here the test binary, which links the package) before the program.
func TestShim(t *testing.T) {
	f, _ := newTestFactory(t, `command = ["/bin/sh", "-c", "umask; cut -d' ' -f19 /proc/$$/stat; ulimit -n"]
  umask = "0077"
  nice  = 3
  rlimits {
    nofile = 100
  }`)
	client, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(client)
	if err != nil || string(b) != "0077\n3\n100\n" {
		t.Errorf("the child printed %q, %v; want umask 0077, nice 3, nofile 100", b, err)
	}
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestShimAutogroupNice: with scheduler autogroups, the child's setsid
// makes it an autogroup of its own, where its nice weighs against no other
// process: the shim gives the autogroup the nice too, and leaves superd's
// own autogroup alone.
func TestShimAutogroupNice(t *testing.T) {
	own, err := os.ReadFile("/proc/self/autogroup")
	if err != nil {
		t.Skipf("no scheduler autogroups here (kernel without CONFIG_SCHED_AUTOGROUP): %v", err)
	}
	f, logs := newTestFactory(t, `command = ["/bin/cat", "/proc/self/autogroup"]
  nice = 7`)
	// Without CAP_SYS_ADMIN the kernel takes one autogroup write per 100 ms
	// system-wide (beyond that the child keeps only its own nice, by
	// design): another test or process may have just written.
	tries := 1
	if !hasCapability(t, 21) {
		tries = 10
	}
	var b []byte
	for i := 0; i < tries; i++ {
		if i > 0 {
			time.Sleep(150 * time.Millisecond)
		}
		client, server := tcpPair(t)
		h := serveConn(t, f, server, 0)
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err = io.ReadAll(client)
		if err := h.wait(t, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if err == nil && strings.HasSuffix(string(b), " nice 7\n") {
			break
		}
	}
	if err != nil || !strings.HasSuffix(string(b), " nice 7\n") {
		t.Errorf("the child's /proc/self/autogroup reads %q, %v; want it to end with \"nice 7\"; stderr %v",
			b, err, logs.with("program stderr"))
	}
	if again, _ := os.ReadFile("/proc/self/autogroup"); string(again) != string(own) {
		t.Errorf("superd's own autogroup changed from %q to %q", own, again)
	}
}

// TestServeListener: wait mode's restart back-off, and a drain cutting it
// short.
func TestServeListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	file, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	stopping, stop := context.WithCancel(context.Background())
	killed, kill := context.WithCancel(context.Background())
	hl := &framework.HandedListener{File: file, Endpoint: "tcp:" + ln.Addr().String(), Stopping: stopping, Killed: killed}

	// A program that exits 0 at once with nothing waiting: no delay.
	f, _ := newTestFactory(t, `command = ["/bin/true"]
  wait = true`)
	start := time.Now()
	if err := f.ServeListener(hl); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 900*time.Millisecond {
		t.Errorf("a program that succeeded was followed by a %v delay", el)
	}

	// One that fails at once: 1 s, then 2 s.
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "exit 1"]
  wait = true`)
	start = time.Now()
	if err := f.ServeListener(hl); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("a program that failed at once was restarted after %v, before the 1 s back-off", el)
	}
	if l := logs.with("program ended soon after its start; restarting after a delay"); len(l) != 1 || l[0]["delay"] != "1s" {
		t.Errorf("back-off logged as %v", l)
	}
	// The drain begins during the next back-off (2 s): ServeListener
	// returns at once.
	go func() {
		waitFor(t, 5*time.Second, "the second failure", func() bool {
			return len(logs.with("program ended soon after its start; restarting after a delay")) == 2
		})
		stop()
	}()
	start = time.Now()
	if err := f.ServeListener(hl); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Errorf("ServeListener kept backing off for %v after the drain began", el)
	}
	kill()
}

func TestRestartsBackoff(t *testing.T) {
	var r restarts
	var got []time.Duration
	for range 9 {
		got = append(got, r.failed())
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("delays %v, want 1s doubling to 1m", got)
		}
	}
	r.reset()
	if d := r.failed(); d != time.Second {
		t.Errorf("after reset: %v", d)
	}
}

// Quick runs that leave input waiting are delayed only beyond
// maxQuickRuns within loopWindow; a new window starts afresh.
func TestRestartsLooping(t *testing.T) {
	var r restarts
	now := time.Unix(1e9, 0)
	for i := range maxQuickRuns {
		if d, looping := r.ranLeavingInput(now.Add(time.Duration(i) * time.Millisecond)); looping {
			t.Fatalf("run %d of a minute delayed by %v", i+1, d)
		}
	}
	if d, looping := r.ranLeavingInput(now.Add(time.Second)); !looping || d != time.Second {
		t.Fatalf("run %d within a minute: delay %v, %v; want 1s", maxQuickRuns+1, d, looping)
	}
	if d, looping := r.ranLeavingInput(now.Add(2 * time.Second)); !looping || d != 2*time.Second {
		t.Fatalf("the next: delay %v, %v; want 2s", d, looping)
	}
	if d, looping := r.ranLeavingInput(now.Add(loopWindow + time.Second)); looping {
		t.Fatalf("the first run of a new minute delayed by %v", d)
	}
	if r.quickRuns != 1 {
		t.Errorf("%d quick runs counted in the new minute, want 1", r.quickRuns)
	}
}

// TestServeListenerOnePerRun: a program that answers one datagram per run
// and exits 0 is started again at once for the next, though more are
// waiting; a program that never takes its input is delayed, only after
// maxQuickRuns quick runs; each endpoint keeps its own record.
func TestServeListenerOnePerRun(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	file, err := pc.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	stopping, stop := context.WithCancel(context.Background())
	defer stop()
	killed, kill := context.WithCancel(context.Background())
	defer kill()
	hl := &framework.HandedListener{File: file, Endpoint: "udp:" + pc.LocalAddr().String(), Stopping: stopping, Killed: killed}

	// dd reads one datagram (one read of the socket) and exits 0.
	f, logs := newTestFactory(t, `command = ["/bin/dd", "bs=512", "count=1", "of=/dev/null", "status=none"]
  wait = true`)
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const datagrams = 4
	for range datagrams {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for range datagrams {
		if err := f.ServeListener(hl); err != nil {
			t.Fatal(err)
		}
	}
	if l := logs.with("program ended soon after its start; restarting after a delay"); len(l) > 0 {
		t.Errorf("%d one-datagram runs were delayed: %v", datagrams, l)
	}
	if pending(file) {
		t.Errorf("a datagram is still waiting after %d runs", datagrams)
	}

	// /bin/true takes nothing: the datagram stays, and the program is
	// started again at once, maxQuickRuns times, then after a delay.
	f, logs = newTestFactory(t, `command = ["/bin/true"]
  wait = true`)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	runs := 0
	for len(logs.with("program started too often, each run ending at once with input still waiting; restarting after a delay")) == 0 {
		if runs > maxQuickRuns {
			t.Fatalf("%d quick runs leaving input waiting, and no delay", runs)
		}
		if err := f.ServeListener(hl); err != nil {
			t.Fatal(err)
		}
		runs++
	}
	if runs != maxQuickRuns+1 {
		t.Errorf("delayed after %d runs, want %d", runs, maxQuickRuns+1)
	}
	l := logs.with("program started too often, each run ending at once with input still waiting; restarting after a delay")
	if l[0]["delay"] != "1s" || l[0]["starts"] != strconv.Itoa(maxQuickRuns+1) {
		t.Errorf("logged %v, want delay 1s after %d starts", l[0], maxQuickRuns+1)
	}
	if r := f.restartsOf("udp:elsewhere"); r.quickRuns != 0 || r.delay != 0 {
		t.Errorf("another endpoint's record: %+v", *r)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"SIGTERM": syscall.SIGTERM, "TERM": syscall.SIGTERM, "term": syscall.SIGTERM, "15": syscall.SIGTERM,
		"SIGHUP": syscall.SIGHUP, "SIGKILL": syscall.SIGKILL, "usr1": syscall.SIGUSR1,
	} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "SIG", "SIGFOO", "0", "-1", "65", "TERM "} {
		if got, err := parseSignal(in); err == nil {
			t.Errorf("parseSignal(%q) = %v, want an error", in, got)
		}
	}
}

func TestFdName(t *testing.T) {
	for in, want := range map[string]string{
		"echo": "echo", "a:b": "a_b", "two words": "two_words", "tab\there": "tab_here", "é": "_",
		strings.Repeat("x", 300): strings.Repeat("x", 255),
	} {
		if got := fdName(in); got != want {
			t.Errorf("fdName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPlainAddr(t *testing.T) {
	for _, tt := range []struct {
		addr     *net.TCPAddr
		ip, port string
	}{
		{&net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 7}, "127.0.0.1", "7"},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1").To4(), Port: 80}, "127.0.0.1", "80"},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 1}, "::1", "1"},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 2, Zone: "lo"}, "fe80::1%lo", "2"},
	} {
		if ip, port := plainAddr(tt.addr); ip != tt.ip || port != tt.port {
			t.Errorf("plainAddr(%v) = %s %s, want %s %s", tt.addr, ip, port, tt.ip, tt.port)
		}
	}
}

// TestServeConnRelayKilledWhileFlushing: a child that has written more
// than a client reads and exited leaves the relay flushing to that client;
// when the drain's time runs out the connection is aborted, which is a
// shutdown timeout, not a clean end.
func TestServeConnRelayKilledWhileFlushing(t *testing.T) {
	// Small socket buffers on the TCP side: the child's 100 kB fit in the
	// socket pair, not in the connection to a client that never reads.
	f, logs := newTestFactory(t, `command = ["/bin/sh", "-c", "head -c 100000 /dev/zero"]`)
	_, server := tlsPair(t, func(c, s *net.TCPConn) {
		c.SetReadBuffer(4096)
		s.SetWriteBuffer(4096)
	})
	h := serveConn(t, f, server, 0)
	waitFor(t, 10*time.Second, "the child to exit", func() bool { return len(logs.with("program exited")) == 1 })
	h.stop()
	if h.finished() {
		t.Fatal("ServeConn returned while output is still being relayed")
	}
	h.kill()
	if err := h.wait(t, 10*time.Second); !errors.Is(err, framework.ErrShutdownTimeout) {
		t.Fatalf("ServeConn returned %v, want ErrShutdownTimeout", err)
	}
}

// TestShimBeforeUser: nice and rlimits are applied while the child still
// has superd's privileges, then the user is taken on: a negative nice and
// a hard limit above superd's are what a program run as another user
// cannot set itself (inetd and systemd set them before dropping).
func TestShimBeforeUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	nofile := lim.Max // raised when superd may (CAP_SYS_RESOURCE)
	if hasCapability(t, 24) {
		nofile += 16
	}
	f, logs := newTestFactory(t, fmt.Sprintf(`command = ["/bin/sh", "-c", "id -u; cut -d' ' -f19 /proc/$$/stat; ulimit -Hn; umask"]
  user   = "nobody"
  groups = ["0"]
  umask  = "0027"
  nice   = -3
  rlimits {
    nofile = %d
  }`, nofile))
	client, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(client)
	want := fmt.Sprintf("%s\n-3\n%d\n0027\n", nobody.Uid, nofile)
	if err != nil || string(b) != want {
		t.Errorf("the child printed %q, %v; want %q (uid, nice, hard nofile, umask); stderr %v",
			b, err, want, logs.with("program stderr"))
	}
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestDirEnteredAsUser: the working directory is entered as the program's
// user, whether the child is started directly or through the shim: one the
// user may enter is its working directory, and one only root may enter is
// refused (systemd's WorkingDirectory= does the same), never entered with
// superd's privileges.
func TestDirEnteredAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skip("no user nobody")
	}
	// Not under t.TempDir: its parent is closed to other users.
	top, err := os.MkdirTemp("", "superd-exec-dir-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	if err := os.Chmod(top, 0o755); err != nil {
		t.Fatal(err)
	}
	open, closed := filepath.Join(top, "open"), filepath.Join(top, "closed")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, start := range []struct{ name, extra string }{
		{"directly", ""},
		{"through the shim", "\n  umask = \"0022\""},
	} {
		t.Run(start.name, func(t *testing.T) {
			body := func(dir string) string {
				return fmt.Sprintf("command = [\"/bin/sh\", \"-c\", \"pwd\"]\n  user = \"nobody\"\n  dir = %q%s", dir, start.extra)
			}
			f, logs := newTestFactory(t, body(open))
			client, server := tcpPair(t)
			h := serveConn(t, f, server, 0)
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := io.ReadAll(client); err != nil || string(b) != open+"\n" {
				t.Errorf("the child printed %q, %v; want its working directory %q; stderr %v", b, err, open, logs.with("program stderr"))
			}
			if err := h.wait(t, 10*time.Second); err != nil {
				t.Fatal(err)
			}

			f, logs = newTestFactory(t, body(closed))
			client, server = tcpPair(t)
			h = serveConn(t, f, server, 0)
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, _ := io.ReadAll(client)
			err := h.wait(t, 10*time.Second)
			if len(b) != 0 {
				t.Errorf("the program ran in %q, which its user may not enter: it printed %q", closed, b)
			}
			// Either way the start fails, as a failed exec does: rejected
			// as spawn, with the reason logged (the shim's own words when
			// it is the shim that cannot enter), and no program exit.
			var rej *framework.RejectError
			if !errors.As(err, &rej) || rej.Reason != metrics.RejectSpawn {
				t.Fatalf("ServeConn returned %v, want a spawn rejection", err)
			}
			failed := logs.with("cannot start program")
			if len(failed) != 1 || !strings.Contains(fmt.Sprint(failed[0]["err"]), "permission denied") {
				t.Errorf("the failure logged as %v", failed)
			}
			if start.extra != "" && !strings.Contains(fmt.Sprint(failed[0]["err"]), "cannot enter the working directory") {
				t.Errorf("the shim's reason is not in the log: %v", failed)
			}
			// Started directly, the start fails with only an errno,
			// which the program's exec could have given too: the log
			// names the directory, not the program.
			if start.extra == "" && (!strings.Contains(fmt.Sprint(failed[0]["err"]), "chdir "+closed) || strings.Contains(fmt.Sprint(failed[0]["err"]), "/bin/sh")) {
				t.Errorf("the failure logged as %v; want the directory named", failed)
			}
			if exits, stderr := logs.with("program exited"), logs.with("program stderr"); len(exits) != 0 || len(stderr) != 0 {
				t.Errorf("a start that failed logged exits %v and stderr %v", exits, stderr)
			}
			if n := testutil.ToFloat64(f.procs); n != 0 {
				t.Errorf("processes gauge %v after a failed start", n)
			}
		})
	}
}

// hasCapability reports whether the process has capability bit in its
// effective set.
func hasCapability(t *testing.T, bit uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<bit) != 0
		}
	}
	return false
}

// TestRelayClientGone: a relayed client that goes away (closes while the
// program writes, or resets while it reads) ends the relay: the program
// sees its connection end (EPIPE, end of input), as it would on a socket
// handed over directly, instead of blocking on it forever.
func TestRelayClientGone(t *testing.T) {
	t.Run("closed while the program writes", func(t *testing.T) {
		f, _ := newTestFactory(t, `command = ["/bin/sh", "-c", "while :; do echo 0123456789012345678901234567890123456789; done"]`)
		client, server := tlsPair(t)
		h := serveConn(t, f, server, 0)
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(client, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		client.Close()
		h.wait(t, 10*time.Second)
	})
	t.Run("reset while the program reads", func(t *testing.T) {
		f, _ := newTestFactory(t, `command = ["/bin/sh", "-c", "echo ready; cat"]`)
		var raw *net.TCPConn
		client, server := tlsPair(t, func(c, _ *net.TCPConn) { raw = c })
		h := serveConn(t, f, server, 0)
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(client, make([]byte, 6)); err != nil {
			t.Fatal(err)
		}
		raw.SetLinger(0)
		raw.Close() // a reset, and no close_notify
		h.wait(t, 10*time.Second)
	})
}

// A program that closes its standard input and output and goes on running
// ends a unix connection there: superd keeps no copy of the socket (the
// client sees the end of stream before the program exits).
func TestUnixEndsWhenProgramCloses(t *testing.T) {
	for name, pair := range map[string]func(*testing.T) (net.Conn, net.Conn){"unix": unixPair, "bare-unix": bareUnixPair} {
		f, _ := newTestFactory(t, `command = ["/bin/sh", "-c", "echo bye; exec <&- >&-; sleep 60"]`)
		client, server := pair(t)
		h := serveConn(t, f, server, 0)
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(client)
		if err != nil || string(b) != "bye\n" {
			t.Errorf("%s: client read %q, %v; want bye and the end of stream", name, b, err)
		}
		if h.finished() {
			t.Errorf("%s: the program exited before the end of stream came", name)
		}
		h.kill()
		h.wait(t, 10*time.Second)
		client.Close()
	}
}

// A signal superd ignores (SIGHUP under nohup) reaches the child with its
// default disposition: a program that ignored it would not end by
// stop_signal = "SIGHUP".
func TestChildSignalsNotIgnored(t *testing.T) {
	sigs := []os.Signal{syscall.SIGHUP, syscall.SIGQUIT, syscall.Signal(40)}
	signal.Ignore(sigs...)
	// Afterwards they stay caught into a channel never read, as the
	// factory's start left them: signal.Reset would ignore them again
	// (it puts back the disposition found at the first Notify, the
	// Ignore's), and the later tests' children would inherit that.
	t.Cleanup(func() { signal.Notify(ignoredSignalsSink, sigs...) })
	f, _ := newTestFactory(t, `command = ["/bin/cat", "/proc/self/status"]`)
	client, server := tcpPair(t)
	h := serveConn(t, f, server, 0)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	h.wait(t, 10*time.Second)
	var ignored uint64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			if ignored, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Signal n is bit n-1; the C library's 32 and 33 are left as the
	// test was started.
	ignored &^= 1<<(32-1) | 1<<(33-1)
	if ignored != 0 {
		t.Errorf("the child ignores signals %#x, want none (but maybe 32 and 33)", ignored)
	}
}
