package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/services/daytime"
)

// The README's quick start: the commands of its "With `make run` going"
// block are run against the real binary serving examples.hcl, each twice:
// once as the README writes it (with the real nc, telnet, openssl, curl;
// skipped, with the reason, where one is not installed: `make test-tools`
// installs them) and once as the equivalent Go client, which sends exactly
// what the tool sends (nc: lines ending in LF; nc -C and telnet: CRLF).
// examples.hcl's fixed addresses and /tmp paths are moved to free ports and
// a temporary folder, in the file and in the commands alike.

const (
	readmePath     = "../../README.md"
	examplesPath   = "../../examples.hcl"
	sniExamplePath = "../../examples/sni.hcl"
	// readmeBlockIntro starts the paragraph before the block.
	readmeBlockIntro = "With `make run` going"
	readmeWait       = 10 * time.Second
)

// readmeCommand is one line of the block.
type readmeCommand struct {
	line    string // the command, as in the README
	comment string // what follows its "#"
	run     string // the command with the test's addresses and paths

	stdin    string   // what an `echo X |` in front of it pipes in
	client   string   // nc, telnet, openssl, curl or rdate
	tools    []string // the programs it runs
	crlf     bool     // lines go out ending in CRLF (nc -C, telnet)
	tls      bool     // openssl s_client
	addr     string   // the address it talks to, as in examples.hcl
	testAddr string   // the same, moved by the test
	urlPath  string   // curl's path
	grep     string   // the pattern of a `| grep PATTERN` behind curl
	head     int      // the lines a `| head` behind nc keeps (0: no head)
}

// readmeCommands returns the commands of the block.
func readmeCommands(t *testing.T) []*readmeCommand {
	t.Helper()
	src, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(src), "\n")
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, readmeBlockIntro) {
			start = i + 1
			break
		}
	}
	if start < 0 {
		t.Fatalf("README.md has no paragraph starting %q", readmeBlockIntro)
	}
	for start < len(lines) && strings.TrimSpace(lines[start]) == "" {
		start++
	}
	comment := regexp.MustCompile(`\s+#\s+(.*)$`)
	var cmds []*readmeCommand
	for _, l := range lines[start:] {
		if !strings.HasPrefix(l, "    ") {
			break
		}
		c := &readmeCommand{line: strings.TrimSpace(l)}
		if m := comment.FindStringSubmatchIndex(c.line); m != nil {
			c.comment = c.line[m[2]:m[3]]
			c.line = strings.TrimSpace(c.line[:m[0]])
		}
		cmds = append(cmds, c)
	}
	if len(cmds) == 0 {
		t.Fatalf("README.md: no indented commands after %q", readmeBlockIntro)
	}
	return cmds
}

// parse fills in what c does from its text; false when the test does not
// know the command (so nothing checks it: a failure).
func (c *readmeCommand) parse() bool {
	segments := strings.Split(c.line, " | ")
	if f := strings.Fields(segments[0]); len(f) > 0 && f[0] == "echo" {
		c.stdin = strings.Join(f[1:], " ") + "\n"
		segments = segments[1:]
	}
	if len(segments) == 0 {
		return false
	}
	f := strings.Fields(segments[0])
	if n := len(f); n > 1 && f[n-1] == "</dev/null" {
		// Nothing to send: the client only reads (the Go client sends
		// nothing either).
		f = f[:n-1]
	}
	c.client = f[0]
	c.tools = append(c.tools, f[0])
	switch c.client {
	case "nc":
		var rest []string
		for _, a := range f[1:] {
			switch {
			case a == "-C":
				c.crlf = true
			case strings.HasPrefix(a, "-q"): // quit after stdin's EOF
			case strings.HasPrefix(a, "-"):
				return false
			default:
				rest = append(rest, a)
			}
		}
		if len(rest) != 2 {
			return false
		}
		c.addr = net.JoinHostPort(rest[0], rest[1])
	case "telnet":
		if len(f) != 3 {
			return false
		}
		c.crlf = true
		c.addr = net.JoinHostPort(f[1], f[2])
	case "openssl":
		if len(f) != 4 || f[1] != "s_client" || f[2] != "-connect" {
			return false
		}
		c.tls = true
		c.addr = f[3]
	case "curl":
		if len(f) != 3 || f[1] != "-s" {
			return false
		}
		hostPort, path, _ := strings.Cut(f[2], "/")
		c.addr, c.urlPath = hostPort, "/"+path
	case "rdate":
		// rdate -p -o PORT HOST: print the time of an RFC 868 server.
		if len(f) != 5 || f[1] != "-p" || f[2] != "-o" {
			return false
		}
		c.addr = net.JoinHostPort(f[4], f[3])
	default:
		return false
	}
	for _, s := range segments[1:] {
		g := strings.Fields(s)
		switch {
		case c.client == "curl" && len(g) == 2 && g[0] == "grep":
			c.grep = strings.Trim(g[1], "'")
		case c.client == "nc" && len(g) == 1 && g[0] == "head":
			c.head = 10
		default:
			return false
		}
		c.tools = append(c.tools, g[0])
	}
	return true
}

