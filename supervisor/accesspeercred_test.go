package supervisor

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

// servingHandler is a factory that serves connections itself: it echoes
// one line and ends (its access log line is written after superd closed
// the socket).
type servingHandler struct{ lifecycleFactory }

func (*servingHandler) ServeConn(hc *framework.HandedConn) error {
	defer hc.Conn.Close()
	hc.Served()
	b := make([]byte, 64)
	n, err := hc.Conn.Read(b)
	if err != nil {
		return err
	}
	hc.BytesIn += int64(n)
	n, err = hc.Conn.Write(b[:n])
	hc.BytesOut += int64(n)
	return err
}

// quoted is a logfmt value that was written quoted (never a number).
type quoted string

// parseAccessLine parses a line of either format: JSON numbers are
// json.Number, logfmt values a string, or quoted when written quoted.
func parseAccessLine(t *testing.T, format, line string) map[string]any {
	t.Helper()
	m := map[string]any{}
	if format == accesslog.FormatJSON {
		d := json.NewDecoder(strings.NewReader(line))
		d.UseNumber()
		if err := d.Decode(&m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		return m
	}
	for s := line; s != ""; {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			t.Fatalf("line %q: no key=value at %q", line, s)
		}
		key := s[:eq]
		s = s[eq+1:]
		if strings.HasPrefix(s, `"`) {
			v, err := strconv.QuotedPrefix(s)
			if err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			s = s[len(v):]
			uq, _ := strconv.Unquote(v)
			m[key] = quoted(uq)
		} else {
			end := strings.IndexByte(s, ' ')
			if end < 0 {
				end = len(s)
			}
			m[key] = s[:end]
			s = s[end:]
		}
		s = strings.TrimPrefix(s, " ")
	}
	return m
}

// waitAccessLog polls the access log file until it holds n lines, and
// parses them.
func waitAccessLog(t *testing.T, path, format string, n int) []map[string]any {
	t.Helper()
	var lines []string
	waitFor(t, func() bool {
		data, _ := os.ReadFile(path)
		lines = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		return len(data) > 0 && len(lines) >= n
	})
	var out []map[string]any
	for _, l := range lines {
		out = append(out, parseAccessLine(t, format, l))
	}
	return out
}

