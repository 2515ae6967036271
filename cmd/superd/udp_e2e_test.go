package main

// End-to-end tests of udp endpoints against the real binary: /metrics
// with udp services (echo, and exec in wait mode) that promtool accepts,
// and echo's default per-source limit of datagrams. exec in wait mode on
// udp itself is tested in exec_e2e_test.go.

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os/exec"
	"testing"
	"time"
)

// /metrics with a udp service configured passes `promtool check metrics`.
func TestMetricsWithUDPPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (make promcheck installs it)")
	}
	addr, echoAddr := udpFreeAddr(t), udpFreeAddr(t)
	path, metricsAddr := writeConfig(t, `metrics { address = "METRICS" }
service "exec" "answer" {
  command = ["`+execProg(t)+`", "udp", "1"]
  wait    = true
  endpoint "udp" { address = "`+addr+`" }
}
service "echo" "echo" {
  endpoint "tcp" { address = "`+freeAddr(t)+`" }
  endpoint "udp" { address = "`+echoAddr+`" }
}
`)
	d := startDaemon(t, path, metricsAddr)
	if v, _ := metric(d.scrape(), "superd_exec_processes", map[string]string{"service": "answer"}); v != 0 {
		t.Errorf("%v programs run before any datagram came", v)
	}
	for _, to := range []string{addr, echoAddr} {
		c, err := net.Dial("udp", to)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, err := c.Read(make([]byte, 2048)); err != nil {
			t.Fatalf("no answer from %s: %v", to, err)
		}
	}
	d.waitMetric("superd_datagrams_sent_total", map[string]string{"service": "echo", "endpoint": "udp:" + echoAddr}, 1)
	fams := d.scrape()
	for _, svc := range []string{"answer", "echo"} {
		for _, fam := range []string{"superd_datagrams_received_total", "superd_datagrams_sent_total"} {
			if _, ok := metric(fams, fam, map[string]string{"service": svc}); !ok {
				t.Errorf("%s has no series for service %s", fam, svc)
			}
		}
		if _, ok := metric(fams, "superd_datagrams_dropped_total", map[string]string{"service": svc, "reason": "reflection"}); !ok {
			t.Errorf("superd_datagrams_dropped_total has no series for service %s", svc)
		}
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	d.stop(15 * time.Second)
}

// echo with a tcp and a udp endpoint: the default per-source limit of its
// datagrams (burst 20) leaves its connections alone.
func TestEchoDatagramDefaultLimitSparesTCP(t *testing.T) {
	tcpAddr, udpAddr := freeAddr(t), udpFreeAddr(t)
	path, metricsAddr := writeConfig(t, `metrics { address = "METRICS" }
service "echo" "echo" {
  endpoint "tcp" { address = "`+tcpAddr+`" }
  endpoint "udp" { address = "`+udpAddr+`" }
}
`)
	d := startDaemon(t, path, metricsAddr)
	for i := range 40 {
		if err := echoPayload("tcp", tcpAddr, []byte("x"), 10*time.Second); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
	}
	if v, _ := metric(d.scrape(), "superd_connections_rejected_total", map[string]string{"service": "echo", "reason": "rate_limit_per_ip"}); v != 0 {
		t.Errorf("%v connections rejected as rate_limit_per_ip", v)
	}
	c, err := net.Dial("udp", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 25 {
		c.Write([]byte("d"))
	}
	d.waitMetric("superd_datagrams_dropped_total", map[string]string{"service": "echo", "reason": "rate_limit_per_ip"}, 5)
	d.stop(15 * time.Second)
}
