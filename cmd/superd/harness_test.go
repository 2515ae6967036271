package main

// The harness of the end-to-end tests: TestMain builds the superd binary
// once; a test writes an HCL file (writeConfig), starts `superd run` on it
// (startDaemon, or startCmd for a command wrapped otherwise) and waits for
// /readyz, then talks to it, signals it, rewrites and reloads its file,
// scrapes its metrics and stops it. Every e2e test of this package starts
// the daemon this one way.

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/superd-dev/superd/internal/testkit"
)

// superdBin is the binary under test, built once by TestMain.
var superdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "superd-e2e")
	if err != nil {
		panic(err)
	}
	superdBin = filepath.Join(dir, "superd")
	build := exec.Command("go", "build", "-race", "-o", superdBin, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		// -race needs cgo; fall back to a plain build.
		build = exec.Command("go", "build", "-o", superdBin, ".")
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			panic(err)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a tcp port that was free a
// moment ago and was never handed out before (see testkit.FreeAddr).
func freeAddr(t *testing.T) string {
	t.Helper()
	return testkit.FreeAddr(t, "tcp")
}

// udpFreeAddr returns a loopback address with a udp port that was free a
// moment ago and was never handed out before (see testkit.FreeAddr).
func udpFreeAddr(t *testing.T) string {
	t.Helper()
	return testkit.FreeAddr(t, "udp")
}

// daemon is a running superd process.
type daemon struct {
	t       *testing.T
	cmd     *exec.Cmd
	metrics string // metrics address
	stderr  *testkit.Buffer
	done    chan struct{}
	err     error
}

// writeConfig writes an HCL file into a fresh folder; "METRICS" in text is
// replaced by a free metrics address.
func writeConfig(t *testing.T, text string) (path, metricsAddr string) {
	t.Helper()
	dir := t.TempDir()
	metricsAddr = freeAddr(t)
	text = strings.ReplaceAll(text, "METRICS", metricsAddr)
	path = filepath.Join(dir, "superd.hcl")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, metricsAddr
}

// startDaemon runs `superd run` on the config and waits until /readyz says
// ready.
func startDaemon(t *testing.T, path, metricsAddr string) *daemon {
	t.Helper()
	return startCmd(t, exec.Command(superdBin, "run", "-config", path, "-log-level", "debug"), metricsAddr)
}

// signal sends sig and, for a terminating signal, waits for the exit code.
func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
}

// wait waits for the process to exit and returns its exit code.
func (d *daemon) wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("superd did not exit within %v\n%s", timeout, d.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	if d.err != nil {
		d.t.Fatal(d.err)
	}
	return 0
}

// scrape fetches /metrics and parses it with Prometheus' own parser.
func (d *daemon) scrape() map[string]*dto.MetricFamily {
	d.t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		d.t.Fatal(err)
	}
	return fams
}

