package basic

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/superd-dev/superd/framework"
)

// greeter is the way service authors are meant to use a receiver: embed it,
// call Init from ConnectionMade, implement LineReceived.
type greeter struct {
	LineReceiver
	names [][]byte
}

func (g *greeter) ConnectionMade(t framework.Transport) {
	g.LineReceiver.Init(t, g)
	g.SendLine([]byte("What's your name?"))
}

func (g *greeter) LineReceived(line []byte) {
	g.names = append(g.names, bytes.Clone(line))
	g.SendLine(append([]byte("Welcome, "), line...))
}

var _ framework.Protocol = (*greeter)(nil)

func TestEmbeddedLineReceiverIsAProtocol(t *testing.T) {
	var p framework.Protocol = &greeter{}
	tr := &fakeTransport{}
	p.ConnectionMade(tr)
	p.DataReceived([]byte("bob\r\nal"))
	p.DataReceived([]byte("ice\r\n"))
	p.ConnectionLost(framework.ErrConnectionDone)
	want := "What's your name?\r\nWelcome, bob\r\nWelcome, alice\r\n"
	if got := string(tr.Written()); got != want {
		t.Errorf("wrote %q, want %q", got, want)
	}
	if len(tr.Writes()) != 3 {
		t.Errorf("%d writes, want one per line", len(tr.Writes()))
	}
}

func TestSettingsBeforeAndAfterInit(t *testing.T) {
	tr := &fakeTransport{}
	out := &outcome{}
	r := &LineReceiver{Delimiter: []byte("|")}
	r.Init(tr, &lineCollect{out: out, tr: tr})
	r.DataReceived([]byte("a|b\r\n|"))
	r.Delimiter = nil // back to the default
	r.MaxLength = 3
	r.DataReceived([]byte("cd\r\nlong\r\n"))
	want := [][]byte{[]byte("a"), []byte("b\r\n"), []byte("cd")}
	if !equalMessages(out.messages, want) {
		t.Errorf("messages %q, want %q", out.messages, want)
	}
	if !closed(tr) {
		t.Error("line over the new MaxLength did not close")
	}
}

func TestSetLineModeOutsideCallbackParsesAtOnce(t *testing.T) {
	tr := &fakeTransport{}
	out := &outcome{}
	r := &LineReceiver{}
	h := &lineModeSwitch{out: out, api: r}
	r.Init(tr, h)
	r.DataReceived([]byte("RAW\r\n"))
	r.DataReceived([]byte("xy"))
	// From outside any callback (a timer, say): buffer + extra is parsed.
	r.SetLineMode([]byte("one\r\ntwo"))
	want := [][]byte{[]byte("L:RAW"), []byte("R:xy"), []byte("L:one")}
	if !equalMessages(out.messages, want) {
		t.Errorf("messages %q, want %q", out.messages, want)
	}
	if got := r.ClearLineBuffer(); string(got) != "two" {
		t.Errorf("ClearLineBuffer() = %q, want %q", got, "two")
	}
	if got := r.ClearLineBuffer(); len(got) != 0 {
		t.Errorf("second ClearLineBuffer() = %q, want empty", got)
	}
}

func TestRawModeWithoutRawHandlerPanics(t *testing.T) {
	r := &LineReceiver{}
	r.Init(&fakeTransport{}, &lineCollect{out: &outcome{}})
	r.SetRawMode()
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
		// The receiver is usable again (busy was cleared).
		r.SetLineMode(nil)
		r.DataReceived([]byte("x\r\n"))
	}()
	r.DataReceived([]byte("data"))
}

func TestDataReceivedBeforeInitPanics(t *testing.T) {
	for name, r := range map[string]receiver{
		"LineReceiver":        &LineReceiver{},
		"LineOnlyReceiver":    &LineOnlyReceiver{},
		"NetstringReceiver":   &NetstringReceiver{},
		"Int16StringReceiver": &Int16StringReceiver{},
	} {
		func() {
			defer func() {
				if v := recover(); v == nil || !strings.Contains(v.(string), "before Init") {
					t.Errorf("%s: recovered %v, want a 'before Init' panic", name, v)
				}
			}()
			r.DataReceived([]byte("x"))
		}()
	}
}

