package main

// End-to-end tests of `superd run` serving: echo over tcp, unix and TLS,
// qotd's round robin, connection limits and allow/deny, a graceful
// shutdown that flushes what was written, and the exit codes.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestEchoOverTCPUnixTLS(t *testing.T) {
	tcpAddr, tlsAddr := freeAddr(t), freeAddr(t)
	sock := filepath.Join(t.TempDir(), "echo.sock")
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "tcp"  { address = %q }
  endpoint "unix" { path = %q }
  endpoint "tls"  {
    address     = %q
    self_signed = true
  }
}
`, tcpAddr, sock, tlsAddr))
	d := startDaemon(t, path, maddr)
	const size = 4 << 20
	payload := randomBytes(t, size)

	c, err := net.Dial("tcp", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, c, payload)
	c.Close()

	u, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, u, payload)
	u.Close()

	tc, err := tls.Dial("tcp", tlsAddr, &tls.Config{InsecureSkipVerify: true}) // self-signed
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, tc, payload)
	tc.Close()

	svc := map[string]string{"service": "e", "factory": "echo"}
	d.waitMetric("superd_connections_active", svc, 0)
	fams := d.scrape()
	for _, ep := range []string{"tcp:" + tcpAddr, "unix:" + sock, "tls:" + tlsAddr} {
		if v, _ := metric(fams, "superd_connections_total", map[string]string{"service": "e", "endpoint": ep}); v != 1 {
			t.Errorf("connections_total{endpoint=%q} = %v, want 1", ep, v)
		}
	}
	for _, name := range []string{"superd_received_bytes_total", "superd_sent_bytes_total"} {
		if v, _ := metric(fams, name, svc); v != 3*size {
			t.Errorf("%s = %v, want %v", name, v, 3*size)
		}
	}
	if v, _ := metric(fams, "superd_factory_up", svc); v != 1 {
		t.Errorf("factory_up = %v, want 1", v)
	}
	if v, _ := metric(fams, "superd_connection_duration_seconds", svc); v != 3 {
		t.Errorf("connection_duration_seconds count = %v, want 3", v)
	}
	for _, r := range []string{"max_connections", "max_connections_per_ip", "rate_limit", "rate_limit_per_ip", "denied", "tls_handshake", "factory"} {
		if _, ok := metric(fams, "superd_connections_rejected_total", map[string]string{"service": "e", "reason": r}); !ok {
			t.Errorf("rejected_total{reason=%q} missing", r)
		}
	}
	for _, r := range []string{"idle_timeout", "slow_consumer", "shutdown_timeout"} {
		if _, ok := metric(fams, "superd_connections_dropped_total", map[string]string{"service": "e", "reason": r}); !ok {
			t.Errorf("dropped_total{reason=%q} missing", r)
		}
	}
	for _, res := range []string{"success", "failure"} {
		if _, ok := metric(fams, "superd_config_reloads_total", map[string]string{"result": res}); !ok {
			t.Errorf("config_reloads_total{result=%q} missing", res)
		}
	}
	for _, name := range []string{"superd_build_info", "superd_config_last_reload_successful", "superd_factory_starts_total", "superd_factory_stops_total", "go_goroutines", "process_open_fds"} {
		if fams[name] == nil {
			t.Errorf("family %s missing", name)
		}
	}

	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("unix socket file still there after shutdown: %v", err)
	}
}

func TestQOTDRoundRobin(t *testing.T) {
	addr, single := freeAddr(t), freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "qotd" "rr" {
  quotes = ["one", "two", "three"]
  endpoint "tcp" { address = %q }
}
service "qotd" "apple" {
  endpoint "tcp" { address = %q }
}
`, addr, single))
	d := startDaemon(t, path, maddr)
	read := func(addr string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, want := range []string{"one\r\n", "two\r\n", "three\r\n", "one\r\n"} {
		if got := read(addr); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if got := read(single); got != "An apple a day keeps the doctor away\r\n" {
		t.Fatalf("default quote: got %q", got)
	}
	d.waitMetric("superd_connections_total", map[string]string{"service": "rr", "endpoint": "tcp:" + addr}, 4)
	d.waitMetric("superd_connections_active", map[string]string{"service": "rr"}, 0)
	d.signal(syscall.SIGINT)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// expectClosedAtAccept checks that a connection to addr is closed by the
// server without any data.
func expectClosedAtAccept(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("expected the server to close the connection, read %d, %v", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("connection was not closed by the server")
	}
}

func TestLimitsAndAllowDeny(t *testing.T) {
	limited, denied, allowed := freeAddr(t), freeAddr(t), freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "limited" {
  max_connections = 2
  endpoint "tcp" { address = %q }
}
service "echo" "denied" {
  deny = ["127.0.0.0/8"]
  endpoint "tcp" { address = %q }
}
service "echo" "allowed" {
  allow = ["127.0.0.1/32"]
  deny  = ["10.0.0.0/8"]
  max_connections_per_ip = 1
  endpoint "tcp" { address = %q }
}
`, limited, denied, allowed))
	d := startDaemon(t, path, maddr)

	var open []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", limited)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoRoundTrip(t, c, []byte("hello"))
		open = append(open, c)
	}
	expectClosedAtAccept(t, limited)
	d.waitMetric("superd_connections_rejected_total", map[string]string{"service": "limited", "reason": "max_connections"}, 1)
	// The two open connections carry on.
	echoRoundTrip(t, open[0], []byte("still here"))
	open[0].Close()
	d.waitMetric("superd_connections_active", map[string]string{"service": "limited"}, 1)
	c, err := net.Dial("tcp", limited)
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, c, []byte("a slot freed"))
	c.Close()

	expectClosedAtAccept(t, denied)
	d.waitMetric("superd_connections_rejected_total", map[string]string{"service": "denied", "reason": "denied"}, 1)

	a, err := net.Dial("tcp", allowed)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	echoRoundTrip(t, a, []byte("allowed"))
	expectClosedAtAccept(t, allowed)
	d.waitMetric("superd_connections_rejected_total", map[string]string{"service": "allowed", "reason": "max_connections_per_ip"}, 1)
	d.waitMetric("superd_connections_total", map[string]string{"service": "denied"}, 0)
}

func TestGracefulShutdownFlushesAndExitsZero(t *testing.T) {
	addr, qaddr := freeAddr(t), freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "20s"
service "echo" "e" {
  endpoint "tcp" { address = %q }
}
service "qotd" "q" {
  endpoint "tcp" { address = %q }
}
`, addr, qaddr))
	d := startDaemon(t, path, maddr)

	// A client that sent a lot and has not read any of the reply: superd
	// holds unsent output for it when the signal arrives.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := randomBytes(t, 1<<20)
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	sent, _ := c.Write(payload) // stalls once the server stops reading
	if sent == 0 {
		t.Fatal("wrote nothing")
	}
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	d.waitMetric("superd_connections_active", map[string]string{"service": "e"}, 2)

	d.signal(syscall.SIGTERM)
	// Readiness goes first.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + maddr + "/readyz")
		if err != nil || resp.StatusCode == http.StatusServiceUnavailable {
			if resp != nil {
				resp.Body.Close()
			}
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("/readyz never turned 503")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The idle connection is closed cleanly.
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("idle connection: read %d, %v; want EOF", n, err)
	}
	// Everything the server read from the busy client comes back before EOF.
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	got, err := io.ReadAll(bufio.NewReader(c))
	if err != nil {
		t.Fatalf("reading the flushed echo: %v (got %d bytes)", err, len(got))
	}
	if len(got) == 0 || !bytes.Equal(got, payload[:len(got)]) {
		t.Fatalf("flushed echo is not a prefix of what was sent (%d bytes)", len(got))
	}
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d\n%s", code, d.stderr.String())
	}
	// No new connections after shutdown.
	if c, err := net.DialTimeout("tcp", qaddr, time.Second); err == nil {
		c.Close()
		t.Fatal("qotd still accepting after exit")
	}
}

