package main

// End-to-end tests of the signals superd takes while a startup or a reload
// is stuck: a logfile service whose path is a FIFO nobody reads yet blocks
// in its StartFactory (open(2) waits for a reader). The main loop must
// keep serving signals meanwhile: a second SIGINT/SIGTERM exits at once
// (SPEC section 2), a first one shuts down once the reload has ended, and
// SIGHUPs and SIGUSR1s are coalesced into one more of each afterwards.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// newFIFO makes a named pipe in a fresh folder.
func newFIFO(t *testing.T) string {
	t.Helper()
	fifo := filepath.Join(t.TempDir(), "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	return fifo
}

// openFIFOReader opens fifo for reading without blocking, which lets the
// open(2) for writing superd is stuck in return. The reader stays open
// until the test ends (a logfile service writes to it).
func openFIFOReader(t *testing.T, fifo string) {
	t.Helper()
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
}

// unblockFIFOAtEnd lets whatever superd is stuck opening go on when the
// test ends, so nothing is left hanging whatever the test's outcome.
// (Cleanups run last-registered first: this one runs before startCmd's,
// which kills superd if it still runs.)
func unblockFIFOAtEnd(t *testing.T, fifo string) {
	t.Cleanup(func() {
		if r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			r.Close()
		}
	})
}

// stuckReload starts superd with an echo service, then reloads it with a
// logfile service writing to a FIFO nobody reads: the reload blocks in
// that service's StartFactory until the test opens the FIFO.
func stuckReload(t *testing.T) (d *daemon, fifo, metricsAddr string) {
	t.Helper()
	config := fmt.Sprintf(`metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "tcp" { address = %q }
}
`, freeAddr(t))
	path, metricsAddr := writeConfig(t, config)
	d = startDaemon(t, path, metricsAddr)
	return d, stickReload(t, d, path, config), metricsAddr
}

// stickReload reloads the superd d runs on path, whose file holds config,
// with config and a logfile service writing to a FIFO nobody reads: the
// reload blocks in that service's StartFactory until the test opens the
// returned FIFO.
func stickReload(t *testing.T, d *daemon, path, config string) (fifo string) {
	t.Helper()
	fifo = newFIFO(t)
	unblockFIFOAtEnd(t, fifo)
	rewriteConfig(t, path, d.metrics, config+fmt.Sprintf(`
service "logfile" "pipe" {
  path = %q
  endpoint "tcp" { address = %q }
}
`, fifo, freeAddr(t)))
	d.signal(syscall.SIGHUP)
	if !d.logged("reloading configuration") {
		t.Fatal("no reload began")
	}
	return fifo
}