func TestPauseResumeDrivesTransport(t *testing.T) {
	tr := &fakeTransport{}
	out := &outcome{}
	r := &LineReceiver{}
	r.Init(tr, &lineCollect{out: out, tr: tr})
	r.PauseProducing()
	if !tr.Paused() || !r.Paused() {
		t.Fatal("PauseProducing did not pause receiver and transport")
	}
	r.DataReceived([]byte("a\r\nb\r\n"))
	if len(out.messages) != 0 {
		t.Fatalf("delivered %q while paused", out.messages)
	}
	r.ResumeProducing()
	if tr.Paused() || r.Paused() || tr.Resumes() != 1 {
		t.Fatal("ResumeProducing did not resume receiver and transport")
	}
	if len(out.messages) != 2 {
		t.Fatalf("resume delivered %q, want both lines", out.messages)
	}
}

func TestStopProducingIsFinal(t *testing.T) {
	tr := &fakeTransport{}
	out := &outcome{}
	r := &Int8StringReceiver{}
	r.Init(tr, &stringCollect{out: out, tr: tr})
	r.StopProducing()
	if !closed(tr) || !r.Paused() {
		t.Fatal("StopProducing did not pause and close")
	}
	r.DataReceived([]byte("\x01a"))
	r.ResumeProducing()
	if len(out.messages) != 0 || !r.Paused() {
		t.Errorf("after StopProducing: messages %q, paused %v", out.messages, r.Paused())
	}
}

// reentrant calls DataReceived on its own receiver from the callback that
// gets "go", and records everything.
type reentrant struct {
	out  *outcome
	recv receiver
}

func (h *reentrant) record(m []byte) {
	h.out.messages = append(h.out.messages, bytes.Clone(m))
}

func (h *reentrant) LineReceived(line []byte) {
	h.record(line)
	if string(line) == "go" {
		h.recv.DataReceived([]byte("late\r\n"))
	}
}

func (h *reentrant) StringReceived(s []byte) {
	h.record(s)
	if string(s) == "go" {
		h.recv.DataReceived([]byte("\x04late"))
	}
}

func TestReentrantDataReceivedIsQueued(t *testing.T) {
	want := [][]byte{[]byte("go"), []byte("next"), []byte("late")}
	tests := []struct {
		name  string
		recv  func(h *reentrant) receiver
		input string
	}{
		{"LineReceiver", func(h *reentrant) receiver {
			r := &LineReceiver{}
			r.Init(&fakeTransport{}, h)
			return r
		}, "go\r\nnext\r\n"},
		{"LineOnlyReceiver", func(h *reentrant) receiver {
			r := &LineOnlyReceiver{}
			r.Init(&fakeTransport{}, h)
			return r
		}, "go\r\nnext\r\n"},
		{"Int8StringReceiver", func(h *reentrant) receiver {
			r := &Int8StringReceiver{}
			r.Init(&fakeTransport{}, h)
			return r
		}, "\x02go\x04next"},
	}
	for _, tt := range tests {
		h := &reentrant{out: &outcome{}}
		h.recv = tt.recv(h)
		h.recv.DataReceived([]byte(tt.input))
		if !equalMessages(h.out.messages, want) {
			t.Errorf("%s: messages %q, want %q", tt.name, h.out.messages, want)
		}
	}

	// Netstrings: the nested data goes after the rest of the chunk too.
	h := &reentrant{out: &outcome{}}
	r := &NetstringReceiver{}
	r.Init(&fakeTransport{}, nsReentrant{h, r})
	r.DataReceived([]byte("2:go,4:next,"))
	if !equalMessages(h.out.messages, want) {
		t.Errorf("NetstringReceiver: messages %q, want %q", h.out.messages, want)
	}
}

type nsReentrant struct {
	h *reentrant
	r *NetstringReceiver
}

func (n nsReentrant) StringReceived(s []byte) {
	n.h.record(s)
	if string(s) == "go" {
		n.r.DataReceived([]byte("4:late,"))
	}
}

// keeper checks that slices it is given stay intact while it feeds the
// receiver from inside the callback.
type keeper struct {
	t    *testing.T
	r    *LineReceiver
	seen int
}

func (k *keeper) LineReceived(line []byte) {
	want := bytes.Clone(line)
	k.seen++
	if k.seen <= 3 {
		// Enough to force the buffer to grow and (if it were allowed)
		// compact.
		k.r.DataReceived(bytes.Repeat([]byte("z"), 3000))
		k.r.DataReceived([]byte("\r\n"))
	}
	if !bytes.Equal(line, want) {
		k.t.Errorf("line changed under the callback: %s, was %s", short([][]byte{line}), short([][]byte{want}))
	}
	if k.seen == 3 {
		k.r.SetRawMode()
	}
}

