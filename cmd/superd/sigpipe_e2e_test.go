package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/superd-dev/superd/internal/testkit"
)

// superd's stderr is a pipe whose reader goes away (a logger that exited,
// `superd run 2>&1 | logger`): the access log on "stderr" then fails to
// write, and its lines are dropped and counted (superd_access_log_dropped_total),
// as any failed write's; superd serves on. Go's default for a write to
// fd 2 that fails with EPIPE is to kill the process with SIGPIPE. A
// program exec starts still has SIGPIPE at its default (not ignored).
func TestStderrReaderGoneDoesNotKill(t *testing.T) {
	echoAddr, sigAddr := freeAddr(t), freeAddr(t)
	path, metricsAddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "e" {
  access_log = true
  endpoint "tcp" { address = %q }
}
service "exec" "sig" {
  command = ["/bin/grep", "^SigIgn:", "/proc/self/status"]
  endpoint "tcp" { address = %q }
}
`, echoAddr, sigAddr))
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(superdBin, "run", "-config", path)
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	d := &daemon{t: t, cmd: cmd, metrics: metricsAddr, stderr: &testkit.Buffer{}, done: make(chan struct{})}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			cmd.Process.Kill()
			<-d.done
		}
	})
	copied := make(chan struct{})
	go func() {
		io.Copy(d.stderr, pr)
		close(copied)
	}()
	pollReady(t, func() error {
		d.requireAlive()
		return echoOnce("tcp", echoAddr, "ready")
	})
	d.waitMetric("superd_access_log_dropped_total", nil, 0)
	// The reader goes: superd's next write to its stderr fails.
	pr.Close()
	<-copied

	// A failure is superd's exit, if it exits.
	failed := func(what string, err error) {
		t.Helper()
		select {
		case <-d.done:
			t.Fatalf("superd exited once its stderr's reader had gone: %v", d.err)
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("%s: %v", what, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		if err := echoOnce("tcp", echoAddr, "line "+strconv.Itoa(i)); err != nil {
			failed("echo after its stderr's reader had gone", err)
		}
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			failed("metrics", err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		if err != nil {
			failed("metrics", err)
		}
		if v, _ := metric(fams, "superd_access_log_dropped_total", nil); v > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no access log line counted as dropped")
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.requireAlive()

	// exec's programs start with SIGPIPE not ignored.
	c, err := net.Dial("tcp", sigAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	out, _ := io.ReadAll(c)
	c.Close()
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("exec program's SigIgn line: %q", out)
	}
	mask, err := strconv.ParseUint(f[1], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	if mask&(1<<(uint(syscall.SIGPIPE)-1)) != 0 {
		t.Errorf("an exec program starts with SIGPIPE ignored: SigIgn %s", f[1])
	}

	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit status %d after SIGTERM", code)
	}
}
