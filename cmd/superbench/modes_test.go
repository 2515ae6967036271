package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Each mode runs briefly against a small in-test server, once well served
// and once served wrong, to check that verification catches the fault. No
// test depends on how fast anything is.

// serve runs handle for every connection of a fresh loopback listener.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { defer c.Close(); handle(c) })
		}
	})
	return ln.Addr().String()
}

func echoHandler(c net.Conn) { io.Copy(c, c) }

// corruptingEcho flips one bit of the nth byte it echoes.
func corruptingEcho(nth int64) func(net.Conn) {
	var total atomic.Int64
	return func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				end := total.Add(int64(n))
				if start := end - int64(n); start <= nth && nth < end {
					buf[nth-start] ^= 0x10
				}
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
}

func qotdHandler(quote string) func(net.Conn) {
	return func(c net.Conn) { io.WriteString(c, quote) }
}

// chatHandler is a minimal chat room; dropTo, if set, is a user that never
// gets the line with sequence number dropSeq.
func chatHandler(dropTo string, dropSeq int) func(net.Conn) {
	var mu sync.Mutex
	var users []*struct {
		name string
		c    net.Conn
	}
	return func(c net.Conn) {
		r := bufio.NewReader(c)
		io.WriteString(c, "What's your name?\r\n")
		name, err := r.ReadString('\n')
		if err != nil {
			return
		}
		name = strings.TrimSuffix(name, "\r\n")
		mu.Lock()
		users = append(users, &struct {
			name string
			c    net.Conn
		}{name, c})
		mu.Unlock()
		io.WriteString(c, "Welcome, "+name+"!\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			text := strings.TrimSuffix(line, "\r\n")
			seq, _, _ := strings.Cut(text, " ")
			mu.Lock()
			for _, u := range users {
				if u.c != c && !(u.name == dropTo && seq == strconv.Itoa(dropSeq)) {
					io.WriteString(u.c, "<"+name+"> "+text+"\r\n")
				}
			}
			mu.Unlock()
		}
	}
}

// bench runs superbench with args and returns its JSON result.
func bench(t *testing.T, args ...string) Result {
	t.Helper()
	var out bytes.Buffer
	code := run(append(args, "-timeout", "2s"), &out, io.Discard)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("superbench %v: output %q", args, out.String())
	}
	var r Result
	if err := json.Unmarshal([]byte(lines[1]), &r); err != nil {
		t.Fatalf("JSON line %q: %v", lines[1], err)
	}
	if (code == 0) != (r.Errors == 0) {
		t.Errorf("exit status %d with %d errors", code, r.Errors)
	}
	t.Logf("%s", lines[0])
	return r
}

func TestEchoMode(t *testing.T) {
	addr := serve(t, echoHandler)
	r := bench(t, "echo", "-addr", addr, "-conns", "4", "-size", "100", "-count", "50", "-label", "x")
	if r.Errors != 0 || r.Ops != 200 || r.Mode != "echo" || r.Label != "x" || r.Conns != 4 || r.Size != 100 {
		t.Fatalf("%+v", r)
	}
	if r.P50Us <= 0 || r.P99Us < r.P50Us || r.P999Us < r.P99Us || r.MsgsPerS <= 0 {
		t.Fatalf("latencies or rate missing: %+v", r)
	}
	// Larger than the socket buffers: written from a second goroutine.
	r = bench(t, "echo", "-addr", addr, "-conns", "2", "-size", "300000", "-count", "3")
	if r.Errors != 0 || r.Ops != 6 {
		t.Fatalf("%+v", r)
	}
	bad := serve(t, corruptingEcho(1234))
	r = bench(t, "echo", "-addr", bad, "-conns", "1", "-size", "100", "-count", "50")
	if r.Errors == 0 || !strings.Contains(r.FirstError, "differs at byte 34") {
		t.Fatalf("corruption not caught: %+v", r)
	}
}

func TestStreamMode(t *testing.T) {
	r := bench(t, "stream", "-addr", serve(t, echoHandler), "-conns", "3", "-size", "10000", "-duration", "100ms")
	if r.Errors != 0 || r.Ops == 0 || r.MBPerS <= 0 {
		t.Fatalf("%+v", r)
	}
	r = bench(t, "stream", "-addr", serve(t, corruptingEcho(200000)), "-conns", "1", "-duration", "200ms")
	if r.Errors == 0 {
		t.Fatalf("corruption not caught: %+v", r)
	}
}

