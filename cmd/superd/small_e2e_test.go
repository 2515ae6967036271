package main

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
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
)

// TestSmallServices runs discard, daytime, time and chargen in superd, each
// on tcp, unix and tls, and talks to every endpoint as an RFC client would.
func TestSmallServices(t *testing.T) {
	dir := t.TempDir()
	type endpoints struct{ tcp, unix, tls string }
	eps := map[string]endpoints{}
	var conf strings.Builder
	conf.WriteString("metrics { address = \"METRICS\" }\n")
	for _, name := range []string{"discard", "daytime", "time", "chargen"} {
		e := endpoints{tcp: freeAddr(t), unix: filepath.Join(dir, name+".sock"), tls: freeAddr(t)}
		eps[name] = e
		extra := ""
		if name == "daytime" {
			extra = "  utc = true\n"
		}
		fmt.Fprintf(&conf, `service %q %q {
%s  endpoint "tcp"  { address = %q }
  endpoint "unix" { path = %q }
  endpoint "tls"  {
    address     = %q
    self_signed = true
  }
}
`, name, name, extra, e.tcp, e.unix, e.tls)
	}
	path, maddr := writeConfig(t, conf.String())
	d := startDaemon(t, path, maddr)

	dial := func(name, kind string) net.Conn {
		t.Helper()
		var c net.Conn
		var err error
		switch kind {
		case "tcp":
			c, err = net.Dial("tcp", eps[name].tcp)
		case "unix":
			c, err = net.Dial("unix", eps[name].unix)
		case "tls":
			c, err = tls.Dial("tcp", eps[name].tls, &tls.Config{InsecureSkipVerify: true}) // self-signed
		}
		if err != nil {
			t.Fatalf("%s over %s: %v", name, kind, err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		return c
	}
	for _, kind := range []string{"tcp", "unix", "tls"} {
		// discard: everything is taken, nothing comes back.
		c := dial("discard", kind)
		if _, err := c.Write(make([]byte, 1<<20)); err != nil {
			t.Fatalf("discard over %s: %v", kind, err)
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
			t.Fatalf("discard over %s: %d bytes back, %v", kind, len(got), err)
		}
		c.Close()

		// daytime: one line in UTC, now.
		c = dial("daytime", kind)
		got, err := io.ReadAll(c)
		c.Close()
		line, ok := strings.CutSuffix(string(got), "\r\n")
		if err != nil || !ok {
			t.Fatalf("daytime over %s: %q, %v", kind, got, err)
		}
		when, err := time.Parse("Monday, January 2, 2006 15:04:05-MST", line)
		if err != nil || time.Since(when).Abs() > 5*time.Second || !strings.HasSuffix(line, "-UTC") {
			t.Fatalf("daytime over %s: %q (%v) is not now in UTC", kind, line, err)
		}

		// time: 4 bytes, seconds since 1900, now.
		c = dial("time", kind)
		got, err = io.ReadAll(c)
		c.Close()
		if err != nil || len(got) != 4 {
			t.Fatalf("time over %s: %x, %v", kind, got, err)
		}
		if diff := int32(binary.BigEndian.Uint32(got) - uint32(time.Now().Unix()+2208988800)); diff < -5 || diff > 5 {
			t.Fatalf("time over %s: %d s from now", kind, diff)
		}

		// chargen: the exact pattern, line after line.
		c = dial("chargen", kind)
		r := bufio.NewReader(c)
		buf := make([]byte, 74)
		for i := range 3000 {
			if _, err := io.ReadFull(r, buf); err != nil {
				t.Fatalf("chargen over %s, line %d: %v", kind, i, err)
			}
			for j := range 72 {
				if buf[j] != byte(32+(i+j)%95) {
					t.Fatalf("chargen over %s, line %d: %q", kind, i, buf)
				}
			}
			if buf[72] != '\r' || buf[73] != '\n' {
				t.Fatalf("chargen over %s, line %d: %q", kind, i, buf)
			}
		}
		c.Close()
	}
	for _, name := range []string{"discard", "daytime", "time", "chargen"} {
		d.waitMetric("superd_connections_active", map[string]string{"service": name}, 0)
		if v, _ := metric(d.scrape(), "superd_connections_dropped_total", map[string]string{"service": name, "reason": "slow_consumer"}); v != 0 {
			t.Errorf("%s: %v connections dropped as slow consumers", name, v)
		}
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d\n%s", code, d.stderr.String())
	}
}

// TestExamplesValid: examples.hcl, what `make run` starts, is valid on a
// machine where nothing was prepared (its /tmp paths moved to an empty
// temporary folder); examples/sni.hcl is valid with the certificates `make
// run-sni` writes first.
func TestExamplesValid(t *testing.T) {
	_, path := writeExamples(t)
	out, err := exec.Command(superdBin, "validate", "-config", path).CombinedOutput()
	if err != nil {
		t.Errorf("superd validate examples.hcl: %v\n%s", err, out)
	}
	_, path = writeExample(t, sniExamplePath, true)
	out, err = exec.Command(superdBin, "validate", "-config", path).CombinedOutput()
	if err != nil {
		t.Errorf("superd validate examples/sni.hcl: %v\n%s", err, out)
	}
}

// TestSmallServicesOverUDP runs every built-in datagram service on udp in
// superd and talks to each as an RFC client would (rdate -pu for time,
// when installed); a reply that would reflect to a privileged port is not
// sent.
func TestSmallServicesOverUDP(t *testing.T) {
	names := []string{"echo", "qotd", "discard", "daytime", "time", "chargen"}
	addrs := map[string]string{}
	var conf strings.Builder
	conf.WriteString("metrics { address = \"METRICS\" }\n")
	for _, name := range names {
		addrs[name] = freeAddr(t)
		extra := ""
		switch name {
		case "qotd":
			extra = "  quotes = [\"one\", \"two\", \"three\"]\n"
		case "daytime":
			extra = "  utc = true\n"
		}
		fmt.Fprintf(&conf, "service %q %q {\n%s  endpoint \"udp\" { address = %q }\n}\n", name, name, extra, addrs[name])
	}
	path, maddr := writeConfig(t, conf.String())
	d := startDaemon(t, path, maddr)

	// ask sends each request to name's endpoint and returns the replies.
	ask := func(name string, reqs ...string) []string {
		t.Helper()
		c, err := net.Dial("udp", addrs[name])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 65536)
		var replies []string
		for _, req := range reqs {
			if _, err := c.Write([]byte(req)); err != nil {
				t.Fatal(err)
			}
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("%s: no reply to %q: %v", name, req, err)
			}
			replies = append(replies, string(buf[:n]))
		}
		return replies
	}
	reqs := []string{"", "hello", strings.Repeat("x", 1400)}
	if got := ask("echo", reqs...); fmt.Sprint(got) != fmt.Sprint(reqs) {
		t.Errorf("echo: %q", got)
	}
	if got := ask("qotd", "a", "b", "c", "d"); fmt.Sprint(got) != fmt.Sprint([]string{"one\r\n", "two\r\n", "three\r\n", "one\r\n"}) {
		t.Errorf("qotd: %q", got)
	}
	for _, line := range ask("daytime", "", "?") {
		when, err := time.Parse("Monday, January 2, 2006 15:04:05-MST\r\n", line)
		if err != nil || time.Since(when).Abs() > 5*time.Second {
			t.Errorf("daytime: %q (%v) is not now", line, err)
		}
	}
	for _, b := range ask("time", "", "?") {
		if diff := int32(binary.BigEndian.Uint32([]byte(b)) - uint32(time.Now().Unix()+2208988800)); len(b) != 4 || diff < -5 || diff > 5 {
			t.Errorf("time: %x, %d s from now", b, diff)
		}
	}
	for i, b := range ask("chargen", "", "?", "!") {
		var want strings.Builder
		for l := i; want.Len() < len(b); l++ {
			for j := range 72 {
				want.WriteByte(byte(32 + (l+j)%95))
			}
			want.WriteString("\r\n")
		}
		if len(b) > 512 || b != want.String()[:len(b)] {
			t.Errorf("chargen reply %d: %q", i, b)
		}
	}
	// discard answers nothing: its datagrams are counted in, none out.
	c, err := net.Dial("udp", addrs["discard"])
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range reqs {
		c.Write([]byte(req))
	}
	c.Close()
	d.waitMetric("superd_datagrams_received_total", map[string]string{"service": "discard"}, 3)
	if v, _ := metric(d.scrape(), "superd_datagrams_sent_total", map[string]string{"service": "discard"}); v != 0 {
		t.Errorf("discard sent %v datagrams", v)
	}

	if rdate, err := exec.LookPath("rdate"); err == nil {
		_, port, _ := net.SplitHostPort(addrs["time"])
		if out, err := exec.Command(rdate, "-pu", "-o", port, "127.0.0.1").CombinedOutput(); err != nil {
			t.Errorf("rdate -pu: %v\n%s", err, out)
		}
	}

	// A datagram from a privileged port (a small service of another
	// host, as far as echo can tell) gets no reply.
	if os.Geteuid() == 0 {
		to, _ := net.ResolveUDPAddr("udp", addrs["echo"])
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1019})
		if err != nil {
			t.Fatal(err)
		}
		pc.WriteToUDP([]byte("loop?"), to)
		pc.Close()
		d.waitMetric("superd_datagrams_dropped_total", map[string]string{"service": "echo", "reason": "reflection"}, 1)
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d\n%s", code, d.stderr.String())
	}
}
