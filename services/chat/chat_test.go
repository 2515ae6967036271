package chat

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/basic"
	"github.com/superd-dev/superd/framework/frameworktest"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    int
		wantErr []string
	}{
		{name: "default", body: "", want: basic.DefaultMaxLineLength},
		{name: "one", body: "  max_line_length = 1", want: 1},
		{name: "set", body: "  max_line_length = 100", want: 100},
		{name: "large", body: "  max_line_length = 1048576", want: 1 << 20},
		{name: "with common attributes", body: "  max_line_length = 64\n  max_connections = 1000\n  max_pending_output = 262144", want: 64},
		{name: "zero", body: "  max_line_length = 0",
			wantErr: []string{"superd.hcl:2,", `Invalid value for "max_line_length"`, "at least 1"}},
		{name: "negative", body: "  max_line_length = -5",
			wantErr: []string{"superd.hcl:2,", `Invalid value for "max_line_length"`}},
		{name: "fraction", body: "  max_line_length = 10.5",
			wantErr: []string{"superd.hcl:2,", `Invalid value for "max_line_length"`, "whole number"}},
		{name: "huge", body: "  max_line_length = 1e30",
			wantErr: []string{"superd.hcl:2,", `Invalid value for "max_line_length"`}},
		{name: "string", body: `  max_line_length = "lots"`,
			wantErr: []string{"superd.hcl:2,", "max_line_length"}},
		{name: "numeric string", body: `  max_line_length = "128"`, want: 128},
		{name: "unknown attribute", body: "  max_line_lenght = 5",
			wantErr: []string{"superd.hcl:2,", `Did you mean "max_line_length"?`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc, err := servicetest.Block{Factory: "chat", Name: "lobby", Body: tt.body}.Service(t)
			if tt.wantErr != nil {
				var de *config.DiagnosticsError
				if !errors.As(err, &de) {
					t.Fatalf("error %v (%T); want a *config.DiagnosticsError", err, err)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error text lacks %q:\n%s", s, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error:\n%s", err)
			}
			fac, err := servicetest.Build(svc, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := fac.(*Room).maxLine; got != tt.want {
				t.Fatalf("max line %d, want %d", got, tt.want)
			}
		})
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"ascii", "bob", true},
		{"space inside", "bob smith", true},
		{"trailing space", "bob ", true},
		{"only a space", " ", true},
		{"punctuation", "<bob>!", true},
		{"empty", "", false},
		{"64 bytes", strings.Repeat("a", 64), true},
		{"65 bytes", strings.Repeat("a", 65), false},
		{"64 bytes multibyte", strings.Repeat("é", 32), true},
		{"65 bytes multibyte", "a" + strings.Repeat("é", 32), false},
		{"32 code points but 128 bytes", strings.Repeat("😀", 32), false},
		{"16 emoji = 64 bytes", strings.Repeat("😀", 16), true},
		{"non-ASCII", "Zoë", true},
		{"CJK", "日本語", true},
		{"emoji", "😀", true},
		{"NBSP is not control", "a\u00a0b", true},
		{"zero-width space is not control", "a\u200bb", true},
		{"invalid UTF-8 byte", "bob\xff", false},
		{"lone continuation", "\x80", false},
		{"truncated sequence", "\xe6\x97", false},
		{"overlong", "\xc0\xaf", false},
		{"surrogate", "\xed\xa0\x80", false},
		{"NUL", "a\x00b", false},
		{"C0 SOH", "\x01bad", false},
		{"tab", "a\tb", false},
		{"LF", "bob\n", false},
		{"CR", "bob\r", false},
		{"ESC", "\x1b[31mred", false},
		{"unit separator", "a\x1fb", false},
		{"DEL", "a\x7fb", false},
		{"C1 U+0080", "a\u0080b", false},
		{"C1 NEL U+0085", "a\u0085b", false},
		{"C1 U+009F", "\u009f", false},
		{"C1 as raw byte (invalid UTF-8)", "a\x85b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := validName([]byte(tt.in)); got != tt.want {
				t.Fatalf("validName(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// recorder is the order of writes across every fake transport of a test.
type recorder struct {
	mu     sync.Mutex
	events []string // "id: bytes"
}

func (r *recorder) add(id string, b []byte) {
	r.mu.Lock()
	r.events = append(r.events, id+": "+string(b))
	r.mu.Unlock()
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.events
	r.events = nil
	return e
}

// newTransport is the transport of client id: what is written to it is
// also recorded in rec, when there is one.
func newTransport(id string, rec *recorder) *frameworktest.Transport {
	tr := &frameworktest.Transport{}
	if rec != nil {
		tr.OnWrite = func(b []byte) { rec.add(id, b) }
	}
	return tr
}

// client is one connection of a unit test: a protocol and its transport.
type client struct {
	id string
	p  framework.Protocol
	t  *frameworktest.Transport
}

func (c *client) send(s string) { c.p.DataReceived([]byte(s)) }
func (c *client) leave()        { c.p.ConnectionLost(framework.ErrConnectionDone) }

type room struct {
	t   *testing.T
	r   *Room
	rec *recorder
}

func newRoom(t *testing.T, service, body string) *room {
	t.Helper()
	svc, err := servicetest.Block{Factory: "chat", Name: service, Body: body}.Service(t)
	if err != nil {
		t.Fatal(err)
	}
	fac, err := servicetest.Build(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := fac.(*Room)
	if err := r.StartFactory(); err != nil {
		t.Fatal(err)
	}
	return &room{t: t, r: r, rec: &recorder{}}
}

func (rm *room) connect(id string) *client {
	rm.t.Helper()
	tr := newTransport(id, rm.rec)
	p := rm.r.BuildProtocol(tr.PeerAddr())
	p.ConnectionMade(tr)
	if got := tr.Take(); got != "What's your name?\r\n" {
		rm.t.Fatalf("%s: on connect got %q, want the prompt", id, got)
	}
	rm.rec.take()
	return &client{id: id, p: p, t: tr}
}

// join connects and registers name.
func (rm *room) join(id, name string) *client {
	rm.t.Helper()
	c := rm.connect(id)
	c.send(name + "\r\n")
	if got := c.t.Take(); got != "Welcome, "+name+"!\r\n" {
		rm.t.Fatalf("%s: naming itself %q got %q", id, name, got)
	}
	rm.rec.take()
	return c
}

func (rm *room) users() float64 {
	var m dto.Metric
	if err := rm.r.online.Write(&m); err != nil {
		rm.t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// expect checks, in order, every write made since the last check.
func (rm *room) expect(want ...string) {
	rm.t.Helper()
	got := rm.rec.take()
	if strings.Join(got, "|") != strings.Join(want, "|") {
		rm.t.Fatalf("writes:\n  got  %q\n  want %q", got, want)
	}
}

func TestProtocolTranscript(t *testing.T) {
	rm := newRoom(t, "unit-transcript", "")
	if rm.users() != 0 {
		t.Fatalf("users %v at start", rm.users())
	}
	alice := rm.join("A", "alice")
	if rm.users() != 1 {
		t.Fatalf("users %v, want 1", rm.users())
	}

	// A taken name: no new prompt, state stays GETNAME.
	b := rm.connect("B")
	b.send("alice\r\n")
	rm.expect("B: Name taken, please choose another.\r\n")
	b.send("bob\r\n")
	rm.expect("B: Welcome, bob!\r\n")
	b.t.Take()
	carol := rm.join("C", "carol")
	if rm.users() != 3 {
		t.Fatalf("users %v, want 3", rm.users())
	}
	dave := rm.connect("D") // still choosing a name

	// Lines reach every other named user, in registration order; no echo,
	// nothing to D.
	b.send("hello\r\n")
	rm.expect("A: <bob> hello\r\n", "C: <bob> hello\r\n")
	carol.send("hi bob\r\n")
	rm.expect("A: <carol> hi bob\r\n", "B: <carol> hi bob\r\n")

	// Several lines in one chunk, processed in order.
	k := rm.connect("K")
	k.send("k\r\nafter\r\n")
	rm.expect("K: Welcome, k!\r\n", "A: <k> after\r\n", "B: <k> after\r\n", "C: <k> after\r\n")

	// A line split across chunks, byte by byte.
	for _, c := range []byte("slow\r\n") {
		alice.send(string([]byte{c}))
	}
	rm.expect("B: <alice> slow\r\n", "C: <alice> slow\r\n", "K: <alice> slow\r\n")

	// Messages are not names: empty lines, invalid UTF-8, control bytes,
	// "quit" and "/me" are relayed as they are.
	alice.send("\r\n")
	rm.expect("B: <alice> \r\n", "C: <alice> \r\n", "K: <alice> \r\n")
	alice.send("bad \xff\x00 bytes\r\nquit\r\n/me waves\r\n")
	rm.expect(
		"B: <alice> bad \xff\x00 bytes\r\n", "C: <alice> bad \xff\x00 bytes\r\n", "K: <alice> bad \xff\x00 bytes\r\n",
		"B: <alice> quit\r\n", "C: <alice> quit\r\n", "K: <alice> quit\r\n",
		"B: <alice> /me waves\r\n", "C: <alice> /me waves\r\n", "K: <alice> /me waves\r\n",
	)
	alice.send("bare\nLF\r\n")
	rm.expect("B: <alice> bare\nLF\r\n", "C: <alice> bare\nLF\r\n", "K: <alice> bare\nLF\r\n")

	// A leaving user frees the name; the newcomer is last in order.
	b.leave()
	if rm.users() != 3 {
		t.Fatalf("users %v after bob left, want 3", rm.users())
	}
	carol.send("anyone?\r\n")
	rm.expect("A: <carol> anyone?\r\n", "K: <carol> anyone?\r\n")
	dave.send("bob\r\n")
	rm.expect("D: Welcome, bob!\r\n")
	k.send("x\r\n")
	rm.expect("A: <k> x\r\n", "C: <k> x\r\n", "D: <k> x\r\n")

	// Names are exact bytes.
	e := rm.connect("E")
	e.send("bob \r\n")
	rm.expect("E: Welcome, bob !\r\n")
	f := rm.connect("F")
	f.send("Bob\r\n")
	rm.expect("F: Welcome, Bob!\r\n")
	if rm.users() != 6 {
		t.Fatalf("users %v, want 6", rm.users())
	}

	// A client that never registered leaves no trace.
	g := rm.connect("G")
	g.leave()
	if rm.users() != 6 {
		t.Fatalf("users %v after an unnamed client left, want 6", rm.users())
	}
	for _, c := range []*client{alice, carol, dave, k, e, f} {
		c.leave()
	}
	if rm.users() != 0 {
		t.Fatalf("users %v after everyone left, want 0", rm.users())
	}
	for _, c := range []*client{alice, carol, dave, k, e, f} {
		if c.t.Disconnecting() {
			t.Fatalf("%s was closed by the server", c.id)
		}
	}
}

func TestProtocolInvalidNames(t *testing.T) {
	rm := newRoom(t, "unit-invalid", "")
	other := rm.join("O", "other")
	c := rm.connect("C")
	for _, name := range []string{"", "a\x00b", "\x01bad", "tab\there", "del\x7f", "nel\u0085", "c1\u009b",
		"bad\xff", "\xc0\xaf", strings.Repeat("n", 65), "a" + strings.Repeat("é", 32)} {
		c.send(name + "\r\n")
		rm.expect("C: Invalid name, please choose another.\r\n")
		if c.t.Disconnecting() {
			t.Fatalf("name %q closed the connection", name)
		}
	}
	if rm.users() != 1 {
		t.Fatalf("users %v, want 1", rm.users())
	}
	// Still choosing: lines are not relayed.
	other.send("psst\r\n")
	rm.expect()
	c.send(strings.Repeat("é", 32) + "\r\n")
	rm.expect("C: Welcome, " + strings.Repeat("é", 32) + "!\r\n")
	other.send("welcome\r\n")
	rm.expect("C: <other> welcome\r\n")
	other.leave()
	c.leave()
}

func TestProtocolMaxLineLength(t *testing.T) {
	rm := newRoom(t, "unit-maxline", "  max_line_length = 16")
	a := rm.join("A", "a")
	b := rm.join("B", "b")
	c := rm.join("C", "c")

	// Exactly the limit is fine.
	a.send(strings.Repeat("x", 16) + "\r\n")
	rm.expect("B: <a> "+strings.Repeat("x", 16)+"\r\n", "C: <a> "+strings.Repeat("x", 16)+"\r\n")
	// One byte more closes that connection only, with no message; the
	// lines after it in the chunk are lost too.
	a.send("fine\r\n" + strings.Repeat("y", 17) + "\r\nlost\r\n")
	rm.expect("B: <a> fine\r\n", "C: <a> fine\r\n")
	if !a.t.Disconnecting() {
		t.Fatal("a line over max_line_length did not close the connection")
	}
	// 16 bytes without a delimiter wait; 18 (limit + CRLF) unterminated close.
	b.send(strings.Repeat("z", 17))
	if b.t.Disconnecting() {
		t.Fatal("17 bytes without CRLF closed the connection (the limit counts the delimiter in)")
	}
	b.send("z")
	if !b.t.Disconnecting() {
		t.Fatal("18 bytes without CRLF did not close the connection")
	}
	rm.expect()
	if c.t.Disconnecting() {
		t.Fatal("another user was closed")
	}
	a.leave()
	b.leave()
	if rm.users() != 1 {
		t.Fatalf("users %v, want 1", rm.users())
	}
	// A long name closes too (it is a line).
	n := rm.connect("N")
	n.send(strings.Repeat("n", 17) + "\r\n")
	if !n.t.Disconnecting() {
		t.Fatal("a name line over max_line_length did not close the connection")
	}
	rm.expect()
	n.leave()
	c.leave()
}

// TestProtocolConcurrentRegistration: of many users racing for one name,
// exactly one gets it; the gauge counts users, and every user hears every
// other user's line once.
func TestProtocolConcurrentRegistration(t *testing.T) {
	rm := newRoom(t, "unit-race", "")
	const n = 64
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = rm.connect(fmt.Sprint(i))
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.send("same\r\n")
		}()
	}
	wg.Wait()
	winners := 0
	for _, c := range clients {
		switch got := c.t.Take(); got {
		case "Welcome, same!\r\n":
			winners++
		case "Name taken, please choose another.\r\n":
			c.send("u" + c.id + "\r\n")
			if got := c.t.Take(); got != "Welcome, u"+c.id+"!\r\n" {
				t.Fatalf("%s: %q", c.id, got)
			}
		default:
			t.Fatalf("%s: %q", c.id, got)
		}
	}
	if winners != 1 {
		t.Fatalf("%d users got the name, want 1", winners)
	}
	if rm.users() != n {
		t.Fatalf("users %v, want %d", rm.users(), n)
	}
	rm.rec.take()
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.send("from " + c.id + "\r\n")
		}()
	}
	wg.Wait()
	for _, c := range clients {
		got := c.t.Take()
		if k := strings.Count(got, "\r\n"); k != n-1 {
			t.Fatalf("%s heard %d lines, want %d", c.id, k, n-1)
		}
	}
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.leave()
		}()
	}
	wg.Wait()
	if rm.users() != 0 {
		t.Fatalf("users %v after everyone left", rm.users())
	}
}