// intField is the integer a line holds under key: a JSON number or an
// unquoted logfmt value.
func intField(m map[string]any, key string) (int64, bool) {
	switch v := m[key].(type) {
	case json.Number:
		n, err := v.Int64()
		return n, err == nil
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	return 0, false
}

var peerCredKeys = []string{"peer_uid", "peer_gid", "peer_pid"}

// checkPeerCred checks that a line of a unix connection carries the test
// process's credentials (it is the peer), as integers.
func checkPeerCred(t *testing.T, what string, m map[string]any) {
	t.Helper()
	for i, want := range []int{os.Getuid(), os.Getgid(), os.Getpid()} {
		if n, ok := intField(m, peerCredKeys[i]); !ok || n != int64(want) {
			t.Errorf("%s: %s = %#v, want the integer %d (line %v)", what, peerCredKeys[i], m[peerCredKeys[i]], want, m)
		}
	}
}

// checkNoPeerCred checks that a line of a tcp connection has no peer_*
// key at all.
func checkNoPeerCred(t *testing.T, what string, m map[string]any) {
	t.Helper()
	for _, k := range peerCredKeys {
		if v, ok := m[k]; ok {
			t.Errorf("%s: has %s = %#v, want no such key (line %v)", what, k, v, m)
		}
	}
}

// The access log's lines of unix connections carry the peer's uid, gid
// and pid (SO_PEERCRED), in both formats: the end line and the rejection
// line, of a connection served by a protocol and of one handed to a
// factory that serves it itself (whose line is written once the socket is
// closed). Lines of tcp connections have no such keys.
func TestAccessLogPeerCredentials(t *testing.T) {
	for _, format := range []string{accesslog.FormatJSON, accesslog.FormatText} {
		t.Run(format, func(t *testing.T) { testAccessLogPeerCredentials(t, format) })
	}
}

func testAccessLogPeerCredentials(t *testing.T, format string) {
	dir := t.TempDir()
	protoSock, handSock, rejSock := filepath.Join(dir, "p.sock"), filepath.Join(dir, "h.sock"), filepath.Join(dir, "r.sock")
	tcpAddr := testkit.FreeAddr(t, "tcp")
	s, m := newTestSupervisor()
	logPath := filepath.Join(dir, "access.log")
	l, err := accesslog.Open(logPath, format, m.AccessLogDropped)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s.SetAccessLog(l)
	proto := serviceConfig("p", &lifecycleFactory{}, config.Limits{MaxConnections: 1},
		unixEndpoint(protoSock, 0o600), tcpEndpoint(tcpAddr))
	hand := serviceConfig("h", &servingHandler{}, config.Limits{}, unixEndpoint(handSock, 0o600))
	rej := serviceConfig("r", &rejectingHandler{}, config.Limits{}, unixEndpoint(rejSock, 0o600))
	for _, sc := range []*config.Service{proto, hand, rej} {
		sc.AccessLog = true
	}
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{proto, hand, rej}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)

	n := 0
	next := func(what string) map[string]any {
		t.Helper()
		n++
		line := waitAccessLog(t, logPath, format, n)[n-1]
		t.Logf("%s: %v", what, line)
		return line
	}
	echo := func(network, addr string) net.Conn {
		t.Helper()
		return dialEcho(t, network, addr, "x\n")
	}
	// Reads until superd closes c.
	closed := func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var buf bytes.Buffer
		buf.ReadFrom(c)
		c.Close()
	}

	echo("unix", protoSock).Close()
	line := next("unix end")
	checkPeerCred(t, "unix end", line)
	if line["reason"] != "clean" || line["endpoint"] == nil {
		t.Errorf("unix end line %v", line)
	}
	echo("tcp", tcpAddr).Close()
	checkNoPeerCred(t, "tcp end", next("tcp end"))

	// max_connections = 1: while one is held, a unix and a tcp connection
	// are refused.
	held := echo("unix", protoSock)
	c, err := net.Dial("unix", protoSock)
	if err != nil {
		t.Fatal(err)
	}
	closed(c)
	line = next("unix rejection")
	checkPeerCred(t, "unix rejection", line)
	if line["reason"] != "max_connections" || (line["rejected"] != true && line["rejected"] != "true") {
		t.Errorf("unix rejection line %v", line)
	}
	c, err = net.Dial("tcp", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	closed(c)
	line = next("tcp rejection")
	checkNoPeerCred(t, "tcp rejection", line)
	if line["reason"] != "max_connections" {
		t.Errorf("tcp rejection line %v", line)
	}
	held.Close()
	checkPeerCred(t, "unix end after the rejections", next("unix end"))

	// Handed to the factory: served, then refused by it.
	closed(echo("unix", handSock))
	line = next("handed unix end")
	checkPeerCred(t, "handed unix end", line)
	if line["service"] != "h" {
		t.Errorf("handed unix end line %v", line)
	}
	c, err = net.Dial("unix", rejSock)
	if err != nil {
		t.Fatal(err)
	}
	closed(c)
	line = next("handed unix rejection")
	checkPeerCred(t, "handed unix rejection", line)
	if line["service"] != "r" || line["reason"] != "max_connections_per_ip" {
		t.Errorf("handed unix rejection line %v", line)
	}
}

// A tracked connection costs 80 bytes (an allocation of that size class):
// a unix connection's credentials fit in it, and a tcp connection, which
// has none, pays nothing for them.
func TestTrackedSize(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("sizes are for 64-bit platforms")
	}
	if n := unsafe.Sizeof(tracked{}); n > 80 {
		t.Errorf("tracked is %d bytes, want at most 80", n)
	}
}
