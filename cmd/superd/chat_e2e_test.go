package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// chatClient is one user of a chat service over a real socket. Every byte
// it reads is kept, so a whole session can be compared byte for byte.
type chatClient struct {
	t    *testing.T
	id   string
	c    net.Conn
	r    *bufio.Reader
	seen strings.Builder
}

// chatDial connects and reads the prompt.
func chatDial(t *testing.T, network, addr, id string) *chatClient {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cc := &chatClient{t: t, id: id, c: c, r: bufio.NewReader(c)}
	cc.expect("What's your name?\r\n")
	return cc
}

// chatJoin connects and registers name.
func chatJoin(t *testing.T, addr, name string) *chatClient {
	t.Helper()
	cc := chatDial(t, "tcp", addr, name)
	cc.send(name + "\r\n")
	cc.expect("Welcome, " + name + "!\r\n")
	return cc
}

func (cc *chatClient) send(s string) {
	cc.t.Helper()
	cc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(cc.c, s); err != nil {
		cc.t.Fatalf("%s: write: %v", cc.id, err)
	}
}

// line reads one server line: everything up to and including CRLF (a bare
// LF inside a relayed message does not end it).
func (cc *chatClient) line(timeout time.Duration) (string, error) {
	cc.c.SetReadDeadline(time.Now().Add(timeout))
	var b strings.Builder
	for {
		s, err := cc.r.ReadString('\n')
		b.WriteString(s)
		cc.seen.WriteString(s)
		if err != nil {
			return b.String(), err
		}
		if strings.HasSuffix(b.String(), "\r\n") {
			return b.String(), nil
		}
	}
}

// expect reads the next line and checks it byte for byte.
func (cc *chatClient) expect(want string) {
	cc.t.Helper()
	got, err := cc.line(10 * time.Second)
	if err != nil {
		cc.t.Fatalf("%s: reading %q: got %q, %v", cc.id, want, got, err)
	}
	if got != want {
		cc.t.Fatalf("%s: got %q, want %q", cc.id, got, want)
	}
}

// expectClosed checks that the server closes the connection without
// sending anything more.
func (cc *chatClient) expectClosed() {
	cc.t.Helper()
	cc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(cc.r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		cc.t.Fatalf("%s: the server did not close the connection", cc.id)
	}
	if len(b) > 0 {
		cc.t.Fatalf("%s: got %q before the close, want nothing", cc.id, b)
	}
	cc.c.Close()
}

func (cc *chatClient) close() { cc.c.Close() }