func (k *keeper) RawDataReceived(data []byte) {
	want := bytes.Clone(data)
	k.r.SetLineMode(data[len(data)/2:])
	k.r.DataReceived(bytes.Repeat([]byte("y"), 5000))
	k.r.DataReceived([]byte("\r\n"))
	if !bytes.Equal(data, want) {
		k.t.Errorf("raw data changed under the callback")
	}
}

func TestCallbackSlicesStayValidDuringCallback(t *testing.T) {
	tr := &fakeTransport{}
	r := &LineReceiver{MaxLength: 1 << 20}
	k := &keeper{t: t, r: r}
	r.Init(tr, k)
	r.DataReceived([]byte("first\r\nsecond\r\npartial"))
	r.DataReceived([]byte(" line\r\n"))
	if k.seen < 6 {
		t.Fatalf("only %d lines seen", k.seen)
	}
}

func TestIntNOverflowDropsBuffer(t *testing.T) {
	tr := &fakeTransport{}
	out := &outcome{}
	r := &Int8StringReceiver{MaxLength: 10}
	r.Init(tr, &stringCollectExceeded{stringCollect{out: out, tr: tr}})
	r.DataReceived([]byte("\x01a\x0bxxxx"))
	r.DataReceived([]byte("\x01b"))
	// Twisted would deliver "a" again here and call the hook again.
	want := [][]byte{[]byte("a"), []byte("b")}
	if !equalMessages(out.messages, want) || len(out.exceededLengths) != 1 || out.exceededLengths[0] != 11 {
		t.Errorf("messages %q, exceeded %v; want %q, [11]", out.messages, out.exceededLengths, want)
	}
	if closed(tr) {
		t.Error("closed although the hook does not close")
	}
}

func TestNetstringStaysBroken(t *testing.T) {
	tr := &fakeTransport{}
	out := &outcome{}
	r := &NetstringReceiver{}
	r.Init(tr, &stringCollect{out: out, tr: tr})
	r.DataReceived([]byte("1:a,x"))
	if !r.Broken() || tr.Lost() != 1 {
		t.Fatalf("broken %v, LoseConnection calls %d", r.Broken(), tr.Lost())
	}
	r.DataReceived([]byte("1:b,"))
	if len(out.messages) != 1 || tr.Lost() != 2 {
		t.Errorf("after the error: messages %q, LoseConnection calls %d (want [a], 2)", out.messages, tr.Lost())
	}
	// Init starts over.
	r.Init(tr, &stringCollect{out: out, tr: tr})
	r.DataReceived([]byte("1:c,"))
	if r.Broken() || len(out.messages) != 2 {
		t.Errorf("after Init: broken %v, messages %q", r.Broken(), out.messages)
	}
}

func TestNetstringHugeMaxLength(t *testing.T) {
	for _, in := range []string{"99999999999999999999999:", "18446744073709551615:", "9223372036854775807:"} {
		tr := &fakeTransport{}
		r := &NetstringReceiver{MaxLength: math.MaxInt}
		r.Init(tr, &stringCollect{out: &outcome{}, tr: tr})
		r.DataReceived([]byte(in)) // must not overflow or try to allocate
		if !closed(tr) {
			t.Errorf("%s: not refused", in)
		}
	}
}

func TestLineOnlyExceededRemainderStaysBuffered(t *testing.T) {
	tr := &fakeTransport{}
	out := &outcome{}
	r := &LineOnlyReceiver{MaxLength: 3}
	r.Init(tr, &lineCollectExceeded{lineCollect{out: out, tr: tr}})
	r.DataReceived([]byte("ok\r\nabcd"))
	r.DataReceived([]byte("e"))
	r.DataReceived([]byte("\r\nx\r\n"))
	wantEx := [][]byte{[]byte("abcd"), []byte("abcde"), []byte("abcde")}
	if !equalMessages(out.exceeded, wantEx) {
		t.Errorf("exceeded %q, want %q", out.exceeded, wantEx)
	}
	if want := [][]byte{[]byte("ok")}; !equalMessages(out.messages, want) {
		t.Errorf("messages %q, want %q", out.messages, want)
	}
}