// readmeEnv is superd running examples.hcl at the test's addresses.
type readmeEnv struct {
	dir     string
	addrs   map[string]string // examples.hcl's address -> the test's
	paths   map[string]string // examples.hcl's /tmp path -> the test's
	serves  map[string]string // examples.hcl's address -> factory, or "metrics"
	seq     int               // makes chat names unique
	seqLock sync.Mutex
}

// writeExamples writes examples.hcl into a new folder with the test's
// addresses and paths, and nothing else: `make run` prepares nothing; it
// returns the file's path.
func writeExamples(t *testing.T) (*readmeEnv, string) {
	t.Helper()
	return writeExample(t, examplesPath, false)
}

// writeExample writes the example configuration at file into a new folder
// with the test's addresses and paths, and, with certs, as `make run-sni`
// does, the self-signed certificates it names (with examples/selfsigned);
// it returns the file's path.
func writeExample(t *testing.T, file string, certs bool) (*readmeEnv, string) {
	t.Helper()
	e := &readmeEnv{dir: t.TempDir(), addrs: map[string]string{}, paths: map[string]string{}, serves: map[string]string{}}
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`"127\.0\.0\.1:\d+"`).ReplaceAllStringFunc(string(src), func(q string) string {
		a := strings.Trim(q, `"`)
		if e.addrs[a] == "" {
			e.addrs[a] = freeAddr(t)
		}
		return `"` + e.addrs[a] + `"`
	})
	var names []string
	text = regexp.MustCompile(`"/tmp/[^"]+"`).ReplaceAllStringFunc(text, func(q string) string {
		p := strings.Trim(q, `"`)
		e.paths[p] = filepath.Join(e.dir, filepath.Base(p))
		if name, ok := strings.CutSuffix(filepath.Base(p), ".crt"); ok {
			names = append(names, name)
		}
		return `"` + e.paths[p] + `"`
	})
	if certs && len(names) > 0 {
		gen := exec.Command("go", append([]string{"run", "../../examples/selfsigned", "-dir", e.dir}, names...)...)
		if out, err := gen.CombinedOutput(); err != nil {
			t.Fatalf("examples/selfsigned: %v\n%s", err, out)
		}
	}
	path := filepath.Join(e.dir, filepath.Base(file))
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return e, path
}

func startExamples(t *testing.T) *readmeEnv {
	t.Helper()
	return startExample(t, examplesPath, false)
}

// startExample runs superd on the example configuration at file, moved
// (and with certs, its certificates made) by writeExample.
func startExample(t *testing.T, file string, certs bool) *readmeEnv {
	t.Helper()
	e, path := writeExample(t, file, certs)
	f, err := config.Load(path)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	// What examples.hcl serves where, by its own addresses and paths.
	orig := map[string]string{}
	for from, to := range e.addrs {
		orig[to] = from
	}
	for from, to := range e.paths {
		orig[to] = from
	}
	e.serves[orig[f.MetricsAddress]] = "metrics"
	for _, s := range f.Services {
		for _, ep := range s.Endpoints {
			_, addr, _ := strings.Cut(ep.Label, ":") // "tcp:ADDRESS", "tls:ADDRESS", "unix:PATH"
			e.serves[orig[addr]] = s.Factory
		}
	}
	metrics := f.MetricsAddress
	if orig[metrics] == "" {
		t.Fatalf("%s: metrics address %q is not on 127.0.0.1", file, metrics)
	}
	d := startDaemon(t, path, metrics)
	t.Cleanup(func() {
		if !t.Failed() {
			d.stop(15 * time.Second)
		}
	})
	return e
}