// metric returns the value of the series of family name whose labels
// include want; ok is false when there is none.
func metric(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// waitMetric polls until the series has the value, or fails.
func (d *daemon) waitMetric(name string, labels map[string]string, want float64) {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
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

// echoRoundTrip writes payload on c while reading it back, and checks it.
func echoRoundTrip(t *testing.T, c net.Conn, payload []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		errc <- err
	}()
	got := make([]byte, len(payload))
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("echo payload differs")
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// startCmd runs cmd (a `superd run` however it is wrapped) as a daemon and
// waits until /readyz says ready, like startDaemon.
func startCmd(t *testing.T, cmd *exec.Cmd, metricsAddr string) *daemon {
	t.Helper()
	d := &daemon{t: t, cmd: cmd, metrics: metricsAddr, stderr: &testkit.Buffer{}, done: make(chan struct{})}
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("superd stderr (last 64 KiB):\n%s", lastBytes(d.stderr.String(), 64<<10))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("superd exited during startup: %v\n%s", d.err, d.stderr.String())
		default:
		}
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("superd not ready after 20s\n%s", d.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastBytes returns the last n bytes of s, marked as cut when they are
// not all of it.
func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// logged reports whether superd's stderr has, or gets within 10 s, text:
// what superd logs passes through a pipe and a copying goroutine first.
func (d *daemon) logged(text string) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.stderr.String(), text) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// requireAlive fails the test if superd has exited.
func (d *daemon) requireAlive() {
	d.t.Helper()
	select {
	case <-d.done:
		d.t.Fatalf("superd exited: %v\n%s", d.err, lastBytes(d.stderr.String(), 64<<10))
	default:
	}
}

// stop sends SIGTERM and requires exit status 0.
func (d *daemon) stop(timeout time.Duration) {
	d.t.Helper()
	d.signal(syscall.SIGTERM)
	if code := d.wait(timeout); code != 0 {
		d.t.Fatalf("exit status %d after SIGTERM\n%s", code, lastBytes(d.stderr.String(), 64<<10))
	}
}

// rewriteConfig replaces the configuration file at path with text, "METRICS"
// standing for the daemon's metrics address as in writeConfig.
func rewriteConfig(t *testing.T, path, metricsAddr, text string) {
	t.Helper()
	text = strings.ReplaceAll(text, "METRICS", metricsAddr)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// waitMetricUntil polls until ok(value, present) holds for the series, for up
// to timeout.
func (d *daemon) waitMetricUntil(name string, labels map[string]string, timeout time.Duration,
	what string, ok func(v float64, present bool) bool) float64 {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d.requireAlive()
		v, present := metric(d.scrape(), name, labels)
		if ok(v, present) {
			return v
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s%v = %v (present %v), want %s", name, labels, v, present, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func atLeast(n float64) func(float64, bool) bool {
	return func(v float64, ok bool) bool { return ok && v >= n }
}

// reload sends SIGHUP and waits until superd_config_reloads_total{result}
// reaches n.
func (d *daemon) reload(result string, n float64) {
	d.t.Helper()
	d.signal(syscall.SIGHUP)
	d.waitMetricUntil("superd_config_reloads_total", map[string]string{"result": result}, 20*time.Second,
		fmt.Sprint(n), func(v float64, ok bool) bool { return ok && v == n })
}

// serviceSeries counts the series of superd's own families labelled
// service=name.
func (d *daemon) serviceSeries(name string) int {
	n := 0
	for fname, f := range d.scrape() {
		if !strings.HasPrefix(fname, "superd_") {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "service" && l.GetValue() == name {
					n++
				}
			}
		}
	}
	return n
}

// isRefused reports whether err is a refused connection: ECONNREFUSED, or
// a unix socket whose file is gone.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// errEarlyClose: the server closed the connection before the whole echo
// came back (what a drained, replaced service does).
var errEarlyClose = errors.New("closed by the server before the echo was complete")

// echoPayload dials, sends payload, reads it back and closes. A dial error
// is returned as is (see isRefused); a server close before the whole echo
// came back, with what came back a prefix of payload, is errEarlyClose.
func echoPayload(network, addr string, payload []byte, timeout time.Duration) error {
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoPayloadOn(c, payload, timeout)
}

// echoPayloadOn sends payload on c and reads it back, within timeout.
func echoPayloadOn(c net.Conn, payload []byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() { _, err := c.Write(payload); werr <- err }()
	got := make([]byte, len(payload))
	n, err := io.ReadFull(c, got)
	if !bytes.Equal(got[:n], payload[:n]) {
		return fmt.Errorf("echo differs from what was sent (%d bytes read)", n)
	}
	if err != nil {
		if (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && n < len(payload) {
			return errEarlyClose
		}
		if n == 0 && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
			// Drained before the payload arrived: it came after the drain
			// began, so it is not delivered, and a close that races with
			// its arrival resets instead of ending with EOF.
			return errEarlyClose
		}
		return fmt.Errorf("reading the echo (%d of %d bytes): %w", n, len(payload), err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	return nil
}

// closedByServer reads from c until the server ends the connection and
// returns the error it ended with (io.EOF or a reset); it fails if the
// server keeps it open for longer than timeout.
func closedByServer(t *testing.T, c net.Conn, timeout time.Duration) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server did not close the connection within %v", timeout)
	}
	return err
}

// cpuTicks returns the process's user+system CPU time in clock ticks.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	// Fields after the command name (which is in parentheses).
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return utime + stime
}

// runtimeStats returns go_goroutines and process_open_fds.
func (d *daemon) runtimeStats() (goroutines, fds float64) {
	d.t.Helper()
	fams := d.scrape()
	g, ok1 := metric(fams, "go_goroutines", nil)
	f, ok2 := metric(fams, "process_open_fds", nil)
	if !ok1 || !ok2 {
		d.t.Fatal("go_goroutines or process_open_fds missing from /metrics")
	}
	return g, f
}

// waitBaseline polls until goroutines and open files are back within
// margins of the baseline.
func (d *daemon) waitBaseline(baseG, baseF, marginG, marginF float64, timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d.requireAlive()
		g, f := d.runtimeStats()
		if g <= baseG+marginG && f <= baseF+marginF {
			d.t.Logf("runtime back to baseline: goroutines %v (baseline %v), open fds %v (baseline %v)", g, baseG, f, baseF)
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("not back to baseline after %v: goroutines %v (baseline %v + %v), open fds %v (baseline %v + %v)",
				timeout, g, baseG, marginG, f, baseF, marginF)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lineAt returns the 1-based line number of the first line of text holding
// marker.
func lineAt(t *testing.T, text, marker string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, marker) {
			return i + 1
		}
	}
	t.Fatalf("marker %q not in the configuration", marker)
	return 0
}