func TestLargeBufferIsReleased(t *testing.T) {
	tr := &fakeTransport{}
	r := &LineReceiver{}
	r.Init(tr, &lineCollect{out: &outcome{}, tr: tr})
	r.PauseProducing()
	r.DataReceived(bytes.Repeat([]byte("a\r\n"), 100000))
	r.ResumeProducing()
	if c := cap(r.in.buf); c > maxRetained {
		t.Errorf("buffer capacity %d kept after it emptied", c)
	}
}

func TestSendStringTooLong(t *testing.T) {
	tr := &fakeTransport{}
	r := &Int16StringReceiver{}
	r.Init(tr, &stringCollect{})
	err := r.SendString(make([]byte, 65536))
	if !errors.Is(err, ErrStringTooLong) || !strings.Contains(err.Error(), "65535") {
		t.Errorf("error %v", err)
	}
	if len(tr.Writes()) != 0 {
		t.Error("wrote something")
	}
}

func TestConcurrentSendsKeepFramesWhole(t *testing.T) {
	tr := &fakeTransport{} // safe for concurrent writers
	lr := &LineReceiver{}
	lr.Init(tr, &lineCollect{})
	ns := &NetstringReceiver{}
	ns.Init(tr, &stringCollect{})
	in := &Int32StringReceiver{}
	in.Init(tr, &stringCollect{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			msg := bytes.Repeat([]byte{'a' + byte(g)}, 100*(g+1))
			for range 200 {
				lr.SendLine(msg)
				ns.SendString(msg)
				if err := in.SendString(msg); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for _, w := range tr.Writes() {
		body := w
		switch {
		case bytes.HasSuffix(w, []byte("\r\n")):
			body = w[:len(w)-2]
		case bytes.HasSuffix(w, []byte(",")):
			body = w[bytes.IndexByte(w, ':')+1 : len(w)-1]
		default:
			body = w[4:]
		}
		if len(body) == 0 || len(body)%100 != 0 || bytes.Count(body, body[:1]) != len(body) {
			t.Fatalf("torn frame %q", w)
		}
	}
	if len(tr.Writes()) != 8*200*3 {
		t.Errorf("%d writes, want %d", len(tr.Writes()), 8*200*3)
	}
}

// nopTransport discards everything, at no cost, so that allocation counts
// and benchmarks measure the receivers alone.
type nopTransport struct{ fakeTransport }

func (*nopTransport) Write([]byte) {}

type countLines struct{ n int }

func (c *countLines) LineReceived([]byte)   { c.n++ }
func (c *countLines) StringReceived([]byte) { c.n++ }

func TestSteadyStateDoesNotAllocate(t *testing.T) {
	lines := bytes.Repeat([]byte("a line of moderate length, thirty-odd bytes\r\n"), 100)
	tr := &nopTransport{}
	c := &countLines{}

	lr := &LineReceiver{}
	lr.Init(tr, c)
	check := func(name string, f func()) {
		t.Helper()
		f() // warm up: buffers reach their steady size
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", name, n)
		}
	}
	check("LineReceiver aligned chunks", func() { lr.DataReceived(lines) })
	if c.n == 0 {
		t.Fatal("no lines delivered")
	}
	check("LineReceiver misaligned chunks", func() {
		lr.DataReceived(lines[:1001])
		lr.DataReceived(lines[1001:2002])
		lr.DataReceived(lines[2002:])
	})
	lo := &LineOnlyReceiver{}
	lo.Init(tr, c)
	check("LineOnlyReceiver", func() {
		lo.DataReceived(lines[:1001])
		lo.DataReceived(lines[1001:])
	})
	check("SendLine", func() { lr.SendLine(lines[:40]) })

	payload := []byte("a string of thirty-one bytes...")
	var nsIn []byte
	ns := &NetstringReceiver{}
	for range 100 {
		nsIn = append(nsIn, "31:"...)
		nsIn = append(append(nsIn, payload...), ',')
	}
	ns.Init(tr, c)
	check("NetstringReceiver", func() {
		ns.DataReceived(nsIn[:1001])
		ns.DataReceived(nsIn[1001:])
	})
	check("Netstring SendString", func() { ns.SendString(lines[:40]) })

	i32 := &Int32StringReceiver{}
	i32.Init(tr, c)
	var i32In []byte
	for range 100 {
		i32In = append(append(i32In, 0, 0, 0, 31), payload...)
	}
	check("Int32StringReceiver", func() {
		i32.DataReceived(i32In[:1001])
		i32.DataReceived(i32In[1001:])
	})
	check("Int32 SendString", func() {
		if err := i32.SendString(lines[:40]); err != nil {
			t.Fatal(err)
		}
	})
}
