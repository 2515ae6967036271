package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// A real HAProxy in front of superd, with send-proxy (v1) and
// send-proxy-v2: superd sees each client's own address and port (its echo
// works, the access log's peer is the client and its proxy HAProxy, an
// exec program's TCPREMOTEPORT is the client's); a client that skips
// HAProxy, sending no header, is rejected as proxy_protocol.
func TestHAProxySendProxy(t *testing.T) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed (Debian package haproxy; make test-tools installs it)")
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	echoAddr, envAddr := freeAddr(t), freeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
access_log { path = %q }
service "echo" "e" {
  access_log = true
  endpoint "tcp" {
    address = %q
    proxy_protocol { trusted = ["127.0.0.1/32"] }
  }
}
service "exec" "env" {
  command = ["/bin/cat", "/proc/self/environ"]
  endpoint "tcp" {
    address = %q
    proxy_protocol { trusted = ["127.0.0.1/32"] }
  }
}
`, logPath, echoAddr, envAddr))
	d := startDaemon(t, path, metrics)

	v1, v2, envV2 := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen v1
  bind %s
  server s %s send-proxy
listen v2
  bind %s
  server s %s send-proxy-v2
listen envv2
  bind %s
  server s %s send-proxy-v2
`, v1, echoAddr, v2, echoAddr, envV2, envAddr)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	hp := exec.Command(haproxy, "-db", "-f", cfgPath)
	var hpOut testkit.Buffer
	hp.Stdout, hp.Stderr = &hpOut, &hpOut
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hp.Process.Kill()
		hp.Wait()
		if t.Failed() {
			t.Logf("haproxy:\n%s", hpOut.String())
		}
	})
	pollReady(t, func() error { return echoOnce("tcp", v1, "ready") })

	for i, front := range []string{v1, v2} {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		line := fmt.Sprintf("through haproxy %d", i)
		if err := echoOnceConn(c, line); err != nil {
			t.Fatal(err)
		}
		client := c.LocalAddr().String()
		c.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			found := false
			for _, l := range readAccessLog(t, logPath) {
				if l["peer"] == client {
					found = true
					if p, _ := l["proxy"].(string); p == "" || p == client {
						t.Errorf("proxy field %v for %s", l["proxy"], client)
					}
				}
			}
			if found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no access log line with the client %s as peer: %v", client, readAccessLog(t, logPath))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// exec behind send-proxy-v2: the program's environment names the client.
	c, err := net.Dial("tcp", envV2)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	env, _ := io.ReadAll(c)
	_, port, _ := net.SplitHostPort(c.LocalAddr().String())
	c.Close()
	if !strings.Contains(string(env), "\x00TCPREMOTEPORT="+port+"\x00") && !strings.HasPrefix(string(env), "TCPREMOTEPORT="+port+"\x00") {
		t.Errorf("exec's TCPREMOTEPORT is not the client's %s: %q", port, env)
	}

	// Straight to superd, no header: rejected.
	direct, err := net.Dial("tcp", echoAddr)
	if err != nil {
		t.Fatal(err)
	}
	direct.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(direct, "no header\n")
	if line, err := bufio.NewReader(direct).ReadString('\n'); err == nil {
		t.Errorf("a connection without a header was served: %q", line)
	}
	direct.Close()
	d.waitMetric("superd_connections_rejected_total", map[string]string{"service": "e", "reason": "proxy_protocol"}, 1)
	d.signal(syscall.SIGTERM)
	d.wait(15 * time.Second)
}