// loggedTimes waits (up to 10 s) until text is in superd's stderr n
// times, and fails otherwise.
func (d *daemon) loggedTimes(text string, n int) {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(d.stderr.String(), text) < n {
		if time.Now().After(deadline) {
			d.t.Fatalf("%q logged %d times, want %d", text, strings.Count(d.stderr.String(), text), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A second SIGTERM while a reload is stuck exits at once, with status 1.
func TestSignalsDuringStuckReload(t *testing.T) {
	d, _, _ := stuckReload(t)
	d.signal(syscall.SIGTERM)
	if !d.logged("shutdown requested") {
		t.Fatal("the first SIGTERM was not taken during the reload")
	}
	d.signal(syscall.SIGTERM) // "a second one exits at once"
	if code := d.wait(5 * time.Second); code != exitFailure {
		t.Fatalf("exit status %d after a second SIGTERM, want %d", code, exitFailure)
	}
	if !d.logged("second signal: exiting without finishing the drain") {
		t.Fatal("the forced exit was not logged")
	}
}

// One SIGTERM while a reload is stuck: superd finishes the reload, then
// shuts down cleanly (status 0).
func TestSignalDuringStuckReloadShutsDownAfterIt(t *testing.T) {
	d, fifo, maddr := stuckReload(t)
	// /readyz answers meanwhile (the services serve), without waiting for
	// the reload (a probe would time out).
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + maddr + "/readyz")
	if err != nil {
		t.Fatalf("/readyz during a stuck reload: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz during a stuck reload: %d, want 200", resp.StatusCode)
	}
	// So does /status, with the configuration in force: generation 1,
	// the echo service running, the logfile service not yet.
	resp, err = client.Get("http://" + maddr + "/status")
	if err != nil {
		t.Fatalf("/status during a stuck reload: %v", err)
	}
	var st Status
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("/status during a stuck reload: %v", err)
	}
	if st.ConfigGeneration != 1 || len(st.Services) != 1 || st.Services[0].Name != "e" || st.Services[0].State != "running" {
		t.Errorf("/status during a stuck reload: generation %d, services %+v; want generation 1 and e running", st.ConfigGeneration, st.Services)
	}
	d.signal(syscall.SIGTERM)
	if !d.logged("shutdown requested") {
		t.Fatal("the SIGTERM was not taken during the reload")
	}
	d.requireAlive() // waiting for the reload, not exited
	openFIFOReader(t, fifo)
	if code := d.wait(20 * time.Second); code != exitOK {
		t.Fatalf("exit status %d, want 0", code)
	}
	// The reload was finished, not refused, and the shutdown came after it.
	out := d.stderr.String()
	reloaded, stopping := strings.Index(out, "configuration reloaded"), strings.Index(out, "shutting down")
	if reloaded < 0 || stopping < reloaded || !strings.Contains(out, "superd stopped") {
		t.Fatalf("want the reload finished, then the shutdown: reloaded at %d, shutting down at %d", reloaded, stopping)
	}
}

// SIGHUPs and SIGUSR1s taken while a reload is stuck are coalesced: once
// it has ended, one more reopen and one more reload, no more.
func TestSignalsCoalesceDuringStuckReload(t *testing.T) {
	d, fifo, _ := stuckReload(t)
	const deferred = "signal taken during a reload; handled once it ends"
	for i, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGHUP, syscall.SIGUSR1} {
		d.signal(sig)
		d.loggedTimes(deferred, i+1) // taken by superd before the next is sent
	}
	openFIFOReader(t, fifo)
	d.waitMetric("superd_config_reloads_total", map[string]string{"result": "success"}, 2)
	d.loggedTimes("configuration reloaded", 2)
	d.loggedTimes(`msg="reopened files" service=pipe`, 1)
	d.stop(20 * time.Second)
	if n := strings.Count(d.stderr.String(), "reloading configuration"); n != 2 {
		t.Errorf("%d reloads, want 2 (the stuck one and one for the SIGHUPs during it)", n)
	}
	if n := strings.Count(d.stderr.String(), `msg="reopened files" service=pipe`); n != 1 {
		t.Errorf("%d reopens, want 1 for the two SIGUSR1s", n)
	}
}

// startStuck starts superd on a configuration whose startup blocks (a
// logfile service on a FIFO nobody reads), and returns once its metrics
// listener is up: startup is under way, and stuck.
func startStuck(t *testing.T) (d *daemon, fifo string) {
	t.Helper()
	fifo = newFIFO(t)
	path, metricsAddr := writeConfig(t, fmt.Sprintf(`metrics { address = "METRICS" }
service "logfile" "pipe" {
  path = %q
  endpoint "tcp" { address = %q }
}
`, fifo, freeAddr(t)))
	d = startStarting(t, path, metricsAddr)
	unblockFIFOAtEnd(t, fifo)
	if !d.logged("metrics listening") {
		t.Fatal("superd did not start its metrics listener")
	}
	return d, fifo
}

// startStarting starts superd (debug log) on path without waiting for it
// to be ready, for a startup that may not end; it is killed at cleanup if
// it still runs, and its log shown if the test failed.
func startStarting(t *testing.T, path, metricsAddr string) *daemon {
	t.Helper()
	cmd := exec.Command(superdBin, "run", "-config", path, "-log-level", "debug")
	d := &daemon{t: t, cmd: cmd, metrics: metricsAddr, stderr: &testkit.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = d.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("superd stderr (last 64 KiB):\n%s", lastBytes(d.stderr.String(), 64<<10))
		}
	})
	return d
}

// The same during a stuck startup: a second SIGTERM exits at once
// (status 1); a single one lets the startup end, then shuts down (0).
func TestSignalsDuringStuckStartup(t *testing.T) {
	t.Run("second", func(t *testing.T) {
		d, _ := startStuck(t)
		d.signal(syscall.SIGTERM)
		if !d.logged("shutdown requested") {
			t.Fatal("the first SIGTERM was not taken during startup")
		}
		d.signal(syscall.SIGTERM)
		if code := d.wait(5 * time.Second); code != exitFailure {
			t.Fatalf("exit status %d after a second SIGTERM, want %d", code, exitFailure)
		}
	})
	t.Run("first", func(t *testing.T) {
		d, fifo := startStuck(t)
		d.signal(syscall.SIGTERM)
		if !d.logged("shutdown requested") {
			t.Fatal("the SIGTERM was not taken during startup")
		}
		d.requireAlive()
		openFIFOReader(t, fifo)
		if code := d.wait(20 * time.Second); code != exitOK {
			t.Fatalf("exit status %d, want 0", code)
		}
		if strings.Contains(d.stderr.String(), "cannot start") {
			t.Fatal("a shutdown during startup was logged as a failed start")
		}
	})
}

// A second SIGTERM during a shutdown's drain aborts what is still open and
// says so as a shutdown, not as the drain of a reload (there was none).
func TestSecondSignalDuringShutdownLogsShutdown(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`metrics { address = "METRICS" }
shutdown_timeout = "60s"
service "exec" "stubborn" {
  command = ["/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 60"]
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("program's greeting: %q, %v", line, err)
	}
	// The program ignores SIGTERM (stop_signal): the drain waits for it.
	d.signal(syscall.SIGTERM)
	if !d.logged("shutting down") {
		t.Fatal("no shutdown began")
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != exitFailure {
		t.Fatalf("exit status %d after a second SIGTERM, want %d", code, exitFailure)
	}
	if !d.logged("second signal: aborted open connections") {
		t.Errorf("the aborted connection was not logged as cut by the second signal:\n%s", d.stderr.String())
	}
	if strings.Contains(d.stderr.String(), "reload") {
		t.Errorf("a shutdown without any reload logs a reload:\n%s", d.stderr.String())
	}
}
