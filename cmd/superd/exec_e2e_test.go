package main

// End-to-end tests of the exec factory (SPEC section 9) against the real
// binary, with real programs: /bin/cat as echo over tcp, unix and TLS, a
// child that prints its environment, descriptor leaks, a child that never
// reads behind the TLS relay, children that ignore SIGTERM or fork, 1,000
// short-lived children, reload, wait mode with a program built from
// testdata/execprog, and the shim's umask, nice and rlimits. Helpers are
// prefixed ex.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// ---------------------------------------------------------------------------
// Helpers

var (
	execProgOnce sync.Once
	execProgPath string
	execProgErr  error
)

// execProg builds testdata/execprog once (next to the superd binary, which
// TestMain removes at the end) and returns its path.
func execProg(t *testing.T) string {
	t.Helper()
	execProgOnce.Do(func() {
		execProgPath = filepath.Join(filepath.Dir(superdBin), "execprog")
		out, err := exec.Command("go", "build", "-o", execProgPath, "./testdata/execprog").CombinedOutput()
		if err != nil {
			execProgErr = fmt.Errorf("building testdata/execprog: %v\n%s", err, out)
		}
	})
	if execProgErr != nil {
		t.Fatal(execProgErr)
	}
	return execProgPath
}

// exWaitFor polls cond until it holds, or fails after timeout.
func exWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exDial connects to addr ("unix" when it is a path).
func exDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exReadAll reads c to its end (EOF), within timeout.
func exReadAll(t *testing.T, c net.Conn, timeout time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading to EOF: %v (read %q)", err, b)
	}
	return string(b)
}

// exReadLine reads one line from r, within timeout (set on c).
func exReadLine(t *testing.T, c net.Conn, r *bufio.Reader, timeout time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading a line: %v (read %q)", err, line)
	}
	return strings.TrimRight(line, "\n")
}

// exProc is what /proc/PID/stat says of a process.
type exProc struct {
	pid, ppid int
	state     byte
}

// exStat reads /proc/PID/stat; ok is false when the process is gone.
func exStat(pid int) (exProc, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return exProc{}, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+4 > len(s) {
		return exProc{}, false
	}
	f := strings.Fields(s[i+2:])
	ppid, _ := strconv.Atoi(f[1])
	return exProc{pid: pid, ppid: ppid, state: f[0][0]}, true
}

// exStatField returns field n (1-based, as in proc(5)) of /proc/PID/stat.
func exStatField(t *testing.T, stat string, n int) string {
	t.Helper()
	i := strings.LastIndexByte(stat, ')')
	f := strings.Fields(stat[i+2:]) // field 3 onwards
	if n-3 >= len(f) {
		t.Fatalf("/proc stat has no field %d: %q", n, stat)
	}
	return f[n-3]
}

// exChildren lists the processes whose parent is ppid.
func exChildren(ppid int) []exProc {
	entries, _ := os.ReadDir("/proc")
	var out []exProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := exStat(pid); ok && p.ppid == ppid {
			out = append(out, p)
		}
	}
	return out
}

// exZombies lists the zombie children of ppid.
func exZombies(ppid int) []int {
	var z []int
	for _, p := range exChildren(ppid) {
		if p.state == 'Z' {
			z = append(z, p.pid)
		}
	}
	return z
}

// exDead reports whether pid has exited: gone, or a zombie waiting for a
// parent that is not superd (a grandchild reparented to init).
func exDead(pid, superdPID int) bool {
	p, ok := exStat(pid)
	return !ok || (p.state == 'Z' && p.ppid != superdPID)
}

// exRSS is the resident memory of pid in bytes (VmRSS).
func exRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS: %q", line)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// exMetric is the value of a series (0 when absent).
func exMetric(d *daemon, name string, labels map[string]string) float64 {
	d.t.Helper()
	v, _ := metric(d.scrape(), name, labels)
	return v
}

// exEnv splits the contents of /proc/PID/environ into a map.
func exEnv(t *testing.T, raw string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSuffix(raw, "\x00"), "\x00") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("environment entry without '=': %q", kv)
		}
		if _, dup := env[k]; dup {
			t.Errorf("variable %s twice in the environment", k)
		}
		env[k] = v
	}
	return env
}

// exSameEnv compares an environment with the one expected, variable by
// variable.
func exSameEnv(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		g, gok := got[k]
		w, wok := want[k]
		switch {
		case !wok:
			t.Errorf("%s: unexpected variable %s=%q", what, k, g)
		case !gok:
			t.Errorf("%s: variable %s missing (want %q)", what, k, w)
		case g != w:
			t.Errorf("%s: %s=%q, want %q", what, k, g, w)
		}
	}
}