// The spellings of a loopback address in the commands: 127.0.0.1:P (curl,
// openssl), 127.0.0.1 P (nc, telnet) and -o P 127.0.0.1 (rdate).
var (
	readmeHostPort = regexp.MustCompile(`127\.0\.0\.1([: ])(\d+)\b`)
	readmeOptPort  = regexp.MustCompile(`-o (\d+) 127\.0\.0\.1\b`)
)

// rewrite moves c's address and paths to the test's; false when c uses an
// address examples.hcl does not configure.
func (e *readmeEnv) rewrite(t *testing.T, c *readmeCommand) bool {
	t.Helper()
	ok := true
	port := func(p string) string {
		to := e.addrs["127.0.0.1:"+p]
		if to == "" {
			t.Errorf("README command %q: examples.hcl configures nothing at 127.0.0.1:%s", c.line, p)
			ok = false
			return p
		}
		_, q, _ := net.SplitHostPort(to)
		return q
	}
	c.run = readmeHostPort.ReplaceAllStringFunc(c.line, func(s string) string {
		m := readmeHostPort.FindStringSubmatch(s)
		return "127.0.0.1" + m[1] + port(m[2])
	})
	c.run = readmeOptPort.ReplaceAllStringFunc(c.run, func(s string) string {
		return "-o " + port(readmeOptPort.FindStringSubmatch(s)[1]) + " 127.0.0.1"
	})
	for from, to := range e.paths {
		c.run = strings.ReplaceAll(c.run, from, to)
	}
	if c.testAddr = e.addrs[c.addr]; c.testAddr == "" && ok {
		t.Errorf("README command %q: examples.hcl configures nothing at %s", c.line, c.addr)
		ok = false
	}
	return ok
}

func (e *readmeEnv) name(prefix string) string {
	e.seqLock.Lock()
	defer e.seqLock.Unlock()
	e.seq++
	return fmt.Sprintf("%s%d", prefix, e.seq)
}

// TestReadmeCommands runs the quick start's commands.
func TestReadmeCommands(t *testing.T) {
	cmds := readmeCommands(t)
	e := startExamples(t)
	for _, c := range cmds {
		t.Run(c.line, func(t *testing.T) {
			if !c.parse() {
				t.Fatalf("README command %q: this test does not know how to check it; teach it", c.line)
			}
			if !e.rewrite(t, c) {
				return
			}
			factory := e.serves[c.addr]
			t.Run("go", func(t *testing.T) { e.check(t, c, factory, false) })
			t.Run("tool", func(t *testing.T) {
				if _, err := exec.LookPath("bash"); err != nil {
					t.Skip("bash is not installed: the README's command lines cannot be run as written")
				}
				for _, tool := range c.tools {
					if _, err := exec.LookPath(tool); err != nil {
						t.Skipf("%s is not installed (`make test-tools` installs it as root with apt-get); checked by the Go client only", tool)
					}
				}
				e.check(t, c, factory, true)
			})
		})
	}
}

