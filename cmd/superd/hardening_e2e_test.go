package main

// End-to-end hardening tests against the real binary: reload (SIGHUP) with
// an invalid and a valid file, accept-loop resilience when descriptors run
// out (EMFILE), TLS handshake failures and client certificates, idle
// (slowloris) clients, and rate limits at accept.

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// ---------------------------------------------------------------------------
// 1. Reload

const reloadBase = `
metrics { address = "METRICS" }
shutdown_timeout = "5s"
service "echo" "changed" {
  max_connections = 100
  endpoint "tcp" { address = %q }
}
service "echo" "kept" {
  endpoint "tcp" { address = %q }
}
service "qotd" "gone" {
  quote = "going"
  endpoint "tcp" { address = %q }
}
`

// TestReloadMetricsAddressKept: the metrics address is read at start only;
// a reload whose file moves it succeeds, keeps the running listener and
// says so in the log (it was silently ignored, so a user found /metrics
// and superd status where they had been, not where the file said).
func TestReloadMetricsAddressKept(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	moved := freeAddr(t)
	rewriteConfig(t, path, maddr, fmt.Sprintf(`
metrics { address = %q }
service "echo" "e" {
  endpoint "tcp" { address = %q }
}
`, moved, addr))
	d.reload("success", 1) // scraped at the address superd started with
	want := fmt.Sprintf("the metrics address is read at start only: the running one is kept until superd restarts\" running=%s file=%s", maddr, moved)
	if !d.logged(want) {
		t.Fatalf("no warning about the metrics address in the log:\n%s", lastBytes(d.stderr.String(), 8<<10))
	}
	d.stop(20 * time.Second)
}