// exLogLines returns the lines of superd's stderr holding every one of the
// substrings.
func exLogLines(d *daemon, subs ...string) []string {
	var out []string
next:
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// exLogAttr returns the value of key=value in a text log line.
func exLogAttr(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// exEchoHalfClose writes payload on c while reading concurrently, closes its
// writing side after the last byte, reads to EOF and compares the SHA-256
// of what came back.
func exEchoHalfClose(t *testing.T, c net.Conn, payload []byte) {
	t.Helper()
	werr := make(chan error, 1)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("reading the echo: %v after %d bytes", err, n)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	want := sha256.Sum256(payload)
	if n != int64(len(payload)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo of %d bytes came back as %d bytes with a different SHA-256", len(payload), n)
	}
}

// ---------------------------------------------------------------------------
// 1. /bin/cat as echo

func TestExecCatEcho(t *testing.T) {
	tcpAddr, tlsAddr := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "cat.sock")
	certFile, keyFile, err := testkit.WriteSelfSignedFiles(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "cat" {
  command = ["/bin/cat"]
  endpoint "tcp"  { address = %q }
  endpoint "unix" { path = %q }
  endpoint "tls"  {
    address   = %q
    cert_file = %q
    key_file  = %q
  }
}
`, tcpAddr, sock, tlsAddr, certFile, keyFile))
	d := startDaemon(t, path, maddr)
	svc := map[string]string{"service": "cat", "factory": "exec"}
	const size = 8 << 20
	payload := randomBytes(t, size)
	bytesNow := func() (in, out float64) {
		fams := d.scrape()
		in, _ = metric(fams, "superd_received_bytes_total", svc)
		out, _ = metric(fams, "superd_sent_bytes_total", svc)
		return in, out
	}

	// tcp: the socket itself; the counters come from TCP_INFO at close.
	exEchoHalfClose(t, exDial(t, tcpAddr), payload)
	d.waitMetric("superd_connections_active", svc, 0)
	in, out := bytesNow()
	// All of it, although cat may exit with megabytes unacknowledged, and
	// without the client's FIN.
	if in != size || out != size {
		t.Errorf("tcp: received %v, sent %v bytes; want %d each", in, out, size)
	}

	// unix: the socket itself; not counted.
	exEchoHalfClose(t, exDial(t, sock), payload)
	d.waitMetric("superd_connections_active", svc, 0)
	if in2, out2 := bytesNow(); in2 != in || out2 != out {
		t.Errorf("unix: byte counters moved from %v/%v to %v/%v; a unix socket handed over is not counted", in, out, in2, out2)
	}

	// tls: relayed, counted as it moves.
	tc, err := tls.Dial("tcp", tlsAddr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	exEchoHalfClose(t, tc, payload)
	d.waitMetric("superd_connections_active", svc, 0)
	if in3, out3 := bytesNow(); in3-in != size || out3-out != size {
		t.Errorf("tls: counters grew by %v received, %v sent; want %d each", in3-in, out3-out, size)
	}

	for _, ep := range []string{"tcp:" + tcpAddr, "unix:" + sock, "tls:" + tlsAddr} {
		d.waitMetric("superd_connections_total", map[string]string{"service": "cat", "endpoint": ep}, 1)
	}
	d.waitMetric("superd_exec_exits_total", map[string]string{"service": "cat", "result": "success"}, 3)
	d.waitMetric("superd_exec_processes", map[string]string{"service": "cat"}, 0)
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 2. The child's environment

func TestExecEnvironment(t *testing.T) {
	ca, err := testkit.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, err := ca.WriteServerFiles(dir, []string{"127.0.0.1", "superd.test"})
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := ca.IssueClient("alice")
	if err != nil {
		t.Fatal(err)
	}
	aliceLeaf, err := x509.ParseCertificate(alice.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	tcpAddr, tlsAddr, mtlsAddr, shimAddr, pathAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	sock := filepath.Join(dir, "env.sock")
	// The child prints the environment it was started with (what execve
	// got, whatever the shell adds later) and a marker, then waits for the
	// client to send a line, so connections can be held open.
	const cmd = `command = ["/bin/sh", "-c", "cat /proc/$$/environ; echo END; read x; exit 0"]`
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "env" {
  %[1]s
  env      = { LANG = "C", EMPTY = "" }
  pass_env = ["SUPERD_TEST_PASSED", "SUPERD_TEST_UNSET"]
  endpoint "tcp"  { address = %[2]q }
  endpoint "unix" { path = %[3]q }
  endpoint "tls"  {
    address   = %[4]q
    cert_file = %[6]q
    key_file  = %[7]q
  }
}
service "exec" "mtls" {
  %[1]s
  endpoint "tls" {
    address        = %[5]q
    cert_file      = %[6]q
    key_file       = %[7]q
    client_ca_file = %[8]q
    min_version    = "1.2"
  }
}
service "exec" "shim" {
  %[1]s
  umask = "0022"
  env   = { X = "1" }
  endpoint "tcp" { address = %[9]q }
}
service "exec" "path" {
  %[1]s
  env = { PATH = "/bin" }
  endpoint "tcp" { address = %[10]q }
}
`, cmd, tcpAddr, sock, tlsAddr, mtlsAddr, certFile, keyFile, caFile, shimAddr, pathAddr))
	superd := exec.Command(superdBin, "run", "-config", path, "-log-level", "debug")
	superd.Env = append(os.Environ(), "SUPERD_TEST_PASSED=passed value", "LANG=en_US.UTF-8")
	os.Unsetenv("SUPERD_TEST_UNSET")
	d := startCmd(t, superd, maddr)

	// get reads the child's environment on c and leaves the child waiting.
	get := func(c net.Conn) map[string]string {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var raw []byte
		buf := make([]byte, 4096)
		for !bytes.HasSuffix(raw, []byte("\x00END\n")) {
			n, err := c.Read(buf)
			raw = append(raw, buf[:n]...)
			if err != nil {
				t.Fatalf("reading the environment: %v (read %q)", err, raw)
			}
		}
		return exEnv(t, strings.TrimSuffix(string(raw), "END\n"))
	}
	base := map[string]string{
		"PATH":               "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG":               "C",
		"EMPTY":              "",
		"SUPERD_TEST_PASSED": "passed value",
		"SUPERD_SERVICE":     "env",
	}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tcpFacts := func(c net.Conn, n int) []string {
		la, ra := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
		return []string{
			"PROTO", "TCP",
			"TCPREMOTEIP", "127.0.0.1", "TCPREMOTEPORT", strconv.Itoa(la.Port),
			"TCPLOCALIP", "127.0.0.1", "TCPLOCALPORT", strconv.Itoa(ra.Port),
			"TCPCONNNUM", strconv.Itoa(n),
			"REMOTE_ADDR", "127.0.0.1", "REMOTE_PORT", strconv.Itoa(la.Port),
		}
	}

	// tcp, with TCPCONNNUM counting this source's open connections.
	c1 := exDial(t, tcpAddr)
	exSameEnv(t, "tcp", get(c1), with(base, tcpFacts(c1, 1)...))
	c2 := exDial(t, tcpAddr)
	exSameEnv(t, "tcp, second connection", get(c2), with(base, tcpFacts(c2, 2)...))
	c1.Close()
	c2.Close()
	// idle waits until the service's connections have ended, so the next
	// one is the only one from its source.
	idle := func(service string) {
		d.waitMetric("superd_connections_active", map[string]string{"service": service}, 0)
	}
	idle("env")

	// unix: the peer's credentials.
	u := exDial(t, sock)
	exSameEnv(t, "unix", get(u), with(base, "PROTO", "IPC",
		"IPCREMOTEEUID", strconv.Itoa(os.Geteuid()), "IPCREMOTEEGID", strconv.Itoa(os.Getegid()),
		"IPCREMOTEPID", strconv.Itoa(os.Getpid())))
	u.Close()
	idle("env")

	// tls without SNI (an IP address as the server name sends none), then
	// with SNI.
	for _, sni := range []string{"", "superd.test"} {
		conf := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
		if sni != "" {
			conf.ServerName = sni
		}
		tc, err := tls.Dial("tcp", tlsAddr, conf)
		if err != nil {
			t.Fatal(err)
		}
		st := tc.ConnectionState()
		want := with(base, tcpFacts(tc, 1)...)
		want = with(want, "SSL_PROTOCOL", "TLSv1.3", "SSL_CIPHER", tls.CipherSuiteName(st.CipherSuite))
		if sni != "" {
			want["SSL_TLS_SNI_SERVERNAME"] = sni
		}
		exSameEnv(t, "tls, SNI "+strconv.Quote(sni), get(tc), want)
		tc.Close()
		idle("env")
	}

	// tls 1.2 with a client certificate.
	tc, err := tls.Dial("tcp", mtlsAddr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{alice}, MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	st := tc.ConnectionState()
	want := with(map[string]string{"PATH": base["PATH"], "SUPERD_SERVICE": "mtls"}, tcpFacts(tc, 1)...)
	want = with(want, "SSL_PROTOCOL", "TLSv1.2", "SSL_CIPHER", tls.CipherSuiteName(st.CipherSuite),
		"SSL_PEER_CERT_SUBJECT", aliceLeaf.Subject.String())
	exSameEnv(t, "tls with a client certificate", get(tc), want)
	tc.Close()

	// Through the shim (umask): nothing more, nothing less.
	s := exDial(t, shimAddr)
	exSameEnv(t, "shim", get(s), with(map[string]string{"PATH": base["PATH"], "X": "1", "SUPERD_SERVICE": "shim"}, tcpFacts(s, 1)...))
	s.Close()

	// env may set PATH.
	p := exDial(t, pathAddr)
	exSameEnv(t, "PATH from env", get(p), with(map[string]string{"PATH": "/bin", "SUPERD_SERVICE": "path"}, tcpFacts(p, 1)...))
	p.Close()

	d.waitMetric("superd_exec_processes", map[string]string{"service": "env"}, 0)
	d.stop(20 * time.Second)
}

// TestExecEnvironmentIPv4Mapped: on a dual-stack "[::]:P" endpoint, a
// client from 127.0.0.1 is given as plain IPv4; one from ::1 as IPv6.
func TestExecEnvironmentIPv4Mapped(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	_, port, _ := net.SplitHostPort(freeAddr(t))
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "env" {
  command = ["/bin/cat", "/proc/self/environ"]
  endpoint "tcp" { address = "[::]:%s" }
}
`, port))
	d := startDaemon(t, path, maddr)
	for _, tt := range []struct{ dial, ip string }{{"127.0.0.1", "127.0.0.1"}, {"[::1]", "::1"}} {
		c := exDial(t, tt.dial+":"+port)
		env := exEnv(t, exReadAll(t, c, 10*time.Second))
		cport := strconv.Itoa(c.LocalAddr().(*net.TCPAddr).Port)
		exSameEnv(t, "from "+tt.dial, env, map[string]string{
			"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SUPERD_SERVICE": "env",
			"PROTO": "TCP", "TCPREMOTEIP": tt.ip, "TCPREMOTEPORT": cport, "TCPLOCALIP": tt.ip, "TCPLOCALPORT": port,
			"TCPCONNNUM": "1", "REMOTE_ADDR": tt.ip, "REMOTE_PORT": cport,
		})
	}
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 3. No descriptor of superd reaches a child

func TestExecNoDescriptorLeaks(t *testing.T) {
	prog := execProg(t)
	tcpAddr, tlsAddr, holdAddr, holdTLSAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	echoAddr, waitAddr, fdsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "fds.sock")
	// In wait mode the child lists its descriptors on stderr (logged), then
	// becomes execprog to take the waiting connection. A shell applying
	// ">&2" to a command keeps fd 1 open as fd 10 meanwhile, so an inner
	// shell lists the outer one's descriptors.
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "fds" {
  command = ["/bin/sh", "-c", "ls /proc/$$/fd"]
  endpoint "tcp"  { address = %q }
  endpoint "unix" { path = %q }
  endpoint "tls"  {
    address     = %q
    self_signed = true
  }
}
service "exec" "hold" {
  command = ["/bin/sh", "-c", "echo held; read x"]
  endpoint "tcp" { address = %q }
  endpoint "tls" {
    address     = %q
    self_signed = true
  }
}
service "echo" "echo" {
  endpoint "tcp" { address = %q }
}
service "exec" "wait" {
  wait    = true
  command = ["/bin/sh", "-c", "/bin/sh -c 'ls /proc/$PPID/fd >&2'; exec %s accept 1"]
  endpoint "tcp" { address = %q }
}
service "exec" "listenfds" {
  wait       = true
  listen_fds = true
  umask      = "0022"
  command    = ["/bin/sh", "-c", "/bin/sh -c 'ls /proc/$PPID/fd >&2'; exec %s listenfds 1"]
  endpoint "tcp" { address = %q }
}
`, tcpAddr, sock, tlsAddr, holdAddr, holdTLSAddr, echoAddr, prog, waitAddr, prog, fdsAddr))
	// superd inherits a descriptor without close-on-exec (fd 3), as from
	// a careless parent: it must not reach the children either.
	inherited, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer inherited.Close()
	superd := exec.Command(superdBin, "run", "-config", path, "-log-level", "debug")
	superd.ExtraFiles = []*os.File{inherited}
	d := startCmd(t, superd, maddr)

	// Hold other connections open: superd has their sockets while the
	// children start.
	e := exDial(t, echoAddr)
	if err := echoPayloadOn(e, []byte("open"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	h := exDial(t, holdAddr)
	if line := exReadLine(t, h, bufio.NewReader(h), 10*time.Second); line != "held" {
		t.Fatalf("hold: %q", line)
	}
	ht, err := tls.Dial("tcp", holdTLSAddr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ht.Close()
	if line := exReadLine(t, ht, bufio.NewReader(ht), 10*time.Second); line != "held" {
		t.Fatalf("hold over TLS: %q", line)
	}
	if _, fds := d.runtimeStats(); fds < 12 {
		t.Fatalf("superd has only %v descriptors open; the test means to hold more", fds)
	}

	want := "0\n1\n2\n"
	if got := exReadAll(t, exDial(t, tcpAddr), 10*time.Second); got != want {
		t.Errorf("tcp child's descriptors:\n%s\nwant 0 1 2", got)
	}
	if got := exReadAll(t, exDial(t, sock), 10*time.Second); got != want {
		t.Errorf("unix child's descriptors:\n%s\nwant 0 1 2", got)
	}
	tc, err := tls.Dial("tcp", tlsAddr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if got := exReadAll(t, tc, 10*time.Second); got != want {
		t.Errorf("tls child's descriptors:\n%s\nwant 0 1 2", got)
	}

	for _, tt := range []struct {
		service, addr string
		want          []string
	}{{"wait", waitAddr, []string{"0", "1", "2"}}, {"listenfds", fdsAddr, []string{"0", "1", "2", "3"}}} {
		c := exDial(t, tt.addr)
		line := exReadAll(t, c, 10*time.Second)
		pid := strings.TrimPrefix(strings.Fields(line + " x")[0], "pid=")
		if _, err := strconv.Atoi(pid); err != nil {
			t.Fatalf("%s: the child answered %q", tt.service, line)
		}
		var got []string
		exWaitFor(t, 10*time.Second, tt.service+"'s program exit", func() bool {
			return len(exLogLines(d, `msg="program exited"`, "service="+tt.service+" ", "pid="+pid+" ")) > 0
		})
		// The listing is written by ls, a grandchild: its lines carry its
		// own pid, not the child's. One connection per service: every
		// stderr line of the service is the listing.
		for _, l := range exLogLines(d, `msg="program stderr"`, "service="+tt.service+" ") {
			got = append(got, exLogAttr(l, "line"))
		}
		if strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("%s: the child's descriptors are %v, want %v", tt.service, got, tt.want)
		}
	}
	h.Close()
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 4. A child that never reads, behind the TLS relay

func TestExecTLSRelayChildNeverReads(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "10s"
service "exec" "deaf" {
  command = ["/bin/sh", "-c", "echo ready; exec sleep 1000"]
  endpoint "tls" {
    address     = %q
    self_signed = true
  }
}
`, addr))
	d := startDaemon(t, path, maddr)
	pid := d.cmd.Process.Pid
	svc := map[string]string{"service": "deaf", "factory": "exec"}
	before := exRSS(t, pid)

	tc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	r := bufio.NewReader(tc)
	if line := exReadLine(t, tc, r, 10*time.Second); line != "ready" {
		t.Fatalf("got %q", line)
	}
	// Write 64 MiB in 64 KiB pieces; the writes stall once the socket
	// pair, superd's relay buffer and the kernel's buffers are full.
	const total = 64 << 20
	chunk := randomBytes(t, 64<<10)
	var mu sync.Mutex
	written := 0
	werr := make(chan error, 1)
	tc.SetWriteDeadline(time.Now().Add(60 * time.Second))
	go func() {
		for n := 0; n < total; n += len(chunk) {
			if _, err := tc.Write(chunk); err != nil {
				werr <- err
				return
			}
			mu.Lock()
			written += len(chunk)
			mu.Unlock()
		}
		werr <- nil
	}()
	// Wait until the writer has been stuck for a while.
	last, since := -1, time.Now()
	exWaitFor(t, 30*time.Second, "the writer to stall", func() bool {
		mu.Lock()
		w := written
		mu.Unlock()
		if w != last {
			last, since = w, time.Now()
			return false
		}
		return time.Since(since) > 500*time.Millisecond
	})
	if last >= total {
		t.Fatalf("all %d bytes were taken although the child reads nothing", total)
	}
	recv := exMetric(d, "superd_received_bytes_total", svc)
	after := exRSS(t, pid)
	t.Logf("client wrote %d bytes before stalling; superd relayed %v; RSS %d -> %d KiB", last, recv, before>>10, after>>10)
	if recv > 16<<20 {
		t.Errorf("superd read %v bytes from a client whose child reads nothing", recv)
	}
	if after-before > 16<<20 {
		t.Errorf("superd's RSS grew by %d KiB (from %d KiB) while a child does not read", (after-before)>>10, before>>10)
	}
	// Closing: the client goes, then the drain ends the child with its stop
	// signal, and superd exits cleanly.
	tc.Close()
	select {
	case <-werr:
	case <-time.After(10 * time.Second):
		t.Fatal("the client's writer is still blocked after closing")
	}
	d.stop(20 * time.Second)
	if v := len(exLogLines(d, `msg="program exited"`, "signal=SIGTERM")); v != 1 {
		t.Errorf("%d exits by SIGTERM logged, want 1", v)
	}
}

// ---------------------------------------------------------------------------
// 5. Children that ignore SIGTERM, and grandchildren

// exPIDs reads a line of pids ("P Q") written by a child.
func exPIDs(t *testing.T, c net.Conn) []int {
	t.Helper()
	line := exReadLine(t, c, bufio.NewReader(c), 10*time.Second)
	var pids []int
	for _, f := range strings.Fields(line) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("the child wrote %q, not pids", line)
		}
		pids = append(pids, n)
	}
	return pids
}

func TestExecStopSignalAndKill(t *testing.T) {
	stubborn, forking := freeAddr(t), freeAddr(t)
	// stubborn ignores SIGTERM (and so does its sleep); forking leaves a
	// grandchild in its process group.
	conf := `
metrics { address = "METRICS" }
shutdown_timeout = "1s"
service "exec" "stubborn" {
  command = ["/bin/sh", "-c", "trap '' TERM; sleep 1000 & echo $$ $!; wait"]
  env     = { GENERATION = "%d" }
  endpoint "tcp" { address = %q }
}
service "exec" "forking" {
  command = ["/bin/sh", "-c", "sleep 1000 & echo $$ $!; wait"]
  endpoint "tcp" { address = %q }
}
`
	path, maddr := writeConfig(t, fmt.Sprintf(conf, 1, stubborn, forking))
	d := startDaemon(t, path, maddr)
	spid := d.cmd.Process.Pid
	stub := map[string]string{"service": "stubborn", "factory": "exec"}

	// A reload that replaces stubborn: its child gets SIGTERM, ignores it,
	// and is killed with its group when shutdown_timeout (1s) runs out.
	c := exDial(t, stubborn)
	pids := exPIDs(t, c)
	rewriteConfig(t, path, maddr, fmt.Sprintf(conf, 2, stubborn, forking))
	start := time.Now()
	d.reload("success", 1)
	exWaitFor(t, 10*time.Second, "the stubborn child and its sleep to be killed", func() bool {
		return exDead(pids[0], spid) && exDead(pids[1], spid)
	})
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Errorf("the child that ignores SIGTERM ended %v after the reload, before shutdown_timeout", el)
	}
	d.waitMetric("superd_connections_dropped_total", map[string]string{"service": "stubborn", "reason": "shutdown_timeout"}, 1)
	d.waitMetric("superd_exec_exits_total", map[string]string{"service": "stubborn", "result": "signal"}, 1)
	d.waitMetric("superd_exec_processes", map[string]string{"service": "stubborn"}, 0)
	d.waitMetric("superd_connections_active", stub, 0)
	if got := closedByServer(t, c, 10*time.Second); got == nil {
		t.Error("the killed child's connection is still open")
	}
	if l := exLogLines(d, `msg="program exited"`, fmt.Sprintf("pid=%d ", pids[0])); len(l) != 1 || exLogAttr(l[0], "signal") != "SIGKILL" {
		t.Errorf("exit of the killed child logged as %q, want one line with signal=SIGKILL", l)
	}

	// At exit: the grandchild of forking goes with its group at the start
	// of the drain (SIGTERM), stubborn's at shutdown_timeout (SIGKILL).
	c1 := exDial(t, stubborn)
	p1 := exPIDs(t, c1)
	c2 := exDial(t, forking)
	p2 := exPIDs(t, c2)
	start = time.Now()
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("superd took %v to exit with shutdown_timeout = 1s", el)
	}
	for _, p := range append(p1, p2...) {
		exWaitFor(t, 5*time.Second, fmt.Sprintf("process %d to be gone", p), func() bool { return exDead(p, spid) })
	}
	if l := exLogLines(d, `msg="program exited"`, fmt.Sprintf("pid=%d ", p2[0])); len(l) != 1 || exLogAttr(l[0], "signal") != "SIGTERM" {
		t.Errorf("exit of forking's child logged as %q, want signal=SIGTERM", l)
	}
	if l := exLogLines(d, `msg="program exited"`, fmt.Sprintf("pid=%d ", p1[0])); len(l) != 1 || exLogAttr(l[0], "signal") != "SIGKILL" {
		t.Errorf("exit of stubborn's child logged as %q, want signal=SIGKILL", l)
	}
}

// ---------------------------------------------------------------------------
// 6. Lifecycle: reaping, exit results, the exit log line

func TestExecThousandChildrenNoZombie(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "true" {
  command = ["/bin/true"]
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	const n, workers = 1000, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					errs <- err
					return
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err = io.Copy(io.Discard, c) // /bin/true writes nothing; the close ends it
				c.Close()
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	svc := map[string]string{"service": "true"}
	d.waitMetric("superd_exec_exits_total", map[string]string{"service": "true", "result": "success"}, n)
	d.waitMetric("superd_exec_processes", svc, 0)
	d.waitMetric("superd_connections_active", svc, 0)
	d.waitMetric("superd_connections_total", svc, n)
	if z := exZombies(d.cmd.Process.Pid); len(z) > 0 {
		t.Errorf("zombie children of superd: %v", z)
	}
	if c := exChildren(d.cmd.Process.Pid); len(c) > 0 {
		t.Errorf("children of superd still there: %v", c)
	}
	for _, r := range []string{"failure", "signal"} {
		if v := exMetric(d, "superd_exec_exits_total", map[string]string{"service": "true", "result": r}); v != 0 {
			t.Errorf("exits_total{result=%q} = %v", r, v)
		}
	}
	d.stop(20 * time.Second)
}

// TestExecOrphansReapedAsPID1: superd as the first process of a PID
// namespace (as a container's entrypoint) is handed its programs'
// orphans, and reaps them: programs that leave a background job behind
// leave no zombie.
func TestExecOrphansReapedAsPID1(t *testing.T) {
	if out, err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot start a process in a PID namespace of its own (unshare needs root or user namespaces): %v %s", err, out)
	}
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "background" {
  command = ["/bin/sh", "-c", "sleep 0.3 </dev/null >/dev/null 2>&1 & echo $!"]
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startCmd(t, exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
		superdBin, "run", "-config", path, "-log-level", "debug"), maddr)
	// superd is unshare's child; its pids inside the namespace are not ours.
	var superd int
	if kids := exChildren(d.cmd.Process.Pid); len(kids) == 1 {
		superd = kids[0].pid
	} else {
		t.Fatalf("unshare's children: %v", kids)
	}
	const programs = 3
	for range programs {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(c); err != nil || len(b) == 0 {
			t.Fatalf("read %q, %v", b, err)
		}
		c.Close()
	}
	d.waitMetric("superd_exec_exits_total", map[string]string{"service": "background", "result": "success"}, programs)
	deadline := time.Now().Add(10 * time.Second)
	for len(exChildren(superd)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("children of superd 10 s after the programs exited (zombies: %v): %v", exZombies(superd), exChildren(superd))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !d.logged("orphaned process reaped") {
		t.Error("no orphan reaped was logged")
	}
	if err := syscall.Kill(superd, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := d.wait(20 * time.Second); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}
}

func TestExecExitResults(t *testing.T) {
	fail, sig := freeAddr(t), freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "fail" {
  command = ["/bin/sh", "-c", "echo $$; exit 3"]
  endpoint "tcp" { address = %q }
}
service "exec" "sig" {
  command = ["/bin/sh", "-c", "echo $$; kill -KILL $$"]
  endpoint "tcp" { address = %q }
}
`, fail, sig))
	d := startDaemon(t, path, maddr)
	for _, tt := range []struct {
		service, addr, result, key, value string
	}{
		{"fail", fail, "failure", "status", "3"},
		{"sig", sig, "signal", "signal", "SIGKILL"},
	} {
		c := exDial(t, tt.addr)
		out := strings.TrimSpace(exReadAll(t, c, 10*time.Second))
		local := c.LocalAddr().String()
		d.waitMetric("superd_exec_exits_total", map[string]string{"service": tt.service, "result": tt.result}, 1)
		for _, r := range []string{"success", "failure", "signal"} {
			if r != tt.result {
				if v := exMetric(d, "superd_exec_exits_total", map[string]string{"service": tt.service, "result": r}); v != 0 {
					t.Errorf("%s: exits_total{result=%q} = %v", tt.service, r, v)
				}
			}
		}
		lines := exLogLines(d, `msg="program exited"`, "service="+tt.service+" ")
		if len(lines) != 1 {
			t.Fatalf("%s: %d exit lines logged, want 1: %q", tt.service, len(lines), lines)
		}
		l := lines[0]
		if exLogAttr(l, "pid") != out || exLogAttr(l, "peer") != local || exLogAttr(l, tt.key) != tt.value {
			t.Errorf("%s: exit logged as %q; want pid=%s peer=%s %s=%s", tt.service, l, out, local, tt.key, tt.value)
		}
		if dur, err := time.ParseDuration(exLogAttr(l, "duration")); err != nil || dur <= 0 || dur > 10*time.Second {
			t.Errorf("%s: duration in %q: %v, %v", tt.service, l, dur, err)
		}
	}
	d.stop(20 * time.Second)
}

// TestExecLimits: max_connections bounds the processes; idle_timeout ends
// a relayed connection (and its child) but not a socket handed over;
// stderr = "inherit" writes to superd's own stderr.
func TestExecLimits(t *testing.T) {
	bounded, relay, direct := freeAddr(t), freeAddr(t), freeAddr(t)
	const waiter = `command = ["/bin/sh", "-c", "echo hi; echo to-superd-stderr >&2; read x"]`
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "bounded" {
  %[1]s
  max_connections = 2
  endpoint "tcp" { address = %[2]q }
}
service "exec" "idle" {
  %[1]s
  idle_timeout = "300ms"
  stderr       = "inherit"
  endpoint "tls" {
    address     = %[3]q
    self_signed = true
  }
  endpoint "tcp" { address = %[4]q }
}
`, waiter, bounded, relay, direct))
	d := startDaemon(t, path, maddr)
	hi := func(c net.Conn) {
		t.Helper()
		if line := exReadLine(t, c, bufio.NewReader(c), 10*time.Second); line != "hi" {
			t.Fatalf("got %q", line)
		}
	}

	b1, b2 := exDial(t, bounded), exDial(t, bounded)
	hi(b1)
	hi(b2)
	expectClosedAtAccept(t, bounded)
	d.waitMetric("superd_connections_rejected_total", map[string]string{"service": "bounded", "reason": "max_connections"}, 1)
	d.waitMetric("superd_exec_processes", map[string]string{"service": "bounded"}, 2)
	b1.Close()
	d.waitMetric("superd_exec_processes", map[string]string{"service": "bounded"}, 1)
	b3 := exDial(t, bounded)
	hi(b3)

	tc, err := tls.Dial("tcp", relay, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	dc := exDial(t, direct)
	hi(tc)
	hi(dc)
	start := time.Now()
	closedByServer(t, tc, 10*time.Second)
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("the idle relayed connection was closed after %v", el)
	}
	d.waitMetric("superd_connections_dropped_total", map[string]string{"service": "idle", "reason": "idle_timeout"}, 1)
	d.waitMetric("superd_exec_processes", map[string]string{"service": "idle"}, 1) // the direct one
	fmt.Fprintln(dc, "still here")
	if rest := exReadAll(t, dc, 10*time.Second); rest != "" {
		t.Fatalf("direct: %q", rest)
	}
	d.waitMetric("superd_exec_exits_total", map[string]string{"service": "idle", "result": "success"}, 1)
	n := 0
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		if l == "to-superd-stderr" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("stderr = inherit: %d raw lines on superd's stderr, want 2", n)
	}
	if n := len(exLogLines(d, `msg="program stderr"`, "service=bounded", "line=to-superd-stderr")); n != 3 {
		t.Errorf("stderr = log: %d lines logged, want 3", n)
	}
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 7. Reload, and a failed spawn

func TestExecReloadKeepsOldChildren(t *testing.T) {
	prog := execProg(t)
	addr, gone := freeAddr(t), freeAddr(t)
	conf := `
metrics { address = "METRICS" }
shutdown_timeout = "30s"
service "exec" "svc" {
  command     = [%q, "stopper", "SIGUSR1"]
  stop_signal = "SIGUSR1"
  env         = { V = %q }
  endpoint "tcp" { address = %q }
}
`
	removed := `
service "exec" "removed" {
  command = ["/bin/true"]
  endpoint "tcp" { address = %q }
}
`
	path, maddr := writeConfig(t, fmt.Sprintf(conf, prog, "1", addr)+fmt.Sprintf(removed, gone))
	d := startDaemon(t, path, maddr)
	spid := d.cmd.Process.Pid
	svc := map[string]string{"service": "svc", "factory": "exec"}

	old := exDial(t, addr)
	oldR := bufio.NewReader(old)
	var oldPID int
	if _, err := fmt.Sscanf(exReadLine(t, old, oldR, 10*time.Second), "ready pid=%d v=1", &oldPID); err != nil {
		t.Fatalf("the first child: %v", err)
	}
	if v := d.serviceSeries("removed"); v == 0 {
		t.Fatal("no series for service removed before the reload")
	}

	// Replace svc (a new value of V) and remove "removed".
	rewriteConfig(t, path, maddr, fmt.Sprintf(conf, prog, "2", addr))
	d.reload("success", 1)
	// The old instance drains: its child gets stop_signal, and carries on.
	if line := exReadLine(t, old, oldR, 10*time.Second); line != "got SIGUSR1" {
		t.Fatalf("the old child wrote %q, want the stop signal reported", line)
	}
	// New connections get the new program.
	fresh := exDial(t, addr)
	freshR := bufio.NewReader(fresh)
	var newPID int
	if _, err := fmt.Sscanf(exReadLine(t, fresh, freshR, 10*time.Second), "ready pid=%d v=2", &newPID); err != nil {
		t.Fatalf("the child after the reload: %v", err)
	}
	if p, ok := exStat(oldPID); !ok || p.state == 'Z' || p.ppid != spid {
		t.Fatalf("the old child is gone after the reload: %+v %v", p, ok)
	}
	d.waitMetric("superd_exec_processes", map[string]string{"service": "svc"}, 2)
	d.waitMetric("superd_connections_active", svc, 2)
	if v := exMetric(d, "superd_factory_stops_total", svc); v != 0 {
		t.Fatalf("the old instance stopped (stops_total %v) while its child runs", v)
	}
	// The old child ends when it is done; the old instance stops then.
	fmt.Fprintln(old, "old")
	if line := exReadLine(t, old, oldR, 10*time.Second); line != "bye old" {
		t.Fatalf("the old child wrote %q", line)
	}
	if rest := exReadAll(t, old, 10*time.Second); rest != "" {
		t.Fatalf("after bye: %q", rest)
	}
	d.waitMetric("superd_factory_stops_total", svc, 1)
	d.waitMetric("superd_exec_processes", map[string]string{"service": "svc"}, 1)
	if n := d.serviceSeries("removed"); n != 0 {
		t.Errorf("%d series left of the removed service", n)
	}
	// The new child did not get the old instance's stop signal.
	fmt.Fprintln(fresh, "new")
	if line := exReadLine(t, fresh, freshR, 10*time.Second); line != "bye new" {
		t.Fatalf("the new child wrote %q", line)
	}
	d.waitMetric("superd_exec_exits_total", map[string]string{"service": "svc", "result": "success"}, 2)
	d.waitMetric("superd_exec_processes", map[string]string{"service": "svc"}, 0)
	d.stop(20 * time.Second)
}

func TestExecSpawnFailure(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "true")
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, b, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "vanished" {
  command = [%q]
  endpoint "tcp" { address = %q }
}
`, prog, addr))
	d := startDaemon(t, path, maddr)
	if err := os.Remove(prog); err != nil {
		t.Fatal(err)
	}
	c := exDial(t, addr)
	if got := exReadAll(t, c, 10*time.Second); got != "" {
		t.Fatalf("read %q", got)
	}
	svc := map[string]string{"service": "vanished", "factory": "exec"}
	d.waitMetric("superd_connections_rejected_total", map[string]string{"service": "vanished", "reason": "spawn"}, 1)
	d.waitMetric("superd_connections_active", svc, 0)
	fams := d.scrape()
	for name, want := range map[string]float64{"superd_connections_total": 0, "superd_exec_processes": 0} {
		if v, _ := metric(fams, name, map[string]string{"service": "vanished"}); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	if l := exLogLines(d, "cannot start program", "service=vanished"); len(l) != 1 || !strings.Contains(l[0], "no such file") {
		t.Errorf("the failed spawn logged as %q", l)
	}
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 10. umask, nice and rlimits, through the shim; user

func TestExecUmaskNiceRlimits(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "limits" {
  command = ["/bin/sh", "-c", "ulimit -n; ulimit -c; umask; cut -d' ' -f19 /proc/$$/stat; grep -E '^Max (open files|file size|cpu time)' /proc/$$/limits"]
  umask   = "0027"
  nice    = 7
  rlimits {
    nofile = 256
    core   = 0
    fsize  = 1048576
    cpu    = 60
  }
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	got := strings.Split(strings.TrimSpace(exReadAll(t, exDial(t, addr), 10*time.Second)), "\n")
	want := []string{"256", "0", "0027", "7",
		`Max cpu time\s+60\s+60\s+seconds`,
		`Max file size\s+1048576\s+1048576\s+bytes`,
		`Max open files\s+256\s+256\s+files`}
	if len(got) != len(want) {
		t.Fatalf("the child printed %q, want %d lines like %q", got, len(want), want)
	}
	for i, w := range want {
		if !regexp.MustCompile("^" + w + "$").MatchString(strings.TrimSpace(got[i])) {
			t.Errorf("line %d: %q, want %q", i+1, got[i], w)
		}
	}
	d.waitMetric("superd_exec_exits_total", map[string]string{"service": "limits", "result": "success"}, 1)
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 8. Wait mode

func TestExecWaitMode(t *testing.T) {
	prog := execProg(t)
	inetd, systemd := freeAddr(t), freeAddr(t)
	sock := filepath.Join(t.TempDir(), "wait.sock")
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "inetd" {
  wait    = true
  command = [%[1]q, "accept", "2"]
  endpoint "tcp" { address = %[2]q }
}
service "exec" "systemd" {
  wait       = true
  listen_fds = true
  command    = [%[1]q, "listenfds", "2"]
  endpoint "tcp" { address = %[3]q }
}
service "exec" "unix" {
  wait    = true
  command = [%[1]q, "accept", "2"]
  endpoint "unix" { path = %[4]q }
}
`, prog, inetd, systemd, sock))
	d := startDaemon(t, path, maddr)
	spid := d.cmd.Process.Pid

	// Nothing runs until a connection waits.
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c := exChildren(spid); len(c) > 0 {
			t.Fatalf("superd started %v before any connection", c)
		}
	}

	// ask connects and returns the line the program wrote: its pid, the
	// connection's number for that program, and what else it found.
	ask := func(addr string) (pid, conn int, rest string) {
		t.Helper()
		line := strings.TrimSpace(exReadAll(t, exDial(t, addr), 10*time.Second))
		f := strings.SplitN(line, " ", 3)
		if len(f) < 2 {
			t.Fatalf("%s answered %q", addr, line)
		}
		pid, _ = strconv.Atoi(strings.TrimPrefix(f[0], "pid="))
		conn, _ = strconv.Atoi(strings.TrimPrefix(f[1], "conn="))
		if len(f) == 3 {
			rest = f[2]
		}
		return pid, conn, rest
	}
	for _, tt := range []struct{ service, addr, facts string }{
		{"inetd", inetd, ""},
		{"systemd", systemd, "listen_pid_ok=true fds=1 names=systemd"},
		{"unix", sock, ""},
	} {
		// One program serves two connections, then exits; the next
		// connection gets a second program.
		p1, n1, facts := ask(tt.addr)
		p2, n2, _ := ask(tt.addr)
		if p1 == 0 || p1 != p2 || n1 != 0 || n2 != 1 {
			t.Fatalf("%s: pids %d, %d and connections %d, %d; want one program serving connections 0 and 1", tt.service, p1, p2, n1, n2)
		}
		if facts != tt.facts {
			t.Errorf("%s: the program found %q, want %q", tt.service, facts, tt.facts)
		}
		d.waitMetric("superd_exec_exits_total", map[string]string{"service": tt.service, "result": "success"}, 1)
		p3, n3, _ := ask(tt.addr)
		if p3 == p1 || n3 != 0 {
			t.Errorf("%s: after the first program exited, pid %d connection %d answered", tt.service, p3, n3)
		}
		d.waitMetric("superd_exec_processes", map[string]string{"service": tt.service}, 1)
	}
	// A drain ends the programs waiting for their second connection.
	start := time.Now()
	d.stop(20 * time.Second)
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("shutdown took %v", el)
	}
	if n := len(exLogLines(d, `msg="program exited"`, "signal=SIGTERM")); n != 3 {
		t.Errorf("%d programs ended by SIGTERM, want 3", n)
	}
	if z := exChildren(spid); len(z) > 0 {
		t.Errorf("children left: %v", z)
	}
}

func TestExecWaitModeBackoff(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "failing" {
  wait    = true
  command = ["/bin/sh", "-c", "exit 1"]
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	spid := d.cmd.Process.Pid
	failures := map[string]string{"service": "failing", "result": "failure"}
	// A connection waits and is never taken: the program is started again
	// and again, after 1 s, then 2 s, ...
	exDial(t, addr)
	poll := func(min float64) float64 {
		var v float64
		exWaitFor(t, 15*time.Second, fmt.Sprintf("%v failures", min), func() bool {
			v = exMetric(d, "superd_exec_exits_total", failures)
			if v < min {
				time.Sleep(90 * time.Millisecond) // scrapes cost superd CPU too
			}
			return v >= min
		})
		return v
	}
	poll(1)
	start, cpu := time.Now(), cpuTicks(t, spid)
	// An observation window without scrapes: superd's CPU time while it
	// backs off (a busy loop would use all of it).
	time.Sleep(2 * time.Second)
	ticks := cpuTicks(t, spid) - cpu
	n := poll(3)
	el := time.Since(start)
	t.Logf("3 failures after %v (%v counted); superd used %d clock ticks in the first 2 s", el, n, ticks)
	if n != 3 || el < 2500*time.Millisecond {
		t.Errorf("%v failures %v after the first; the back-off (1 s, then 2 s) allows 3 after 3 s", n, el)
	}
	if ticks > 20 {
		t.Errorf("superd used %d clock ticks of CPU in 2 s of back-off", ticks)
	}
	var delays []string
	for _, l := range exLogLines(d, "restarting after a delay", "service=failing") {
		delays = append(delays, exLogAttr(l, "delay"))
	}
	if len(delays) < 2 || delays[0] != "1s" || delays[1] != "2s" {
		t.Errorf("back-off delays logged: %v, want 1s, 2s, ...", delays)
	}
	// A shutdown during the back-off does not wait for it.
	start = time.Now()
	d.stop(20 * time.Second)
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("shutdown during the back-off took %v", el)
	}
}

// TestExecWaitModeUDP: wait mode on a udp endpoint: a program starts when a
// datagram waits, gets the socket (fd 0, or fd 3 with listen_fds), answers,
// exits, and the next datagram starts another.
func TestExecWaitModeUDP(t *testing.T) {
	prog := execProg(t)
	inetd, systemd := freeAddr(t), freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "udp" {
  wait    = true
  command = [%[1]q, "udp", "2"]
  endpoint "udp" { address = %[2]q }
}
service "exec" "udpfds" {
  wait       = true
  listen_fds = true
  command    = [%[1]q, "udp", "2", "3"]
  endpoint "udp" { address = %[3]q }
}
`, prog, inetd, systemd))
	d := startDaemon(t, path, maddr)
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func(addr, payload string) (pid, n int) {
		t.Helper()
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteTo([]byte(payload), ua); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2048)
		m, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no answer from %s: %v", addr, err)
		}
		var got string
		if _, err := fmt.Sscanf(string(buf[:m]), "pid=%d dgram=%d got=%s", &pid, &n, &got); err != nil || got != payload {
			t.Fatalf("%s answered %q", addr, buf[:m])
		}
		return pid, n
	}
	for _, tt := range []struct{ service, addr string }{{"udp", inetd}, {"udpfds", systemd}} {
		p1, n1 := ask(tt.addr, "one")
		p2, n2 := ask(tt.addr, "two")
		if p1 != p2 || n1 != 0 || n2 != 1 {
			t.Fatalf("%s: pids %d %d, datagrams %d %d; want one program answering 0 and 1", tt.service, p1, p2, n1, n2)
		}
		d.waitMetric("superd_exec_exits_total", map[string]string{"service": tt.service, "result": "success"}, 1)
		if p3, n3 := ask(tt.addr, "three"); p3 == p1 || n3 != 0 {
			t.Errorf("%s: after the first program exited, pid %d datagram %d answered", tt.service, p3, n3)
		}
	}
	d.stop(20 * time.Second)
}