// check runs what the README promises of c against the service it reaches,
// with the real tool or the Go client.
func (e *readmeEnv) check(t *testing.T, c *readmeCommand, factory string, tool bool) {
	open := func() session {
		if tool {
			return startTool(t, e.dir, c.run)
		}
		return dialSession(t, c)
	}
	switch {
	case c.client == "curl":
		e.checkHTTP(t, c, tool)
	case c.client == "rdate" && factory == "time":
		e.checkTime(t, c, tool)
	case c.stdin != "":
		e.checkPiped(t, c, factory, tool)
	case c.head > 0 && factory == "chargen":
		e.checkChargen(t, c, tool)
	case factory == "echo", factory == "proxy": // examples.hcl's proxy forwards to the echo
		s := open()
		defer s.close()
		s.send("hello superd")
		s.expect("hello superd\n")
	case factory == "qotd":
		s := open()
		defer s.close()
		s.expect("An apple a day keeps the doctor away\n")
		s.expectEnd()
	case factory == "daytime":
		// "the date and time, then the server closes"
		s := open()
		defer s.close()
		line := s.line()
		got, err := time.ParseInLocation(daytime.DefaultLayout, line, time.Local)
		if err != nil {
			t.Fatalf("daytime sent %q, not a time in the default layout %q: %v", line, daytime.DefaultLayout, err)
		}
		if d := time.Since(got); d < -time.Minute || d > time.Minute {
			t.Errorf("daytime sent %q, %v away from now", line, d)
		}
		s.expectEnd()
	case factory == "chat":
		// "choose a name, then talk (open two)"
		a, b := open(), open()
		defer a.close()
		defer b.close()
		na, nb := e.name("ann"), e.name("bob")
		for _, u := range []struct {
			s    session
			name string
		}{{a, na}, {b, nb}} {
			u.s.expect("What's your name?\n")
			u.s.send(u.name)
			u.s.expect("Welcome, " + u.name + "!\n")
		}
		a.send("hello everyone")
		b.expect("<" + na + "> hello everyone\n")
	default:
		t.Fatalf("README command %q reaches %q (%s), which this test does not know how to check", c.line, c.addr, factory)
	}
}

// checkPiped: `echo X | nc -q1 ADDR` to a logfile service appends X to the
// file the README's comment names.
func (e *readmeEnv) checkPiped(t *testing.T, c *readmeCommand, factory string, tool bool) {
	if factory != "logfile" {
		t.Fatalf("README command %q pipes into %s; this test knows only logfile for that", c.line, factory)
	}
	var file string
	for from, to := range e.paths {
		if strings.Contains(c.comment, from) {
			file = to
		}
	}
	if file == "" {
		t.Fatalf("README command %q: its comment (%q) names no file of examples.hcl", c.line, c.comment)
	}
	line := strings.TrimSuffix(c.stdin, "\n")
	before := countLines(file, line)
	if tool {
		code, out := runTool(t, e.dir, c.run)
		if code != 0 {
			t.Fatalf("%s: exit status %d\n%s", c.run, code, out)
		}
	} else {
		conn, err := net.DialTimeout("tcp", c.testAddr, readmeWait)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(c.stdin))
		conn.Close()
	}
	deadline := time.Now().Add(readmeWait)
	for countLines(file, line) != before+1 {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(file)
			t.Fatalf("%s: %q was not appended to %s; it holds %q", c.run, line, file, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkTime: `rdate -p -o PORT HOST` prints the time of the RFC 868 server.
func (e *readmeEnv) checkTime(t *testing.T, c *readmeCommand, tool bool) {
	if tool {
		code, out := runTool(t, e.dir, c.run)
		// rdate -p prints the server's time as date(1) does (Debian's
		// rdate), possibly after "rdate: [HOST]\t" (the BSDs').
		last := strings.TrimSpace(out)
		if i := strings.LastIndexAny(last, "\t\n"); i >= 0 {
			last = last[i+1:]
		}
		got, err := time.ParseInLocation(time.UnixDate, strings.Join(strings.Fields(last), " "), time.Local)
		if err != nil {
			got, err = time.ParseInLocation(time.ANSIC, strings.Join(strings.Fields(last), " "), time.Local)
		}
		if code != 0 || err != nil {
			t.Fatalf("%s: exit status %d, printed %q; want the time of the server (%v)", c.run, code, out, err)
		}
		if d := time.Since(got); d < -time.Minute || d > time.Minute {
			t.Errorf("%s printed %q, %v away from now", c.run, out, d)
		}
		return
	}
	conn, err := net.DialTimeout("tcp", c.testAddr, readmeWait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(readmeWait))
	b, err := io.ReadAll(conn)
	if err != nil || len(b) != 4 {
		t.Fatalf("time sent %d bytes (%v), want 4, then the close", len(b), err)
	}
	const since1900 = 2208988800 // seconds from 1900 to 1970 (RFC 868)
	got := time.Unix(int64(binary.BigEndian.Uint32(b))-since1900, 0)
	if d := time.Since(got); d < -time.Minute || d > time.Minute {
		t.Errorf("time sent %v, %v away from now", got, d)
	}
}

// checkChargen: `nc HOST PORT | head` prints the first ten lines of the
// RFC 864 pattern: 72 of the 95 printable ASCII characters, in a ring, each
// line starting one further on.
func (e *readmeEnv) checkChargen(t *testing.T, c *readmeCommand, tool bool) {
	var out string
	if tool {
		code, o := runTool(t, e.dir, c.run)
		if code != 0 {
			t.Fatalf("%s: exit status %d\n%s", c.run, code, o)
		}
		out = o
	} else {
		conn, err := net.DialTimeout("tcp", c.testAddr, readmeWait)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(readmeWait))
		r := bufio.NewReader(conn)
		var b strings.Builder
		for range c.head {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("chargen: %v after %q", err, b.String())
			}
			b.WriteString(l)
		}
		out = b.String()
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != c.head {
		t.Fatalf("%s printed %d lines, want %d:\n%s", c.run, len(lines), c.head, out)
	}
	for i, l := range lines {
		var want strings.Builder
		for j := range 72 {
			want.WriteByte(byte(' ' + (i+j)%95))
		}
		if l != want.String()+"\r" {
			t.Errorf("%s: line %d is %q, want %q and CR", c.run, i, l, want.String())
		}
	}
}

func countLines(path, line string) int {
	b, _ := os.ReadFile(path)
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if l == line {
			n++
		}
	}
	return n
}