// TestReloadInvalidConfigKeepsServices: SIGHUP with an invalid file
// changes nothing, counts a failure and logs the diagnostic with its
// position.
func TestReloadInvalidConfigKeepsServices(t *testing.T) {
	changed, kept, gone := freeAddr(t), freeAddr(t), freeAddr(t)
	text := fmt.Sprintf(reloadBase, changed, kept, gone)
	path, maddr := writeConfig(t, text)
	d := startDaemon(t, path, maddr)

	open, err := net.Dial("tcp", kept)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := echoPayloadOn(open, []byte("before"), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// The file turns invalid: an attribute echo does not know, and a bad
	// duration.
	bad := strings.Replace(text, "max_connections = 100", "max_connectionz = 100", 1)
	bad = strings.Replace(bad, `shutdown_timeout = "5s"`, `shutdown_timeout = "5 parsecs"`, 1)
	rewriteConfig(t, path, maddr, bad)
	badLine := lineAt(t, bad, "max_connectionz")
	d.reload("failure", 1)
	fams := d.scrape()
	if v, _ := metric(fams, "superd_config_last_reload_successful", nil); v != 0 {
		t.Errorf("config_last_reload_successful = %v, want 0", v)
	}
	if v, _ := metric(fams, "superd_config_reloads_total", map[string]string{"result": "success"}); v != 0 {
		t.Errorf("reloads_total{success} = %v, want 0", v)
	}
	// Each diagnostic is logged with its position.
	pos := fmt.Sprintf("superd.hcl:%d,", badLine)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.stderr.String(), pos) || !strings.Contains(d.stderr.String(), "max_connectionz") {
		if time.Now().After(deadline) {
			t.Fatalf("stderr does not hold the diagnostic at %s:\n%s", pos, d.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	durLine := fmt.Sprintf("superd.hcl:%d,", lineAt(t, bad, "parsecs"))
	if !d.logged(durLine) {
		t.Errorf("stderr does not hold the duration diagnostic at %s", durLine)
	}

	// Everything still runs, untouched.
	if err := echoPayloadOn(open, []byte("after a failed reload"), 10*time.Second); err != nil {
		t.Fatalf("open connection after the failed reload: %v", err)
	}
	for _, a := range []string{changed, kept} {
		if err := echoPayload("tcp", a, []byte("new connection"), 10*time.Second); err != nil {
			t.Fatalf("echo on %s after the failed reload: %v", a, err)
		}
	}
	c, err := net.Dial("tcp", gone)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "going\r\n" {
		t.Fatalf("qotd after the failed reload: %q, %v", b, err)
	}
	c.Close()
	fams = d.scrape()
	for _, svc := range []string{"changed", "kept", "gone"} {
		if v, _ := metric(fams, "superd_factory_starts_total", map[string]string{"service": svc}); v != 1 {
			t.Errorf("factory_starts_total{service=%q} = %v, want 1 (nothing restarted)", svc, v)
		}
	}

	// A later valid reload succeeds and the gauge recovers.
	rewriteConfig(t, path, maddr, text)
	d.reload("success", 1)
	if v, _ := metric(d.scrape(), "superd_config_last_reload_successful", nil); v != 1 {
		t.Errorf("config_last_reload_successful = %v after a good reload, want 1", v)
	}
	d.stop(20 * time.Second)
}

// TestReloadChangeRemoveAddKeep: a valid reload changes one service,
// removes one, adds one and keeps one; a client connecting in a tight loop
// to the changed service is never refused.
func TestReloadChangeRemoveAddKeep(t *testing.T) {
	changed, kept, gone, added := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(reloadBase, changed, kept, gone))
	d := startDaemon(t, path, maddr)

	open, err := net.Dial("tcp", kept)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := echoPayloadOn(open, []byte("before"), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// The tight loop on the changed service's address.
	var (
		iterations, refused, early atomic.Int64
		mu                         sync.Mutex
		loopErrs                   []error
	)
	stop := make(chan struct{})
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			err := echoPayload("tcp", changed, []byte("ping "+strconv.Itoa(i)), 10*time.Second)
			switch {
			case err == nil:
			case isRefused(err):
				refused.Add(1)
			case errors.Is(err, errEarlyClose):
				early.Add(1)
			default:
				mu.Lock()
				if len(loopErrs) < 10 {
					loopErrs = append(loopErrs, err)
				}
				mu.Unlock()
			}
			iterations.Add(1)
		}
	}()
	waitIterations := func(n int64) {
		t.Helper()
		target := iterations.Load() + n
		deadline := time.Now().Add(20 * time.Second)
		for iterations.Load() < target {
			if time.Now().After(deadline) {
				t.Fatalf("tight loop stalled at %d iterations", iterations.Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitIterations(50)

	rewriteConfig(t, path, maddr, fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "5s"
service "echo" "changed" {
  max_connections = 200
  endpoint "tcp" { address = %q }
}
service "echo" "kept" {
  endpoint "tcp" { address = %q }
}
service "qotd" "added" {
  quote = "fresh"
  endpoint "tcp" { address = %q }
}
`, changed, kept, added))
	d.reload("success", 1)
	waitIterations(200)
	close(stop)
	<-loopDone
	t.Logf("tight loop: %d connections, %d refused, %d closed early by the drain of the old instance",
		iterations.Load(), refused.Load(), early.Load())
	if n := refused.Load(); n != 0 {
		t.Errorf("%d connections to the changed service were refused during the reload", n)
	}
	for _, err := range loopErrs {
		t.Errorf("tight loop: %v", err)
	}

	fams := d.scrape()
	if v, _ := metric(fams, "superd_config_last_reload_successful", nil); v != 1 {
		t.Errorf("config_last_reload_successful = %v, want 1", v)
	}
	if v, _ := metric(fams, "superd_config_reloads_total", map[string]string{"result": "failure"}); v != 0 {
		t.Errorf("reloads_total{failure} = %v, want 0", v)
	}
	// The kept service was not touched: its open connection works and its
	// factory was started once.
	if err := echoPayloadOn(open, []byte("after the reload"), 10*time.Second); err != nil {
		t.Fatalf("kept service's open connection: %v", err)
	}
	if v, _ := metric(fams, "superd_factory_starts_total", map[string]string{"service": "kept"}); v != 1 {
		t.Errorf("kept: factory_starts_total = %v, want 1", v)
	}
	// The changed service was replaced: started twice, the old one stopped.
	if v, _ := metric(fams, "superd_factory_starts_total", map[string]string{"service": "changed"}); v != 2 {
		t.Errorf("changed: factory_starts_total = %v, want 2", v)
	}
	d.waitMetricUntil("superd_factory_stops_total", map[string]string{"service": "changed"}, 10*time.Second, "1",
		func(v float64, ok bool) bool { return ok && v == 1 })
	d.waitMetricUntil("superd_factory_up", map[string]string{"service": "changed"}, 10*time.Second, "1",
		func(v float64, ok bool) bool { return ok && v == 1 })
	if err := echoPayload("tcp", changed, []byte("changed still serves"), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// The removed service's port refuses, and its series go.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", gone, 2*time.Second)
		if err != nil && isRefused(err) {
			break
		}
		if c != nil {
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("removed service's port still accepts (err %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for d.serviceSeries("gone") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("removed service still has %d series on /metrics", d.serviceSeries("gone"))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The new service serves, with its series.
	c, err := net.Dial("tcp", added)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "fresh\r\n" {
		t.Fatalf("added qotd: %q, %v", b, err)
	}
	c.Close()
	d.waitMetric("superd_connections_total", map[string]string{"service": "added", "endpoint": "tcp:" + added}, 1)
	if v, _ := metric(d.scrape(), "superd_factory_up", map[string]string{"service": "added"}); v != 1 {
		t.Errorf("added: factory_up = %v, want 1", v)
	}
	d.stop(20 * time.Second)
}

// TestReloadSwapLosesNoConnection: many clients connect in tight loops
// (tcp and unix) while the service is replaced again and again. Every
// connection is either served or, when the old instance got it just before
// the swap, closed cleanly by its drain (EOF after any echo it owed): none
// is refused, and none is reset.
func TestReloadSwapLosesNoConnection(t *testing.T) {
	const reloads = 20
	addr := freeAddr(t)
	sock := filepath.Join(t.TempDir(), "echo.sock")
	text := `
metrics { address = "METRICS" }
shutdown_timeout = "5s"
service "echo" "swapped" {
  max_connections = %d
  endpoint "tcp"  { address = %q }
  endpoint "unix" { path = %q }
}
`
	path, maddr := writeConfig(t, fmt.Sprintf(text, 1000, addr, sock))
	d := startDaemon(t, path, maddr)

	var (
		served, early, refused atomic.Int64
		mu                     sync.Mutex
		errs                   []error
		wg                     sync.WaitGroup
	)
	stop := make(chan struct{})
	for w := 0; w < 8; w++ {
		network, a := "tcp", addr
		if w%2 == 1 {
			network, a = "unix", sock
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := echoPayload(network, a, []byte(fmt.Sprintf("%s %d %d\n", network, w, i)), 10*time.Second)
				switch {
				case err == nil:
					served.Add(1)
				case errors.Is(err, errEarlyClose):
					early.Add(1)
				case isRefused(err):
					refused.Add(1)
				default:
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", network, err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := 1; i <= reloads; i++ {
		rewriteConfig(t, path, maddr, fmt.Sprintf(text, 1000+i, addr, sock))
		d.reload("success", float64(i))
	}
	close(stop)
	wg.Wait()
	t.Logf("%d reloads: %d served, %d closed cleanly by a drain, %d refused, %d lost (reset or other error)",
		reloads, served.Load(), early.Load(), refused.Load(), len(errs))
	if n := refused.Load(); n != 0 {
		t.Errorf("%d connections refused during the swaps", n)
	}
	for i, err := range errs {
		if i == 5 {
			t.Errorf("... and %d more", len(errs)-5)
			break
		}
		t.Errorf("connection lost during a swap: %v", err)
	}
	d.waitMetricUntil("superd_connections_active", map[string]string{"service": "swapped"}, 20*time.Second, "0",
		func(v float64, ok bool) bool { return ok && v == 0 })
	d.stop(20 * time.Second)
}

// TestReloadFactoryChangeKeepsSeries: a reload keeps a service's name but
// changes its factory (echo to chat) while the echo instance still has a
// connection. Once the old instance has drained and its series are deleted,
// the new one's series, superd_chat_users{service} included, are still
// there and still count.
func TestReloadFactoryChangeKeepsSeries(t *testing.T) {
	addr := freeAddr(t)
	text := `
metrics { address = "METRICS" }
shutdown_timeout = "5s"
service %q "x" {
  endpoint "tcp" { address = %q }
}
`
	path, maddr := writeConfig(t, fmt.Sprintf(text, "echo", addr))
	d := startDaemon(t, path, maddr)
	old, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := echoPayloadOn(old, []byte("echo"), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	rewriteConfig(t, path, maddr, fmt.Sprintf(text, "chat", addr))
	d.reload("success", 1)
	// A chat user joins while the echo instance drains.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if l, err := r.ReadString('\n'); err != nil || l != "What's your name?\r\n" {
		t.Fatalf("chat after the reload: %q, %v", l, err)
	}
	c.Write([]byte("alice\r\n"))
	if l, err := r.ReadString('\n'); err != nil || l != "Welcome, alice!\r\n" {
		t.Fatalf("chat welcome: %q, %v", l, err)
	}
	// The echo instance is gone for good: its series go.
	closedByServer(t, old, 10*time.Second)
	old.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, ok := metric(d.scrape(), "superd_factory_up", map[string]string{"service": "x", "factory": "echo"})
		if !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the echo instance's series are still there")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The chat instance's series are all there.
	fams := d.scrape()
	if v, ok := metric(fams, "superd_factory_up", map[string]string{"service": "x", "factory": "chat"}); !ok || v != 1 {
		t.Errorf("factory_up{x, chat} = %v (present %v), want 1", v, ok)
	}
	if v, ok := metric(fams, "superd_chat_users", map[string]string{"service": "x"}); !ok || v != 1 {
		t.Errorf("superd_chat_users{service=x} = %v (present %v) with alice online, want 1", v, ok)
	}
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 2. Accept-loop resilience under EMFILE

var delayRE = regexp.MustCompile(`msg="accept failed[^"]*".* delay=([0-9.]+[a-zµ]+)`)

// acceptFailures returns the delays of the "accept failed" lines logged so
// far, in order.
func acceptFailures(log string) []time.Duration {
	var out []time.Duration
	for _, l := range strings.Split(log, "\n") {
		if m := delayRE.FindStringSubmatch(l); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}

func TestAcceptEMFILEBackoff(t *testing.T) {
	const limit = 48
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "5s"
service "echo" "e" {
  endpoint "tcp" { address = %q }
}
`, addr))
	cmd := exec.Command("bash", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" run -config "$1"`, limit), superdBin, path)
	d := startCmd(t, cmd, maddr)
	if !strings.Contains(d.stderr.String(), fmt.Sprintf("limit=%d", limit)) {
		t.Logf("note: open-file limit line not found in the log")
	}
	if err := echoPayload("tcp", addr, []byte("hello"), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// More connections than superd has descriptors for, held open. The
	// kernel completes the handshakes (the listen backlog), so every dial
	// succeeds; superd accepts until EMFILE.
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := 0; i < 2*limit; i++ {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		clients = append(clients, c)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(acceptFailures(d.stderr.String())) == 0 {
		d.requireAlive()
		if time.Now().After(deadline) {
			t.Fatalf("no \"accept failed\" log line with %d connections held and a limit of %d", len(clients), limit)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A 2 s window: a handful of lines, little CPU, and the delay grows.
	pid := d.cmd.Process.Pid
	n0, cpu0 := len(acceptFailures(d.stderr.String())), cpuTicks(t, pid)
	select {
	case <-d.done:
		t.Fatalf("superd died under EMFILE: %v\n%s", d.err, lastBytes(d.stderr.String(), 16<<10))
	case <-time.After(2 * time.Second):
	}
	delays := acceptFailures(d.stderr.String())
	n1, cpu1 := len(delays), cpuTicks(t, pid)
	t.Logf("accept failures: %d before the window, %d in 2 s; CPU %d ticks in 2 s; delays %v",
		n0, n1-n0, cpu1-cpu0, delays)
	if n1-n0 > 50 {
		t.Errorf("%d \"accept failed\" lines in 2 s: the loop spins", n1-n0)
	}
	if cpu1-cpu0 > 100 { // clock ticks, 100 per second: half a CPU
		t.Errorf("superd used %d ticks of CPU in 2 s while out of descriptors", cpu1-cpu0)
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] < delays[i-1] {
			t.Errorf("accept delay shrank while still out of descriptors: %v", delays)
			break
		}
	}
	if len(delays) == 0 || delays[0] != 5*time.Millisecond || delays[len(delays)-1] < 320*time.Millisecond {
		t.Errorf("accept delays %v: want 5ms growing past 320ms", delays)
	}
	if max := delays[len(delays)-1]; max > time.Second {
		t.Errorf("accept delay %v above the 1s cap", max)
	}

	// Descriptors come back: superd serves again by itself.
	for _, c := range clients {
		c.Close()
	}
	clients = nil
	deadline = time.Now().Add(20 * time.Second)
	for {
		d.requireAlive()
		err := echoPayload("tcp", addr, []byte("served again"), 3*time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after the descriptors came back: %v", err)
		}
	}
	d.waitMetricUntil("superd_connections_active", map[string]string{"service": "e"}, 15*time.Second, "0",
		func(v float64, ok bool) bool { return ok && v == 0 })
	// And stays healthy: several more in a row.
	for i := 0; i < 10; i++ {
		if err := echoPayload("tcp", addr, []byte("again "+strconv.Itoa(i)), 5*time.Second); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	}
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 3. TLS

func TestTLSHandshakeRejections(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, err := ca.WriteServerFiles(dir, []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "tls" {
  idle_timeout = "500ms"
  endpoint "tls" {
    address   = %q
    cert_file = %q
    key_file  = %q
  }
}
`, addr, certFile, keyFile))
	d := startDaemon(t, path, maddr)
	rejected := map[string]string{"service": "tls", "reason": "tls_handshake"}

	// Garbage instead of a ClientHello.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02\xff\xfe")); err != nil {
		t.Fatal(err)
	}
	closedByServer(t, c, 10*time.Second)
	c.Close()
	d.waitMetric("superd_connections_rejected_total", rejected, 1)

	// Random bytes that start like a TLS record.
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, randomBytes(t, 512)...))
	closedByServer(t, c, 10*time.Second)
	c.Close()
	d.waitMetric("superd_connections_rejected_total", rejected, 2)

	// Silence: cut after the handshake timeout (idle_timeout bounds it).
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	closedByServer(t, c, 10*time.Second)
	el := time.Since(start)
	c.Close()
	if el < 400*time.Millisecond || el > 5*time.Second {
		t.Errorf("a silent client was cut after %v, want about 500ms", el)
	}
	d.waitMetric("superd_connections_rejected_total", rejected, 3)

	// A proper client is served.
	tc, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := echoPayloadOn(tc, []byte("over TLS"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	tc.Close()
	d.waitMetric("superd_connections_total", map[string]string{"service": "tls"}, 1)
	d.waitMetric("superd_connections_active", map[string]string{"service": "tls"}, 0)
	if v, _ := metric(d.scrape(), "superd_connections_rejected_total", rejected); v != 3 {
		t.Errorf("rejected{tls_handshake} = %v, want 3", v)
	}
	d.stop(20 * time.Second)
}

func TestTLSClientCertificates(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	other, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, err := ca.WriteServerFiles(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	good, err := ca.IssueClient("alice")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.IssueClient("mallory")
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "mtls" {
  endpoint "tls" {
    address        = %q
    cert_file      = %q
    key_file       = %q
    client_ca_file = %q
  }
}
`, addr, certFile, keyFile, caFile))
	d := startDaemon(t, path, maddr)
	rejected := map[string]string{"service": "mtls", "reason": "tls_handshake"}

	// try dials with conf and reports whether an echo came back.
	try := func(conf *tls.Config) error {
		conf.RootCAs, conf.ServerName = ca.Pool(), "127.0.0.1"
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, conf)
		if err != nil {
			return err // TLS 1.2: the server's refusal ends the handshake
		}
		defer c.Close()
		return echoPayloadOn(c, []byte("secret"), 10*time.Second) // TLS 1.3: it shows on the first read
	}
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		if err := try(&tls.Config{MaxVersion: v}); err == nil {
			t.Fatalf("%s: a client without a certificate was served", tls.VersionName(v))
		}
	}
	d.waitMetric("superd_connections_rejected_total", rejected, 2)
	if err := try(&tls.Config{Certificates: []tls.Certificate{stranger}}); err == nil {
		t.Fatal("a client with a certificate from another CA was served")
	}
	d.waitMetric("superd_connections_rejected_total", rejected, 3)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		if err := try(&tls.Config{Certificates: []tls.Certificate{good}, MaxVersion: v}); err != nil {
			t.Fatalf("%s: a client with a certificate signed by the CA: %v", tls.VersionName(v), err)
		}
	}
	d.waitMetric("superd_connections_total", map[string]string{"service": "mtls"}, 2)
	d.waitMetric("superd_connections_active", map[string]string{"service": "mtls"}, 0)
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 4. Slowloris

func TestSlowlorisIdleTimeout(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "slow" {
  # Far above the normal client's 100 ms between round trips, so a loaded
  # machine's scheduling delays cannot cut it; far below the slow one's 3 s.
  idle_timeout = "2s"
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)

	// The normal client: a round trip every 100 ms on one connection,
	// while the slow one trickles.
	normal, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer normal.Close()

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slowDone := make(chan error, 1)
	start := time.Now()
	go func() {
		// One byte every 3 s until the server cuts us off.
		tick := time.NewTicker(3 * time.Second)
		defer tick.Stop()
		readErr := make(chan error, 1)
		go func() {
			slow.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, err := io.Copy(io.Discard, slow)
			if err == nil {
				err = io.EOF
			}
			readErr <- err
		}()
		for {
			if _, err := slow.Write([]byte{'x'}); err != nil {
				slowDone <- <-readErr
				return
			}
			select {
			case err := <-readErr:
				slowDone <- err
				return
			case <-tick.C:
			}
		}
	}()

	rounds := 0
	var slowErr error
	gotSlow := false
	for i := 0; i < 30 || !gotSlow; i++ {
		if err := echoPayloadOn(normal, []byte("tick "+strconv.Itoa(i)+"\n"), 5*time.Second); err != nil {
			t.Fatalf("normal client, round %d: %v", i, err)
		}
		rounds++
		select {
		case slowErr = <-slowDone:
			gotSlow = true
			t.Logf("slow client cut after %v: %v", time.Since(start), slowErr)
		default:
		}
		if time.Since(start) > 15*time.Second {
			t.Fatal("the slow client was never cut off")
		}
		time.Sleep(100 * time.Millisecond) // pacing: one round trip every 100 ms
	}
	var ne net.Error
	if errors.As(slowErr, &ne) && ne.Timeout() {
		t.Fatalf("slow client: %v", slowErr)
	}
	d.waitMetric("superd_connections_dropped_total", map[string]string{"service": "slow", "reason": "idle_timeout"}, 1)
	if err := echoPayloadOn(normal, []byte("still here"), 5*time.Second); err != nil {
		t.Fatalf("normal client after the slow one was cut: %v", err)
	}
	normal.Close()
	d.waitMetric("superd_connections_active", map[string]string{"service": "slow"}, 0)
	if v, _ := metric(d.scrape(), "superd_connections_total", map[string]string{"service": "slow"}); v != 2 {
		t.Errorf("connections_total = %v, want 2", v)
	}
	t.Logf("normal client: %d round trips", rounds)
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 5. Rate limits

// servedFrom dials addr from local (nil: any), sends a byte and reports
// whether it came back (served) or the server closed the connection at
// accept (rejected). A refused dial fails the test.
func servedFrom(t *testing.T, local *net.TCPAddr, addr string) bool {
	t.Helper()
	dl := net.Dialer{Timeout: 10 * time.Second}
	if local != nil {
		dl.LocalAddr = local
	}
	c, err := dl.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v (a limit must never stop the listener)", addr, err)
	}
	defer c.Close()
	err = echoPayloadOn(c, []byte("?"), 10*time.Second)
	if err == nil {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("neither served nor closed: %v", err)
	}
	return false
}

func TestRateLimitAtAccept(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "rl" {
  rate_limit {
    rate  = 0.5
    burst = 2
  }
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	labels := map[string]string{"service": "rl", "reason": "rate_limit"}

	// The bucket starts full: burst connections pass, the next one is
	// closed at accept.
	for i := 0; i < 2; i++ {
		if !servedFrom(t, nil, addr) {
			t.Fatalf("connection %d of the burst was rejected", i)
		}
	}
	start := time.Now()
	if servedFrom(t, nil, addr) {
		t.Fatal("the connection after the burst was served")
	}
	d.waitMetric("superd_connections_rejected_total", labels, 1)

	// The listener keeps accepting (and closing) until a token is back,
	// then serves again: one token every 2 s.
	attempts := 0
	for !servedFrom(t, nil, addr) {
		attempts++
		if time.Since(start) > 15*time.Second {
			t.Fatal("never served again after the bucket refilled")
		}
		time.Sleep(100 * time.Millisecond) // pacing between attempts
	}
	el := time.Since(start)
	t.Logf("served again after %v (%d rejected attempts)", el, attempts)
	if el < time.Second {
		t.Errorf("served again after %v: the bucket refilled faster than 0.5/s", el)
	}
	v := d.waitMetricUntil("superd_connections_rejected_total", labels, 10*time.Second,
		fmt.Sprint(1+attempts), func(v float64, ok bool) bool { return ok && v == float64(1+attempts) })
	if total, _ := metric(d.scrape(), "superd_connections_total", map[string]string{"service": "rl"}); total != 3 {
		t.Errorf("connections_total = %v, want 3 (rejected: %v)", total, v)
	}
	d.stop(20 * time.Second)
}

func TestRateLimitPerIPAtAccept(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "rlip" {
  rate_limit_per_ip {
    rate  = 0.5
    burst = 2
  }
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	labels := map[string]string{"service": "rlip", "reason": "rate_limit_per_ip"}
	one := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	two := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}

	for i := 0; i < 2; i++ {
		if !servedFrom(t, one, addr) {
			t.Fatalf("connection %d of the burst was rejected", i)
		}
	}
	start := time.Now()
	if servedFrom(t, one, addr) {
		t.Fatal("the connection after the burst was served")
	}
	d.waitMetric("superd_connections_rejected_total", labels, 1)

	// Another source has its own bucket.
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err != nil {
		t.Logf("cannot use 127.0.0.2 (%v); skipping the second source", err)
	} else {
		ln.Close()
		for i := 0; i < 2; i++ {
			if !servedFrom(t, two, addr) {
				t.Fatalf("127.0.0.2: connection %d was rejected although its bucket is full", i)
			}
		}
	}

	attempts := 0
	for !servedFrom(t, one, addr) {
		attempts++
		if time.Since(start) > 15*time.Second {
			t.Fatal("never served again after the bucket refilled")
		}
		time.Sleep(100 * time.Millisecond) // pacing between attempts
	}
	el := time.Since(start)
	t.Logf("served again after %v (%d rejected attempts)", el, attempts)
	if el < time.Second {
		t.Errorf("served again after %v: the bucket refilled faster than 0.5/s", el)
	}
	d.waitMetricUntil("superd_connections_rejected_total", labels, 10*time.Second, ">= 1+attempts",
		atLeast(float64(1+attempts)))
	if v, _ := metric(d.scrape(), "superd_connections_rejected_total", map[string]string{"service": "rlip", "reason": "rate_limit"}); v != 0 {
		t.Errorf("rejected{rate_limit} = %v, want 0", v)
	}
	d.stop(20 * time.Second)
}