// TestExecWaitModeReload switches one address between nowait and wait
// mode by reload, with a wait-mode program running during a switch, then
// removes the service.
func TestExecWaitModeReload(t *testing.T) {
	prog := execProg(t)
	addr := freeAddr(t)
	nowait := `
metrics { address = "METRICS" }
service "exec" "svc" {
  command = ["/bin/cat"]
  endpoint "tcp" { address = %q }
}
`
	wait := `
metrics { address = "METRICS" }
service "exec" "svc" {
  wait    = true
  command = [%q, "accept", "2"]
  endpoint "tcp" { address = %q }
}
`
	path, maddr := writeConfig(t, fmt.Sprintf(nowait, addr))
	d := startDaemon(t, path, maddr)
	spid := d.cmd.Process.Pid
	echoes := 0
	echo := func() {
		t.Helper()
		if err := echoPayload("tcp", addr, []byte("hello"), 10*time.Second); err != nil {
			t.Fatalf("echo: %v", err)
		}
		// cat exits once it has read the client's close: before the next
		// reload, whose drain would stop it.
		echoes++
		d.waitMetric("superd_exec_exits_total", map[string]string{"service": "svc", "result": "success"}, float64(echoes))
	}
	echo()

	rewriteConfig(t, path, maddr, fmt.Sprintf(wait, prog, addr))
	d.reload("success", 1)
	line := exReadAll(t, exDial(t, addr), 10*time.Second)
	var pid, n int
	if _, err := fmt.Sscanf(line, "pid=%d conn=%d", &pid, &n); err != nil || n != 0 {
		t.Fatalf("wait mode after the reload answered %q", line)
	}
	// The program waits for its second connection; a reload back to nowait
	// drains it (SIGTERM) and cat serves the next connection.
	rewriteConfig(t, path, maddr, fmt.Sprintf(nowait, addr))
	d.reload("success", 2)
	exWaitFor(t, 10*time.Second, "the wait-mode program to end", func() bool { return exDead(pid, spid) })
	echo()
	d.waitMetric("superd_exec_exits_total", map[string]string{"service": "svc", "result": "signal"}, 1)

	// And to wait mode again, then away.
	rewriteConfig(t, path, maddr, fmt.Sprintf(wait, prog, addr))
	d.reload("success", 3)
	if line := exReadAll(t, exDial(t, addr), 10*time.Second); !strings.HasSuffix(line, " conn=0\n") {
		t.Fatalf("wait mode after the second switch answered %q", line)
	}
	rewriteConfig(t, path, maddr, `metrics { address = "METRICS" }`+"\n")
	d.reload("success", 4)
	exWaitFor(t, 10*time.Second, "the service's socket to close", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return isRefused(err)
	})
	exWaitFor(t, 10*time.Second, "no children", func() bool { return len(exChildren(spid)) == 0 })
	d.stop(20 * time.Second)
}