func TestChatTranscript(t *testing.T) {
	addr, otherAddr := freeAddr(t), freeAddr(t)
	sock := filepath.Join(t.TempDir(), "chat.sock")
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "chat" "lobby" {
  max_line_length = 100
  endpoint "tcp"  { address = %q }
  endpoint "unix" { path = %q }
}
service "chat" "other" {
  endpoint "tcp" { address = %q }
}
`, addr, sock, otherAddr))
	d := startDaemon(t, path, maddr)
	lobby := map[string]string{"service": "lobby"}
	d.waitMetric("superd_chat_users", lobby, 0)

	alice := chatJoin(t, addr, "alice")

	// A taken name: the server says so and does not prompt again. Over the
	// unix endpoint: one room for every endpoint of the service.
	bob := chatDial(t, "unix", sock, "bob")
	bob.send("alice\r\n")
	bob.expect("Name taken, please choose another.\r\n")
	bob.send("bob\r\n")
	bob.expect("Welcome, bob!\r\n")
	carol := chatJoin(t, addr, "carol")
	dave := chatDial(t, "tcp", addr, "dave") // stays in GETNAME for a while
	d.waitMetric("superd_chat_users", lobby, 3)

	// Another service is another room: the same name is free there, and
	// nothing crosses over.
	oAlice := chatJoin(t, otherAddr, "alice")
	oZed := chatJoin(t, otherAddr, "zed")

	bob.send("hello\r\n")
	alice.expect("<bob> hello\r\n")
	carol.expect("<bob> hello\r\n")
	alice.send("hi bob\r\n")
	bob.expect("<alice> hi bob\r\n") // no echo of bob's own line before it
	carol.expect("<alice> hi bob\r\n")
	carol.send("hey\r\n")
	alice.expect("<carol> hey\r\n") // no echo of alice's own line before it
	bob.expect("<carol> hey\r\n")

	// dave heard nothing while choosing a name.
	dave.send("dave\r\n")
	dave.expect("Welcome, dave!\r\n")
	oZed.send("other room\r\n")
	oAlice.expect("<zed> other room\r\n")

	// Several lines in one segment, in order.
	k := chatDial(t, "tcp", addr, "k")
	k.send("k\r\nafter\r\n")
	k.expect("Welcome, k!\r\n")
	for _, c := range []*chatClient{alice, bob, carol, dave} {
		c.expect("<k> after\r\n")
	}

	// Messages are relayed as they are: empty, "quit", invalid UTF-8.
	alice.send("\r\nquit\r\n\xff\xfe raw\r\n")
	for _, c := range []*chatClient{bob, carol, dave, k} {
		c.expect("<alice> \r\n")
		c.expect("<alice> quit\r\n")
		c.expect("<alice> \xff\xfe raw\r\n")
	}

	// Invalid names, then a valid non-ASCII one.
	z := chatDial(t, "tcp", addr, "zoë")
	for _, name := range []string{"", "\x01x", "del\x7f", "nel\u0085", "bad\xff", strings.Repeat("n", 65)} {
		z.send(name + "\r\n")
		z.expect("Invalid name, please choose another.\r\n")
	}
	z.send("zoë\r\n")
	z.expect("Welcome, zoë!\r\n")
	name64 := strings.Repeat("é", 32) // 64 bytes
	n64 := chatDial(t, "tcp", addr, "n64")
	n64.send(name64 + "\r\n")
	n64.expect("Welcome, " + name64 + "!\r\n")
	d.waitMetric("superd_chat_users", lobby, 7)

	// A leaving user frees the name.
	bob.close()
	d.waitMetric("superd_chat_users", lobby, 6)
	bob2 := chatDial(t, "tcp", addr, "bob2")
	bob2.send("bob\r\n")
	bob2.expect("Welcome, bob!\r\n")
	// Order is registration order: the new bob is last; every user hears
	// each line once.
	carol.send("line for all\r\n")
	for _, c := range []*chatClient{alice, dave, k, z, n64, bob2} {
		c.expect("<carol> line for all\r\n")
	}

	// A line longer than max_line_length closes that connection only, and
	// is not relayed; exactly the limit is fine.
	exact := strings.Repeat("x", 100)
	dave.send(exact + "\r\n")
	for _, c := range []*chatClient{alice, carol, k, z, n64, bob2} {
		c.expect("<dave> " + exact + "\r\n")
	}
	carol.send(strings.Repeat("y", 101) + "\r\n")
	carol.expectClosed()
	d.waitMetric("superd_chat_users", lobby, 6)
	alice.send("after the long line\r\n")
	for _, c := range []*chatClient{dave, k, z, n64, bob2} {
		c.expect("<alice> after the long line\r\n")
	}
	// A long name line, and a long unterminated line, close too.
	ln := chatDial(t, "tcp", addr, "longname")
	ln.send(strings.Repeat("n", 200) + "\r\n")
	ln.expectClosed()
	unterminated := chatDial(t, "tcp", addr, "unterminated")
	unterminated.send(strings.Repeat("u", 102)) // 100 + len(CRLF) without CRLF
	unterminated.expectClosed()

	// The other room heard none of it.
	oAlice.send("still here\r\n")
	oZed.expect("<alice> still here\r\n")

	// alice's and dave's sessions, byte for byte.
	k.send("bye\r\n")
	alice.expect("<k> bye\r\n")
	dave.expect("<k> bye\r\n")
	wantAlice := "What's your name?\r\n" +
		"Welcome, alice!\r\n" +
		"<bob> hello\r\n" +
		"<carol> hey\r\n" +
		"<k> after\r\n" +
		"<carol> line for all\r\n" +
		"<dave> " + exact + "\r\n" +
		"<k> bye\r\n"
	if got := alice.seen.String(); got != wantAlice {
		t.Errorf("alice's session:\n got %q\nwant %q", got, wantAlice)
	}
	wantDave := "What's your name?\r\n" +
		"Welcome, dave!\r\n" +
		"<k> after\r\n" +
		"<alice> \r\n" +
		"<alice> quit\r\n" +
		"<alice> \xff\xfe raw\r\n" +
		"<carol> line for all\r\n" +
		"<alice> after the long line\r\n" +
		"<k> bye\r\n"
	if got := dave.seen.String(); got != wantDave {
		t.Errorf("dave's session:\n got %q\nwant %q", got, wantDave)
	}

	for _, c := range []*chatClient{alice, dave, k, z, n64, bob2, oAlice, oZed} {
		c.close()
	}
	d.waitMetric("superd_chat_users", lobby, 0)
	d.waitMetric("superd_chat_users", map[string]string{"service": "other"}, 0)
	d.waitMetric("superd_connections_active", map[string]string{"service": "lobby", "factory": "chat"}, 0)
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestChatManyUsers: 300 users; three of them talk at once; every other
// user hears every line exactly once, in each sender's order.
func TestChatManyUsers(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "chat" "crowd" {
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	const users, senders, lines = 300, 3, 200
	svc := map[string]string{"service": "crowd", "factory": "chat"}

	start := time.Now()
	clients := make([]*chatClient, users)
	for i := range clients {
		clients[i] = chatJoin(t, addr, fmt.Sprintf("u%03d", i))
	}
	d.waitMetric("superd_chat_users", map[string]string{"service": "crowd"}, users)
	d.waitMetric("superd_connections_active", svc, users)
	t.Logf("%d users joined in %v", users, time.Since(start))

	msg := func(s, j int) string {
		return fmt.Sprintf("m %d %d %s", s, j, strings.Repeat("p", (s*7+j*13)%90))
	}
	start = time.Now()
	// Every user reads in its own goroutine; a bad line is reported once
	// the readers are done (t.Fatal is for the test goroutine).
	errs := make(chan error, users)
	var wg sync.WaitGroup
	for i, c := range clients {
		want := lines * senders
		if i < senders {
			want -= lines
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := make([]int, senders)
			for n := 0; n < want; n++ {
				got, err := c.line(60 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("%s: after %d lines: %q, %v", c.id, n, got, err)
					return
				}
				var s, j int
				if _, err := fmt.Sscanf(got, "<u%03d> m %d %d", new(int), &s, &j); err != nil || s < 0 || s >= senders {
					errs <- fmt.Errorf("%s: unexpected line %q", c.id, got)
					return
				}
				if want := fmt.Sprintf("<u%03d> %s\r\n", s, msg(s, j)); got != want || s == i {
					errs <- fmt.Errorf("%s: got %q, want %q (from another user)", c.id, got, want)
					return
				}
				if j != next[s] {
					errs <- fmt.Errorf("%s: from sender %d got line %d, want %d (lost, repeated or reordered)", c.id, s, j, next[s])
					return
				}
				next[s]++
			}
		}()
	}
	// Three ways of sending: all at once, line by line, odd chunks.
	var sw sync.WaitGroup
	for s := 0; s < senders; s++ {
		var all strings.Builder
		for j := 0; j < lines; j++ {
			all.WriteString(msg(s, j) + "\r\n")
		}
		data := all.String()
		c := clients[s]
		sw.Add(1)
		go func() {
			defer sw.Done()
			c.c.SetWriteDeadline(time.Now().Add(60 * time.Second))
			var err error
			switch s {
			case 0:
				_, err = io.WriteString(c.c, data)
			case 1:
				for j := 0; j < lines && err == nil; j++ {
					_, err = io.WriteString(c.c, msg(s, j)+"\r\n")
				}
			default:
				for k, size := 0, 1; k < len(data) && err == nil; size = size%211 + 7 {
					end := min(k+size, len(data))
					_, err = io.WriteString(c.c, data[k:end])
					k = end
				}
			}
			if err != nil {
				errs <- fmt.Errorf("sender %d: %v", s, err)
			}
		}()
	}
	sw.Wait()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d lines delivered to %d users in %v", senders*lines, users, time.Since(start))

	fams := d.scrape()
	if v, _ := metric(fams, "superd_connections_total", svc); v != users {
		t.Errorf("connections_total = %v, want %d", v, users)
	}
	if v, _ := metric(fams, "superd_connections_dropped_total", map[string]string{"service": "crowd", "reason": "slow_consumer"}); v != 0 {
		t.Errorf("dropped slow_consumer = %v, want 0", v)
	}
	for _, c := range clients {
		c.close()
	}
	d.waitMetric("superd_chat_users", map[string]string{"service": "crowd"}, 0)
	d.waitMetric("superd_connections_active", svc, 0)
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestChatSlowConsumer: a user who never reads is dropped as slow_consumer
// once max_pending_output is passed; the sender keeps going and everyone
// else hears every line.
func TestChatSlowConsumer(t *testing.T) {
	addr := freeAddr(t)
	path, maddr := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "chat" "slow" {
  max_pending_output = 262144
  endpoint "tcp" { address = %q }
}
`, addr))
	d := startDaemon(t, path, maddr)
	usersLabel := map[string]string{"service": "slow"}
	dropped := map[string]string{"service": "slow", "factory": "chat", "reason": "slow_consumer"}

	// The slow user: a small receive buffer (set before connecting), and
	// it never reads after its welcome.
	dialer := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	sc, err := dialer.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	slow := &chatClient{t: t, id: "slow", c: sc, r: bufio.NewReader(sc)}
	slow.expect("What's your name?\r\n")
	slow.send("slow\r\n")
	slow.expect("Welcome, slow!\r\n")

	fast := []*chatClient{chatJoin(t, addr, "fast1"), chatJoin(t, addr, "fast2")}
	sender := chatJoin(t, addr, "sender")
	d.waitMetric("superd_chat_users", usersLabel, 4)

	pad := strings.Repeat("z", 1000)
	line := func(j int) string { return fmt.Sprintf("%08d %s\r\n", j, pad) }

	// Readers check the sequence as it comes. The sender keeps at most
	// window lines ahead of the slower reader, so what superd holds for a
	// reader stays well below max_pending_output whatever the scheduling
	// of this test's goroutines: only the non-reader can pass it.
	const window = 100 // about 100 KB
	var mu sync.Mutex
	progress := sync.NewCond(&mu)
	heard := make([]int, len(fast))
	readerDone := 0
	errs := make(chan error, len(fast))
	var wg sync.WaitGroup
	for i, c := range fast {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				readerDone++
				progress.Broadcast()
				mu.Unlock()
			}()
			for j := 0; ; j++ {
				got, err := c.line(60 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("%s: after %d lines: %v", c.id, j, err)
					return
				}
				if got == "<sender> END\r\n" {
					return
				}
				if want := "<sender> " + line(j); got != want {
					errs <- fmt.Errorf("%s: line %d: got %.40q..., want %.40q...", c.id, j, got, want)
					return
				}
				mu.Lock()
				heard[i] = j + 1
				progress.Broadcast()
				mu.Unlock()
			}
		}()
	}
	// waitReaders waits until every reader is within window lines of n (or
	// one has stopped, which the checks below report).
	waitReaders := func(n int) {
		mu.Lock()
		defer mu.Unlock()
		for readerDone == 0 && slices.Min(heard) < n-window {
			progress.Wait()
		}
	}

	const batch = 100                  // lines, about 100 KB
	const maxBytes = 64 << 20          // bound on what is sent before the drop
	const timeLimit = 60 * time.Second // the sender must never be held up this long
	start := time.Now()
	sender.c.SetWriteDeadline(start.Add(timeLimit))
	n, sent := 0, 0
	send := func() {
		waitReaders(n)
		var b strings.Builder
		for k := 0; k < batch; k++ {
			b.WriteString(line(n))
			n++
		}
		if _, err := io.WriteString(sender.c, b.String()); err != nil {
			t.Fatalf("sender held up after %d bytes (%v): %v", sent, time.Since(start), err)
		}
		sent += b.Len()
	}
	for {
		send()
		if v, _ := metric(d.scrape(), "superd_connections_dropped_total", dropped); v >= 1 {
			break
		}
		if sent > maxBytes {
			t.Fatalf("the non-reader was not dropped after %d bytes", sent)
		}
	}
	t.Logf("the non-reader was dropped after %d bytes sent, %v", sent, time.Since(start))
	// The room carries on.
	for k := 0; k < 5; k++ {
		send()
	}
	if _, err := io.WriteString(sender.c, "END\r\n"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, h := range heard {
		if h != n {
			t.Errorf("%s heard %d lines, want %d", fast[i].id, h, n)
		}
	}
	if el := time.Since(start); el > timeLimit {
		t.Errorf("sending took %v", el)
	}
	t.Logf("%d lines (%d bytes) sent and heard by the readers in %v", n, sent, time.Since(start))
	d.waitMetric("superd_chat_users", usersLabel, 3)
	fams := d.scrape()
	if v, _ := metric(fams, "superd_connections_dropped_total", dropped); v != 1 {
		t.Errorf("dropped slow_consumer = %v, want 1", v)
	}

	// The slow user's connection is gone: reading what is buffered ends in
	// an error or EOF, not a timeout.
	sc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, sc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the slow consumer's connection is still open")
	}

	for _, c := range append(fast, sender) {
		c.close()
	}
	d.waitMetric("superd_chat_users", usersLabel, 0)
	d.waitMetric("superd_connections_active", map[string]string{"service": "slow"}, 0)
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestChatUsersGaugeAcrossReload: when a reload replaces a chat service
// (its block changed), superd_chat_users{service} still counts the users
// online: the old room's users leave as it drains, the new room's join.
func TestChatUsersGaugeAcrossReload(t *testing.T) {
	addr := freeAddr(t)
	const cfgText = `
metrics { address = "METRICS" }
service "chat" "lobby" {
  max_line_length = %d
  endpoint "tcp" { address = %q }
}
`
	path, maddr := writeConfig(t, fmt.Sprintf(cfgText, 100, addr))
	d := startDaemon(t, path, maddr)
	users := map[string]string{"service": "lobby"}
	alice := chatJoin(t, addr, "alice")
	bob := chatJoin(t, addr, "bob")
	d.waitMetric("superd_chat_users", users, 2)

	// Change the block: the service is replaced; its old users are asked
	// to leave (LoseConnection) and do.
	text := strings.ReplaceAll(fmt.Sprintf(cfgText, 200, addr), "METRICS", maddr)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	d.waitMetric("superd_config_reloads_total", map[string]string{"result": "success"}, 1)
	alice.expectClosed()
	bob.expectClosed()
	d.waitMetric("superd_connections_active", map[string]string{"service": "lobby"}, 0)

	carol := chatJoin(t, addr, "carol") // the new room
	d.waitMetric("superd_connections_active", map[string]string{"service": "lobby"}, 1)
	d.waitMetric("superd_chat_users", users, 1)
	carol.close()
	d.waitMetric("superd_chat_users", users, 0)
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
