package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func listen(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go acceptLoop(ln, serve)
	return ln.Addr().String()
}

type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &client{t, c, bufio.NewReader(c)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) expect(want string) {
	c.t.Helper()
	got, err := c.r.ReadString('\n')
	if err != nil || got != want {
		c.t.Fatalf("got %q (%v), want %q", got, err, want)
	}
}

// The chat speaks superd's protocol byte for byte.
func TestChat(t *testing.T) {
	addr := listen(t, (&chatRoom{users: map[string]*chatUser{}}).serve)
	alice, bob := dial(t, addr), dial(t, addr)
	alice.expect("What's your name?\r\n")
	alice.send("alice\r\n")
	alice.expect("Welcome, alice!\r\n")
	bob.expect("What's your name?\r\n")
	bob.send("alice\r\n")
	bob.expect("Name taken, please choose another.\r\n")
	bob.send("\r\n")
	bob.expect("Invalid name, please choose another.\r\n")
	bob.send("b\x01b\r\n")
	bob.expect("Invalid name, please choose another.\r\n")
	bob.send("bob\r\n")
	bob.expect("Welcome, bob!\r\n")
	bob.send("hi there\r\nsecond\r\n")
	alice.expect("<bob> hi there\r\n")
	alice.expect("<bob> second\r\n")
	alice.send("a\nb\r\n") // a bare LF is part of the line
	bob.expect("<alice> a\n")
	bob.expect("b\r\n")
}

func TestChatLongLineCloses(t *testing.T) {
	addr := listen(t, (&chatRoom{users: map[string]*chatUser{}}).serve)
	c := dial(t, addr)
	c.expect("What's your name?\r\n")
	c.send(strings.Repeat("x", maxLineLength+1) + "\r\n")
	if b, err := io.ReadAll(c.r); err != nil || len(b) != 0 {
		t.Fatalf("read %q, %v; want EOF", b, err)
	}
}

func TestScanCRLF(t *testing.T) {
	for _, c := range []struct {
		in      string
		atEOF   bool
		adv     int
		tok     string
		tooLong bool
	}{
		{"abc\r\ndef", false, 5, "abc", false},
		{"abc\ndef", false, 0, "", false},
		{"\r\n", false, 2, "", false},
		{"partial", true, 7, "", false},
		{strings.Repeat("x", maxLineLength) + "\r\n", false, maxLineLength + 2, strings.Repeat("x", maxLineLength), false},
		{strings.Repeat("x", maxLineLength+1) + "\r\n", false, 0, "", true},
		{strings.Repeat("x", maxLineLength+2), false, 0, "", true},
	} {
		adv, tok, err := scanCRLF([]byte(c.in), c.atEOF)
		if (err == errLineTooLong) != c.tooLong || adv != c.adv || string(tok) != c.tok {
			t.Errorf("scanCRLF(%.20q, %v) = %d, %.20q, %v", c.in, c.atEOF, adv, tok, err)
		}
	}
}

func TestEchoAndTLSEcho(t *testing.T) {
	for _, splice := range []bool{false, true} {
		serve := echoConn
		if splice {
			serve = spliceEchoConn
		}
		c := dial(t, listen(t, serve))
		msg := strings.Repeat("0123456789", 10000)
		go c.send(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c.r, got); err != nil || string(got) != msg {
			t.Fatalf("splice %v: echo differs (%v)", splice, err)
		}
	}
	cert, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go acceptLoop(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}), echoConn)
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(tc, "hello\r\n")
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil || line != "hello\r\n" {
		t.Fatalf("TLS echo: %q, %v", line, err)
	}
}

// The exec service answers each connection with the program's output on the
// socket itself, and reaps every child: once the clients are done, the test
// process has no child left, not even a zombie, and no serving goroutine.
func TestExec(t *testing.T) {
	for _, p := range []string{"/bin/echo", "/bin/cat", "/bin/sh"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s: %v", p, err)
		}
	}
	const q = "An apple a day keeps the doctor away"
	goroutines := runtime.NumGoroutine()
	addr := listen(t, execConn([]string{"/bin/echo", q}))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range cap(errs) {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if b, err := io.ReadAll(c); err != nil || string(b) != q+"\n" {
				errs <- fmt.Errorf("read %q, %v; want %q then EOF", b, err, q+"\n")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// The child's stdin is the socket too: cat echoes what it reads until
	// the client's half-close.
	c := dial(t, listen(t, execConn([]string{"/bin/cat"})))
	c.send("hello\r\nworld\n")
	c.c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c.r); err != nil || string(b) != "hello\r\nworld\n" {
		t.Fatalf("cat: read %q, %v", b, err)
	}
	c.c.Close()

	// The child's environment is execEnv alone, not the server's.
	t.Setenv("LANG", "C.UTF-8")
	c = dial(t, listen(t, execConn([]string{"/bin/sh", "-c", "export"})))
	if b, err := io.ReadAll(c.r); err != nil || strings.Contains(string(b), "LANG") || !strings.Contains(string(b), execEnv[0][len("PATH="):]) {
		t.Fatalf("environment %q, %v; want %v", b, err, execEnv)
	}
	c.c.Close()

	// The server closes a connection only after Wait, so no child should
	// be left by now; poll in case, with a deadline.
	deadline := time.Now().Add(10 * time.Second)
	for {
		kids, err := children(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if len(kids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("children left (pid state): %v", kids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Every serving goroutine has returned: what is left are the three
	// accept loops (closed at cleanup).
	for runtime.NumGoroutine() > goroutines+3 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// children lists the processes whose parent is pid, as "PID STATE" (a
// zombie's state is Z), from /proc/*/stat.
func children(pid int) ([]string, error) {
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return nil, err
	}
	var kids []string
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		// "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
			kids = append(kids, strings.Fields(string(b))[0]+" "+f[0])
		}
	}
	return kids, nil
}

// UDP echo answers every datagram to its own sender, whatever its size up
// to the largest UDP payload, and stops when its socket is closed.
func TestUDPEcho(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { udpEcho(pc); close(done) }()

	var clients []*net.UDPConn
	for range 2 {
		c, err := net.DialUDP("udp", nil, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	// A datagram can be lost, even on loopback: each is sent again until
	// it comes back, within the deadline.
	deadline := time.Now().Add(10 * time.Second)
	roundTrip := func(c *net.UDPConn, msg []byte) {
		t.Helper()
		buf := make([]byte, 65536)
		for {
			if time.Now().After(deadline) {
				t.Fatalf("no echo of %d bytes", len(msg))
			}
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.Read(buf)
			if isTimeout(err) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], msg) {
				t.Fatalf("sent %d bytes %.20q, got %d bytes %.20q", len(msg), msg, n, buf[:n])
			}
			return
		}
	}
	big := bytes.Repeat([]byte("0123456789"), 6551)
	for i, msg := range [][]byte{[]byte("hello"), {}, []byte("a second client"), big[:1500], big[:65507]} {
		roundTrip(clients[i%2], msg)
	}
	// Both clients at once: each gets its own datagrams back.
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			for k := range 100 {
				roundTrip(c, fmt.Appendf(nil, "client %d datagram %d", i, k))
			}
		})
	}
	wg.Wait()

	pc.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("udpEcho did not return after its socket was closed")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