// ---------------------------------------------------------------------------
// 9. validate, and user

// TestExecValidate: `superd validate` reports every bad exec block of a
// file, each at its own position, and exits 1.
func TestExecValidate(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Each case: the attributes of one service, the marker of the line
	// the diagnostic points at, and what it says.
	cases := []struct{ body, marker, says string }{
		{`command = [] # empty`, "# empty", "command needs at least the program"},
		{`command = ["/nonexistent/prog"] # missing`, "# missing", "no such file or directory"},
		{`command = [` + strconv.Quote(notExec) + `] # not executable`, "# not executable", "is not executable"},
		{"command = [\"/bin/cat\"]\n  user = \"no-such-user-xyz\" # user", "# user", `there is no user "no-such-user-xyz"`},
		{"command = [\"/bin/cat\"]\n  user = \"root\"\n  group = \"no-such-group-xyz\" # group", "# group", `there is no group "no-such-group-xyz"`},
		{"command = [\"/bin/cat\"]\n  env = { \"1BAD\" = \"x\" } # env", "# env", `"1BAD" is not a valid variable name`},
		{"command = [\"/bin/cat\"]\n  rlimits {\n    nofiles = 1 # rlimit name\n  }", "# rlimit name", `"nofiles" is not a resource limit`},
		{"command = [\"/bin/cat\"]\n  rlimits {\n    nofile = 2.5 # rlimit value\n  }", "# rlimit value", "must be a whole number"},
		{"command = [\"/bin/cat\"]\n  stderr = \"syslog\" # stderr", "# stderr", `"syslog" is not one of`},
		{"command = [\"/bin/cat\"]\n  stop_signal = \"SIGFOO\" # signal", "# signal", `"SIGFOO" is not a signal name`},
		{"command = [\"/bin/cat\"]\n  listen_fds = true # listen_fds", "# listen_fds", "set wait = true as well"},
	}
	var b strings.Builder
	for i, c := range cases {
		fmt.Fprintf(&b, "service \"exec\" \"bad%d\" {\n  %s\n  endpoint \"tcp\" { address = \"127.0.0.1:%d\" }\n}\n", i, c.body, 10001+i)
	}
	b.WriteString("service \"exec\" \"waittls\" {\n  command = [\"/bin/cat\"]\n  wait = true\n" +
		"  endpoint \"tls\" { # tls\n    address     = \"127.0.0.1:10100\"\n    self_signed = true\n  }\n}\n")
	text := b.String()
	path, _ := writeConfig(t, text)
	cmd := exec.Command(superdBin, "validate", "-config", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("validate: %v, want exit status 1\n%s", err, stderr.String())
	}
	out := stderr.String()
	cases = append(cases, struct{ body, marker, says string }{"", "# tls", "cannot use a tls endpoint"})
	for _, c := range cases {
		line := lineAt(t, text, c.marker)
		pos := fmt.Sprintf("superd.hcl:%d,", line)
		found := false
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, pos) && strings.Contains(l, c.says) {
				found = true
			}
		}
		if !found {
			t.Errorf("no diagnostic at %s saying %q", pos, c.says)
		}
		if !strings.Contains(out, fmt.Sprintf("%6d | ", line)) && !strings.Contains(out, fmt.Sprintf("%d | ", line)) {
			t.Errorf("source line %d not shown", line)
		}
	}
	if t.Failed() {
		t.Logf("validate printed:\n%s", out)
	}
}