func TestConnrateMode(t *testing.T) {
	const q = "An apple a day keeps the doctor away"
	addr := serve(t, qotdHandler(q+"\r\n"))
	r := bench(t, "connrate", "-addr", addr, "-conns", "2", "-duration", "100ms", "-expect", q)
	if r.Errors != 0 || r.Ops == 0 || r.ConnsPerS <= 0 {
		t.Fatalf("%+v", r)
	}
	r = bench(t, "connrate", "-addr", addr, "-conns", "1", "-duration", "50ms") // any line
	if r.Errors != 0 || r.Ops == 0 {
		t.Fatalf("%+v", r)
	}
	r = bench(t, "connrate", "-addr", serve(t, qotdHandler(q+"\n")), "-conns", "1", "-duration", "50ms")
	if r.Errors == 0 || r.Ops != 0 {
		t.Fatalf("bare LF not caught: %+v", r)
	}
	// -eol lf: a program such as /bin/echo ends its line with a bare LF.
	lf := serve(t, qotdHandler(q+"\n"))
	r = bench(t, "connrate", "-addr", lf, "-conns", "2", "-duration", "100ms", "-expect", q, "-eol", "lf")
	if r.Errors != 0 || r.Ops == 0 {
		t.Fatalf("-eol lf: %+v", r)
	}
	r = bench(t, "connrate", "-addr", addr, "-conns", "1", "-duration", "50ms", "-expect", q, "-eol", "lf")
	if r.Errors == 0 || r.Ops != 0 {
		t.Fatalf("-eol lf: CRLF not caught: %+v", r)
	}
	var out bytes.Buffer
	if code := run([]string{"connrate", "-addr", lf, "-eol", "cr"}, &out, &out); code != 2 || !strings.Contains(out.String(), "-eol must be crlf or lf") {
		t.Fatalf("-eol cr: exit %d, %q", code, out.String())
	}
}

