package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func getStatus(t *testing.T, metrics string, conns bool) Status {
	t.Helper()
	url := "http://" + metrics + "/status"
	if conns {
		url += "?connections=1"
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// GET /status reports what the test did: the process, the configuration
// generation across reloads (a failed one leaves it and says why), each
// service with its endpoints, limits, totals and active count, the open
// connections, and a replaced service as draining while it drains.
func TestStatus(t *testing.T) {
	a, b, x := freeAddr(t), freeAddr(t), freeAddr(t)
	text := func(greeting string) string {
		return fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "3s"
service "echo" "a" {
  max_connections = 7
  endpoint "tcp" { address = %q }
  endpoint "udp" { address = %q }
}
service "qotd" "b" {
  quote = %q
  endpoint "tcp" { address = %q }
}
# A program that ignores SIGTERM keeps its instance draining after a
# reload, until shutdown_timeout.
service "exec" "x" {
  command         = ["/bin/sh", "-c", "trap '' TERM; echo up; sleep 10"]
  max_connections = 5
  endpoint "tcp" { address = %q }
}
`, a, a, greeting, b, x)
	}
	path, metrics := writeConfig(t, text("one"))
	d := startDaemon(t, path, metrics)
	start := time.Now()

	held, err := netDial(a)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := echoOnceConn(held, "hello"); err != nil {
		t.Fatal(err)
	}
	// The echo can reach the client a moment before superd counts the
	// bytes it wrote (the count follows the write's return): poll.
	s := getStatus(t, metrics, true)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); s = getStatus(t, metrics, true) {
		if len(s.Connections) == 1 && s.Connections[0].BytesOut == 6 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s.Cluster != nil {
		t.Errorf("cluster %+v in the status of a superd without a cluster block", s.Cluster)
	}
	abs, _ := filepath.Abs(path)
	if s.PID != d.cmd.Process.Pid || s.ConfigFile != abs || s.ConfigGeneration != 1 || s.LastReload != nil ||
		s.Version == "" || s.StartedAt.After(start) || time.Since(s.StartedAt) > time.Minute {
		t.Errorf("process fields: %+v", s)
	}
	if len(s.Services) != 3 || s.Services[0].Name != "a" || s.Services[1].Name != "b" || s.Services[2].Name != "x" {
		t.Fatalf("services %+v", s.Services)
	}
	sa := s.Services[0]
	if sa.Factory != "echo" || sa.State != "running" || sa.Active != 1 || sa.Totals.Accepted != 1 ||
		sa.Limits.MaxConnections != 7 || len(sa.Endpoints) != 2 || sa.Endpoints[0].Kind != "tcp" ||
		sa.Endpoints[0].Address != a || sa.Endpoints[0].Inherited || sa.Endpoints[1].Kind != "udp" {
		t.Errorf("service a: %+v", sa)
	}
	// A built-in service's udp endpoint has its default per-source limit,
	// which its connections do not have: the status says so.
	if r := sa.Limits.RateLimitPerIP; r == nil || r.Rate != 10 || r.Burst != 20 || !r.DatagramsOnly {
		t.Errorf("service a's rate_limit_per_ip: %+v, want the datagram default 10/20, datagrams only", r)
	}
	if len(s.Connections) != 1 {
		t.Fatalf("connections %+v", s.Connections)
	}
	c := s.Connections[0]
	if c.Service != "a" || c.Endpoint != "tcp:"+a || c.Peer != held.LocalAddr().String() || c.BytesIn != 6 || c.BytesOut != 6 {
		t.Errorf("connection %+v (client %s)", c, held.LocalAddr())
	}
	if s := getStatus(t, metrics, false); s.Connections != nil {
		t.Errorf("connections listed without ?connections=1")
	}

	// A reload that replaces x (its block changes) while its program
	// runs: the old instance drains, the new one runs.
	xc, err := netDial(x)
	if err != nil {
		t.Fatal(err)
	}
	defer xc.Close()
	if _, err := xc.Read(make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	rewriteConfig(t, path, metrics, strings.Replace(text("one"), "max_connections = 5", "max_connections = 6", 1))
	d.signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		s = getStatus(t, metrics, false)
		if s.ConfigGeneration == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("generation stays %d", s.ConfigGeneration)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s.LastReload == nil || s.LastReload.Result != "success" {
		t.Errorf("last_reload %+v", s.LastReload)
	}
	states := map[string]string{}
	for _, svc := range s.Services {
		states[svc.Name+fmt.Sprint(svc.Limits.MaxConnections)] = svc.State
	}
	if states["a7"] != "running" || states["x6"] != "running" || states["x5"] != "draining" || states["b0"] != "running" {
		t.Errorf("states after the reload: %v", states)
	}

	// A failed reload: the generation stays, the error is reported.
	rewriteConfig(t, path, metrics, "service {")
	d.signal(syscall.SIGHUP)
	deadline = time.Now().Add(10 * time.Second)
	for {
		s = getStatus(t, metrics, false)
		if s.LastReload != nil && s.LastReload.Result == "failure" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failed reload reported: %+v", s.LastReload)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s.ConfigGeneration != 2 || s.LastReload.Error == "" {
		t.Errorf("after a failed reload: generation %d, %+v", s.ConfigGeneration, s.LastReload)
	}

	// superd status prints the table; with no superd it exits 1.
	out, err := exec.Command(superdBin, "status", "-address", metrics, "-connections").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SERVICE") || !strings.Contains(string(out), "draining") ||
		!strings.Contains(string(out), "tcp:"+a) {
		t.Errorf("superd status: %v\n%s", err, out)
	}
	out, err = exec.Command(superdBin, "status", "-address", metrics, "-json").CombinedOutput()
	var js Status
	if err != nil || json.Unmarshal(out, &js) != nil || js.PID != d.cmd.Process.Pid {
		t.Errorf("superd status -json: %v\n%s", err, out)
	}
	cmd := exec.Command(superdBin, "status", "-address", freeAddr(t))
	if out, err := cmd.CombinedOutput(); err == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "does not answer") {
		t.Errorf("superd status without superd: %v\n%s", err, out)
	}
	held.Close()
	d.signal(syscall.SIGTERM)
	d.wait(15 * time.Second)
}

// While superd drains at shutdown /status still answers, listing the
// service that drains as draining.
func TestStatusDuringShutdown(t *testing.T) {
	d, _ := drainingStubborn(t)
	// The program ignores SIGTERM: the drain lasts until the second
	// signal below.
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + d.metrics + "/status")
	if err != nil {
		t.Errorf("/status during the shutdown's drain: %v", err)
	} else {
		var st Status
		err := json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || len(st.Services) != 1 || st.Services[0].Name != "stubborn" || st.Services[0].State != "draining" {
			t.Errorf("/status during the shutdown: %+v, %v; want stubborn draining", st.Services, err)
		}
	}
	d.signal(syscall.SIGTERM)
	d.wait(15 * time.Second)
}