// TestExecUser: as root, user, group and groups set the child's
// credentials; superd not running as root refuses to start a service with
// another user or group, and runs one with its own (keeping its own
// supplementary groups: setgroups needs privilege).
func TestExecUser(t *testing.T) {
	if os.Geteuid() != 0 {
		// Not root: a service with another user fails at start.
		path, _ := writeConfig(t, `
metrics { address = "METRICS" }
service "exec" "asroot" {
  command = ["/bin/sh", "-c", "id -u"]
  user    = "root"
  endpoint "tcp" { address = "127.0.0.1:1" }
}
`)
		out, err := exec.Command(superdBin, "run", "-config", path).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "asroot") ||
			!strings.Contains(string(out), "needs superd to run as root") {
			t.Fatalf("superd run as uid %d with user = root: %v\n%s", os.Geteuid(), err, out)
		}
		return
	}
	nobody, plain, self := freeAddr(t), freeAddr(t), freeAddr(t)
	const ids = `command = ["/bin/sh", "-c", "echo $(id -u) $(id -g) $(id -G)"]`
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "nobody" {
  %[1]s
  user = "nobody"
  endpoint "tcp" { address = %[2]q }
}
service "exec" "groups" {
  %[1]s
  user   = "nobody"
  group  = "daemon"
  groups = ["adm", "0"]
  umask  = "0022"
  endpoint "tcp" { address = %[3]q }
}
`, ids, nobody, plain))
	d := startDaemon(t, path, maddr)
	gid := func(name string) string {
		t.Helper()
		out, err := exec.Command("getent", "group", name).Output()
		if err != nil {
			t.Skipf("no group %s: %v", name, err)
		}
		return strings.Split(string(out), ":")[2]
	}
	nobodyGID := strings.TrimSpace(string(must(exec.Command("id", "-g", "nobody").Output())))
	if got, want := strings.TrimSpace(exReadAll(t, exDial(t, nobody), 10*time.Second)), "65534 "+nobodyGID+" "+nobodyGID; got != want {
		t.Errorf("user = nobody: uid gid groups %q, want %q", got, want)
	}
	// id -G: the effective gid, then the supplementary groups in the
	// kernel's order.
	got := strings.Fields(exReadAll(t, exDial(t, plain), 10*time.Second))
	want := []string{"65534", gid("daemon"), gid("daemon"), gid("adm"), "0"}
	if len(got) > 3 {
		sort.Strings(got[3:])
		sort.Strings(want[3:])
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("user, group and groups (through the shim): uid gid groups %q, want %q", got, want)
	}
	d.stop(20 * time.Second)

	// superd itself as nobody: another user fails at start; its own user
	// runs.
	shared, err := os.MkdirTemp("", "superd-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	for _, p := range []string{shared, filepath.Dir(superdBin)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	asNobody := func(args ...string) *exec.Cmd {
		cmd := exec.Command(superdBin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		return cmd
	}
	conf := func(text string) string {
		t.Helper()
		p := filepath.Join(shared, "superd.hcl")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := conf(fmt.Sprintf(`