// checkHTTP: curl of /metrics (filtered by grep) or /readyz.
func (e *readmeEnv) checkHTTP(t *testing.T, c *readmeCommand, tool bool) {
	var out string
	if tool {
		code, o := runTool(t, e.dir, c.run)
		if code != 0 {
			t.Fatalf("%s: exit status %d\n%s", c.run, code, o)
		}
		out = o
	} else {
		resp, err := http.Get("http://" + c.testAddr + c.urlPath)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d, %v", c.urlPath, resp.StatusCode, err)
		}
		out = string(body)
		if c.grep != "" {
			re := regexp.MustCompile(c.grep)
			var kept []string
			for _, l := range strings.Split(out, "\n") {
				if re.MatchString(l) {
					kept = append(kept, l)
				}
			}
			out = strings.Join(kept, "\n")
		}
	}
	switch c.urlPath {
	case "/metrics":
		if !strings.Contains(out, "superd_connections_total{") || !strings.Contains(out, "superd_factory_up{") {
			t.Errorf("%s printed no superd series:\n%s", c.run, out)
		}
		if c.grep == "^superd_" {
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasPrefix(l, "superd_") {
					t.Errorf("%s printed %q", c.run, l)
				}
			}
		}
	case "/readyz":
		if out != "ready\n" {
			t.Errorf("%s printed %q, want %q", c.run, out, "ready\n")
		}
	case "/healthz":
		if out != "ok\n" {
			t.Errorf("%s printed %q, want %q", c.run, out, "ok\n")
		}
	default:
		t.Fatalf("README command %q: this test does not know what %s should print", c.line, c.urlPath)
	}
}

// session is one interactive client: a person at a terminal running the
// README's command, or the Go client that sends the same bytes.
type session interface {
	send(line string) // a line typed, Enter included
	expect(want string)
	line() string // the next line received, without its end
	expectEnd()   // the server closed and the client noticed
	close()
}

// output accumulates what a client receives; expectations match it with
// line ends made LF (telnet prints CR LF as LF, nc prints them as sent).
type output struct {
	t    *testing.T
	what string
	mu   sync.Mutex
	b    bytes.Buffer
	pos  int // how far earlier expectations matched
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *output) text() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.ReplaceAll(o.b.String(), "\r\n", "\n")
}