func TestExitCodes(t *testing.T) {
	run := func(args ...string) (int, string, string) {
		cmd := exec.Command(superdBin, args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), out.String(), errb.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, out.String(), errb.String()
	}
	if code, _, errs := run(); code != 2 || !strings.Contains(errs, "usage") {
		t.Errorf("no args: %d %q", code, errs)
	}
	if code, _, _ := run("frobnicate"); code != 2 {
		t.Errorf("unknown command: %d", code)
	}
	if code, _, _ := run("run", "-bogus"); code != 2 {
		t.Errorf("unknown flag: %d", code)
	}
	if code, out, _ := run("version"); code != 0 || !strings.HasPrefix(out, "superd ") {
		t.Errorf("version: %d %q", code, out)
	}
	for _, cmd := range []string{"version", "factories"} {
		if code, _, errs := run(cmd, "extra"); code != 2 || !strings.Contains(errs, "unexpected argument") {
			t.Errorf("%s extra: %d %q, want 2 and unexpected argument", cmd, code, errs)
		}
	}
	// -h asks for help on every command: the usage, exit 0 (status said
	// "Usage of status:" with status 2, factories and version took it
	// for an unexpected argument).
	for _, cmd := range []string{"run", "validate", "status", "factories", "version"} {
		if code, _, errs := run(cmd, "-h"); code != 0 || !strings.HasPrefix(errs, "usage:\n") {
			t.Errorf("%s -h: %d %q, want 0 and the usage", cmd, code, errs)
		}
	}
	if code, _, errs := run("status", "-bogus"); code != 2 || !strings.Contains(errs, "usage:\n") {
		t.Errorf("status -bogus: %d %q, want 2 and the usage", code, errs)
	}
	for _, cmd := range []string{"run", "validate"} {
		if code, _, errs := run(cmd, "-config", ""); code != 2 || !strings.Contains(errs, "-config names no file") {
			t.Errorf("%s -config '': %d %q, want 2 and that it names no file", cmd, code, errs)
		}
	}
	if code, out, _ := run("factories"); code != 0 || !strings.Contains(out, "quote") || !strings.Contains(out, "max_connections") ||
		!strings.Contains(out, "layout") || !strings.Contains(out, `default "Monday, January 2, 2006 15:04:05-MST"`) ||
		// A duration and a path are named so, not as the strings HCL holds.
		!regexp.MustCompile(`\n +idle_timeout +duration `).MatchString(out) ||
		!regexp.MustCompile(`\n +name_ttl +duration +default "30s"`).MatchString(out) ||
		!regexp.MustCompile(`\n +dir +path +default "/"`).MatchString(out) {
		t.Errorf("factories: %d %q", code, out)
	} else {
		for _, f := range []string{"echo", "qotd", "chat", "logfile", "exec", "discard", "daytime", "time", "chargen"} {
			if !strings.Contains(out, "\n"+f+"\n") && !strings.HasPrefix(out, f+"\n") {
				t.Errorf("factories does not list %s:\n%s", f, out)
			}
		}
	}

	bad, _ := writeConfig(t, `service "ecko" "e" {
  endpoint "tcp" { address = "127.0.0.1:1" }
}
`)
	code, _, errs := run("validate", "-config", bad)
	if code != 1 || !strings.Contains(errs, "superd.hcl:1,") || !strings.Contains(errs, `Did you mean "echo"?`) {
		t.Errorf("validate bad: %d %q", code, errs)
	}
	if code, _, errs := run("run", "-config", bad); code != 1 || !strings.Contains(errs, "superd.hcl:1,") {
		t.Errorf("run bad config: %d %q", code, errs)
	}

	// A port already taken: exit 1 naming the service and endpoint.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy, _ := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "clash" {
  endpoint "tcp" { address = %q }
}
`, ln.Addr().String()))
	code, _, errs = run("run", "-config", busy)
	if code != 1 || !strings.Contains(errs, `clash`) || !strings.Contains(errs, "tcp:"+ln.Addr().String()) {
		t.Errorf("run with a busy port: %d %q", code, errs)
	}

	good, _ := writeConfig(t, `service "echo" "e" {
  endpoint "tcp" { address = "127.0.0.1:7" }
}
`)
	if code, out, _ := run("validate", "-config", good); code != 0 || !strings.Contains(out, "valid") {
		t.Errorf("validate good: %d %q", code, out)
	}
}