metrics { address = "" }
service "exec" "asroot" {
  command = ["/bin/sh", "-c", "id -u"]
  user    = "root"
  endpoint "tcp" { address = %q }
}
`, freeAddr(t)))
	out, err := asNobody("run", "-config", p).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "asroot") ||
		!strings.Contains(string(out), "needs superd to run as root") {
		t.Errorf("superd as nobody with user = root: %v\n%s", err, out)
	}
	p = conf(fmt.Sprintf(`
metrics { address = "" }
service "exec" "othergroup" {
  command = ["/bin/sh", "-c", "id -u"]
  user    = "nobody"
  group   = "daemon"
  endpoint "tcp" { address = %q }
}
`, freeAddr(t)))
	out, err = asNobody("run", "-config", p).CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "othergroup") ||
		!strings.Contains(string(out), "needs superd to run as root") {
		t.Errorf("superd as nobody with user = nobody, group = daemon: %v\n%s", err, out)
	}
	smaddr := freeAddr(t)
	p = conf(fmt.Sprintf(`
metrics { address = %q }
service "exec" "self" {
  %s
  user = "nobody"
  endpoint "tcp" { address = %q }
}
`, smaddr, ids, self))
	d = startCmd(t, asNobody("run", "-config", p), smaddr)
	if got, want := strings.TrimSpace(exReadAll(t, exDial(t, self), 10*time.Second)), "65534 65534 65534"; got != want {
		t.Errorf("superd as nobody with user = nobody: uid gid groups %q, want %q", got, want)
	}
	d.stop(20 * time.Second)
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// A program gets the open-file limit superd was started with, not the one
// superd raises for itself: programs written for select(2) break past
// FD_SETSIZE, and some close every descriptor up to the limit. Started
// directly, or through the shim.
func TestExecOpenFileLimitNotRaised(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < 2048 {
		t.Skipf("hard open-file limit %d: too low to tell a raised limit", lim.Max)
	}
	direct, shim := freeAddr(t), freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "direct" {
  command = ["/bin/sh", "-c", "ulimit -Sn"]
  endpoint "tcp" { address = %q }
}
service "exec" "shim" {
  command = ["/bin/sh", "-c", "ulimit -Sn"]
  umask   = "0022"
  endpoint "tcp" { address = %q }
}
`, direct, shim))
	cmd := exec.Command("bash", "-c", `ulimit -Sn 1024 && exec "$0" run -config "$1"`, superdBin, path)
	startCmd(t, cmd, maddr)
	for _, tt := range []struct{ service, addr string }{{"direct", direct}, {"shim", shim}} {
		if got := strings.TrimSpace(exReadAll(t, exDial(t, tt.addr), 10*time.Second)); got != "1024" {
			t.Errorf("%s: the program's soft open-file limit is %q, want 1024 (superd's at start)", tt.service, got)
		}
	}
}