func (o *output) expect(want string) {
	o.t.Helper()
	deadline := time.Now().Add(readmeWait)
	for {
		s := o.text()
		if i := strings.Index(s[o.pos:], want); i >= 0 {
			o.pos += i + len(want)
			return
		}
		if time.Now().After(deadline) {
			o.t.Fatalf("%s: waited %v for %q; received %q", o.what, readmeWait, want, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (o *output) line() string {
	o.t.Helper()
	deadline := time.Now().Add(readmeWait)
	for {
		s := o.text()
		if i := strings.IndexByte(s[o.pos:], '\n'); i >= 0 {
			l := s[o.pos : o.pos+i]
			o.pos += i + 1
			return l
		}
		if time.Now().After(deadline) {
			o.t.Fatalf("%s: waited %v for a line; received %q", o.what, readmeWait, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// goSession is the Go client of a command.
type goSession struct {
	*output
	c    net.Conn
	crlf bool
	done chan struct{} // the reader saw the end
}

func dialSession(t *testing.T, c *readmeCommand) session {
	t.Helper()
	var conn net.Conn
	var err error
	if c.tls {
		d := &net.Dialer{Timeout: readmeWait}
		conn, err = tls.DialWithDialer(d, "tcp", c.testAddr, &tls.Config{InsecureSkipVerify: true}) // self-signed, as s_client accepts it
	} else {
		conn, err = net.DialTimeout("tcp", c.testAddr, readmeWait)
	}
	if err != nil {
		t.Fatal(err)
	}
	s := &goSession{output: &output{t: t, what: "go client of " + c.line}, c: conn, crlf: c.crlf, done: make(chan struct{})}
	go func() {
		io.Copy(s.output, conn)
		close(s.done)
	}()
	t.Cleanup(s.close)
	return s
}

func (s *goSession) send(line string) {
	s.t.Helper()
	end := "\n"
	if s.crlf {
		end = "\r\n"
	}
	s.c.SetWriteDeadline(time.Now().Add(readmeWait))
	if _, err := io.WriteString(s.c, line+end); err != nil {
		s.t.Fatalf("%s: %v", s.what, err)
	}
}

func (s *goSession) expectEnd() {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(readmeWait):
		s.t.Fatalf("%s: the server did not close the connection", s.what)
	}
}

func (s *goSession) close() {
	s.c.Close()
	<-s.done
}

// toolSession is the README's command line run by bash, its standard input
// a pipe the test types into (kept open, as a terminal would be).
type toolSession struct {
	*output
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *testkit.Buffer
	exited chan struct{}
	once   sync.Once
}

func startTool(t *testing.T, dir, line string) session {
	t.Helper()
	cmd := exec.Command("bash", "-c", line)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // so close ends the whole pipeline
	s := &toolSession{output: &output{t: t, what: line}, cmd: cmd, stderr: &testkit.Buffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.output, s.stderr
	var err error
	if s.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(s.close)
	return s
}

func (s *toolSession) send(line string) {
	s.t.Helper()
	if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
		s.t.Fatalf("%s: typing %q: %v\nstderr: %s", s.what, line, err, s.stderr.String())
	}
}

func (s *toolSession) expect(want string) {
	s.t.Helper()
	defer func() {
		if s.t.Failed() {
			s.t.Logf("%s: stderr: %s", s.what, s.stderr.String())
		}
	}()
	s.output.expect(want)
}

func (s *toolSession) expectEnd() {
	s.t.Helper()
	select {
	case <-s.exited:
	case <-time.After(readmeWait):
		s.t.Fatalf("%s: still running %v after the server closed", s.what, readmeWait)
	}
}

func (s *toolSession) close() {
	s.once.Do(func() {
		s.stdin.Close()
		select {
		case <-s.exited:
			return
		default:
		}
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL) // its own process group
		<-s.exited
	})
}

// runTool runs a command line that ends by itself, with its standard input
// closed, and returns its exit status and output.
func runTool(t *testing.T, dir, line string) (int, string) {
	t.Helper()
	cmd := exec.Command("bash", "-c", line)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out testkit.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), out.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, out.String()
	case <-time.After(readmeWait):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("%s: still running after %v\n%s", line, readmeWait, out.String())
		return -1, ""
	}
}