// TestUsersGaugePerService: two rooms count their own users.
func TestUsersGaugePerService(t *testing.T) {
	r1 := newRoom(t, "unit-gauge-1", "")
	r2 := newRoom(t, "unit-gauge-2", "")
	a := r1.join("A", "same")
	b := r2.join("B", "same") // another room: the name is free there
	c := r2.join("C", "c")
	if r1.users() != 1 || r2.users() != 2 {
		t.Fatalf("users %v and %v, want 1 and 2", r1.users(), r2.users())
	}
	a.send("hi\r\n")
	r2.expect()
	for _, c := range []*client{a, b, c} {
		c.leave()
	}
	if r1.users() != 0 || r2.users() != 0 {
		t.Fatalf("users %v and %v after leaving", r1.users(), r2.users())
	}
}

// TestWelcomeBeforeOthersLines: the seed's transcript starts with
// "Welcome, NAME!": a line another user sends (here, or on another node)
// the moment the name is registered comes after it, never before.
func TestWelcomeBeforeOthersLines(t *testing.T) {
	rm := newRoom(t, "unit-welcome", "")
	alice := rm.join("A", "alice")
	testHookRegistered = func(*User) {
		alice.send("hi\r\n") // alice speaks as bob's name is registered
	}
	t.Cleanup(func() { testHookRegistered = nil })
	bob := rm.connect("B")
	bob.send("bob\r\n")
	if got := bob.t.Take(); got != "Welcome, bob!\r\n<alice> hi\r\n" {
		t.Fatalf("bob got %q, want the welcome first", got)
	}
}