func TestIdleMode(t *testing.T) {
	addr := serve(t, echoHandler)
	r := bench(t, "idle", "-addr", addr, "-conns", "20", "-settle", "10ms", "-pid", strconv.Itoa(os.Getpid()))
	if r.Errors != 0 || r.Alive != 20 || r.RSSBeforeBytes <= 0 || r.RSSAfterBytes <= 0 {
		t.Fatalf("%+v", r)
	}
	// A server that takes connections but never answers: none is alive.
	mute := serve(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	r = bench(t, "idle", "-addr", mute, "-conns", "3", "-settle", "10ms")
	if r.Errors != 3 || r.Alive != 0 {
		t.Fatalf("%+v", r)
	}
}

func TestChatMode(t *testing.T) {
	r := bench(t, "chat", "-addr", serve(t, chatHandler("", 0)), "-conns", "5", "-lines", "10", "-rounds", "3", "-size", "30")
	if r.Errors != 0 || r.Ops != 3*10*4 || r.DeliveriesPerS <= 0 {
		t.Fatalf("%+v", r)
	}
	r = bench(t, "chat", "-addr", serve(t, chatHandler("u00003", 14)), "-conns", "5", "-lines", "10", "-rounds", "3")
	if r.Errors == 0 || !strings.Contains(r.FirstError, "line 15 arrived when 14 was due") {
		t.Fatalf("lost line not caught: %+v", r)
	}
}

// TestChatAcrossNodes: with several targets (one room served on three
// listeners here), users spread over them and the remote latency is
// reported apart.
func TestChatAcrossNodes(t *testing.T) {
	room := chatHandler("", 0)
	addrs := []string{serve(t, room), serve(t, room), serve(t, room)}
	r := bench(t, "chat", "-addr", strings.Join(addrs, ","), "-conns", "7", "-lines", "10", "-rounds", "3")
	if r.Errors != 0 || r.Ops != 3*10*6 || r.Nodes != 3 || r.RemoteP99Us <= 0 || r.RemoteP50Us > r.RemoteP99Us {
		t.Fatalf("%+v", r)
	}
	if code := run([]string{"echo", "-addr", addrs[0] + "," + addrs[1], "-count", "1"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("echo with two targets: exit status %d", code)
	}
	if code := run([]string{"chat", "-addr", addrs[0] + ",192.0.2.1:7"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("a non-loopback second target: exit status %d", code)
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	if code := run([]string{"echo", "-addr", "192.0.2.1:7", "-count", "1"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("exit status %d", code)
	}
}

// serveUDP runs handle for every datagram of a fresh loopback UDP socket;
// handle answers through reply.
func serveUDP(t *testing.T, handle func(n int, msg []byte, reply func([]byte))) string {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 65536)
		for n := 0; ; n++ {
			k, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			handle(n, buf[:k], func(b []byte) { pc.WriteToUDP(b, from) })
		}
	})
	return pc.LocalAddr().String()
}

func udpEcho(_ int, msg []byte, reply func([]byte)) { reply(msg) }

func TestUDPMode(t *testing.T) {
	// Where no loss is expected, a slow machine must not make one.
	const patient = "5s"
	addr := serveUDP(t, udpEcho)
	r := bench(t, "udp", "-addr", addr, "-conns", "4", "-size", "100", "-count", "50", "-label", "x", "-lost-after", patient)
	if r.Errors != 0 || r.Ops != 200 || r.Sent != 200 || r.Lost != 0 || r.Mode != "udp" || r.Label != "x" || r.Conns != 4 || r.Size != 100 {
		t.Fatalf("%+v", r)
	}
	if r.P50Us <= 0 || r.P99Us < r.P50Us || r.P999Us < r.P99Us || r.MsgsPerS <= 0 {
		t.Fatalf("latencies or rate missing: %+v", r)
	}
	r = bench(t, "udp", "-addr", addr, "-conns", "2", "-size", "8", "-duration", "100ms", "-lost-after", patient)
	if r.Errors != 0 || r.Ops == 0 || r.MsgsPerS <= 0 {
		t.Fatalf("%+v", r)
	}

	// One bit flipped in the 20th datagram.
	bad := serveUDP(t, func(n int, msg []byte, reply func([]byte)) {
		if n == 19 {
			msg[34] ^= 0x10
		}
		reply(msg)
	})
	r = bench(t, "udp", "-addr", bad, "-conns", "1", "-size", "64", "-count", "50", "-lost-after", patient)
	if r.Errors == 0 || !strings.Contains(r.FirstError, "datagram 19 differs at byte 34") {
		t.Fatalf("corruption not caught: %+v", r)
	}
	// A datagram echoed one byte longer, or shorter.
	for _, d := range []int{1, -1} {
		odd := serveUDP(t, func(n int, msg []byte, reply func([]byte)) {
			if n == 3 {
				msg = append(msg, 'x')[:len(msg)+d]
			}
			reply(msg)
		})
		r = bench(t, "udp", "-addr", odd, "-conns", "1", "-size", "64", "-count", "10", "-lost-after", patient)
		if want := fmt.Sprintf("datagram 3 came back with %d bytes, sent 64", 64+d); r.Errors == 0 || !strings.Contains(r.FirstError, want) {
			t.Fatalf("length %+d not caught: %+v", d, r)
		}
	}

	// Every 10th datagram dropped: counted lost, and over 1% that fails
	// the run unless -max-lost allows it.
	lossy := serveUDP(t, func(n int, msg []byte, reply func([]byte)) {
		if n%10 != 9 {
			reply(msg)
		}
	})
	r = bench(t, "udp", "-addr", lossy, "-conns", "1", "-count", "50", "-lost-after", "20ms")
	if r.Lost != 5 || r.Ops != 45 || r.Sent != 50 || r.Errors != 1 || !strings.Contains(r.FirstError, "lost 5 of 50 datagrams (10.00%, more than -max-lost 1.00%)") {
		t.Fatalf("losses: %+v", r)
	}
	r = bench(t, "udp", "-addr", lossy, "-conns", "1", "-count", "50", "-lost-after", "20ms", "-max-lost", "0.1")
	if r.Lost != 5 || r.Ops != 45 || r.Errors != 0 {
		t.Fatalf("losses under -max-lost: %+v", r)
	}

	// The 5th echo arrives late, just before the 6th: it is counted lost,
	// then late, and not taken for the 6th.
	var held []byte
	late := serveUDP(t, func(n int, msg []byte, reply func([]byte)) {
		switch n {
		case 4:
			held = slices.Clone(msg)
		case 5:
			reply(held)
			reply(msg)
		default:
			reply(msg)
		}
	})
	r = bench(t, "udp", "-addr", late, "-conns", "1", "-count", "10", "-lost-after", "100ms", "-max-lost", "0.5")
	if r.Lost != 1 || r.Late != 1 || r.Ops != 9 || r.Errors != 0 {
		t.Fatalf("late echo: %+v", r)
	}

	// Nobody there: the kernel's port unreachable is an error.
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	r = bench(t, "udp", "-addr", closed, "-conns", "2", "-count", "5")
	if r.Errors != 2 || r.Ops != 0 || !strings.Contains(r.FirstError, "refused") {
		t.Fatalf("no server: %+v", r)
	}

	var out bytes.Buffer
	for _, args := range [][]string{{"-size", "7"}, {"-size", "65508"}, {"-lost-after", "0s"}, {"-max-lost", "2"}} {
		out.Reset()
		if code := run(append([]string{"udp", "-addr", addr}, args...), &out, &out); code != 2 {
			t.Errorf("%v: exit %d, %q", args, code, out.String())
		}
	}
	if code := run([]string{"udp", "-addr", "192.0.2.1:7", "-count", "1"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("non-loopback udp: exit status %d", code)
	}
}