// startStubborn starts superd with an exec service whose program ignores
// SIGTERM and prints its pid, and connects: it returns once the program
// runs, with superd's configuration (path, and the text in it) and the
// program's pid (killed at cleanup in any case).
func startStubborn(t *testing.T) (d *daemon, path, config string, pid int) {
	t.Helper()
	addr := freeAddr(t)
	config = fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "30s"
service "exec" "stubborn" {
  command = ["/bin/sh", "-c", "trap '' TERM; echo $$; exec sleep 60"]
  endpoint "tcp" { address = %q }
}
`, addr)
	path, maddr := writeConfig(t, config)
	d = startDaemon(t, path, maddr)
	c := exDial(t, addr)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if pid, err = strconv.Atoi(strings.TrimSpace(line)); err != nil {
		t.Fatalf("the program printed %q", line)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return d, path, config, pid
}

// drainingStubborn is startStubborn, then a first SIGTERM: superd is
// draining, held by the program, when it returns.
func drainingStubborn(t *testing.T) (d *daemon, pid int) {
	t.Helper()
	d, _, _, pid = startStubborn(t)
	d.signal(syscall.SIGTERM)
	if !d.logged("shutting down") {
		t.Fatal("superd did not begin its shutdown")
	}
	return d, pid
}

// TestExecSecondSignalKillsPrograms: a second SIGTERM during the drain
// exits at once (status 1), and first kills the programs superd started,
// which would otherwise run on without it (this one ignores SIGTERM).
func TestExecSecondSignalKillsPrograms(t *testing.T) {
	d, pid := drainingStubborn(t)
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 1 {
		t.Errorf("exit status %d after a second signal, want 1", code)
	}
	exWaitFor(t, 5*time.Second, "the program to be killed", func() bool {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	})
}

// TestExecSecondSignalDuringStuckReloadKillsPrograms: a second SIGTERM
// while a reload is stuck (opening a FIFO nobody reads) exits at once, and
// first kills the programs of the services the reload holds, which the
// shutdown cannot take out until the reload ends.
func TestExecSecondSignalDuringStuckReloadKillsPrograms(t *testing.T) {
	d, path, config, pid := startStubborn(t)
	stickReload(t, d, path, config)
	d.signal(syscall.SIGTERM)
	if !d.logged("shutdown requested") {
		t.Fatal("the first SIGTERM was not taken during the reload")
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != exitFailure {
		t.Errorf("exit status %d after a second signal, want %d", code, exitFailure)
	}
	exWaitFor(t, 5*time.Second, "the program to be killed", func() bool {
		p, ok := exStat(pid)
		return !ok || p.state == 'Z'
	})
}

// TestExecUserSmallNproc: as root, a service with a user and a small
// rlimits.nproc (1 or 2: "this program may not fork") runs its program
// with that limit. The shim, a Go program with a handful of threads, took
// the limit before it took the user, and its threads counted as the
// user's processes when it did: execve then failed with EAGAIN ("cannot
// run: resource temporarily unavailable") and every connection was
// rejected as spawn, whatever the user ran elsewhere.
func TestExecUserSmallNproc(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (user = nobody)")
	}
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "exec" "nofork" {
  command = ["grep", "Max processes", "/proc/self/limits"]
  user    = "nobody"
  rlimits {
    nproc = 2
  }
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	// "Max processes  2  2  processes": soft and hard limit.
	if got := strings.Fields(exReadAll(t, exDial(t, addr), 10*time.Second)); len(got) != 5 || got[2] != "2" || got[3] != "2" {
		t.Errorf("the program's process limit: %q, want 2 and 2\n%s", got, lastBytes(d.stderr.String(), 4096))
	}
	d.waitMetric("superd_connections_rejected_total", map[string]string{"service": "nofork", "reason": "spawn"}, 0)
	d.stop(20 * time.Second)
}
