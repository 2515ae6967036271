// Command baseline is the yardstick of `make bench`: echo, qotd, chat, TLS
// echo and a program per connection written the way a competent Go
// programmer would write them with the standard library alone, one
// goroutine per connection; UDP echo is one goroutine reading with
// ReadFromUDP and answering with WriteToUDP. superd is measured against it.
//
//	baseline -echo 127.0.0.1:7007 -tls 127.0.0.1:7443 -qotd 127.0.0.1:8007 -chat 127.0.0.1:8123 [-exec 127.0.0.1:8079] [-udp 127.0.0.1:7007]
//
// An empty address leaves that service out. The chat speaks superd's chat
// protocol byte for byte (prompts, CRLF, "<name> line").
package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
)

func main() {
	echoAddr := flag.String("echo", "127.0.0.1:7007", "echo (RFC 862) listen address; empty: off")
	tlsAddr := flag.String("tls", "127.0.0.1:7443", "echo over TLS listen address (self-signed certificate); empty: off")
	qotdAddr := flag.String("qotd", "127.0.0.1:8007", "qotd (RFC 865) listen address; empty: off")
	chatAddr := flag.String("chat", "127.0.0.1:8123", "chat listen address; empty: off")
	execAddr := flag.String("exec", "", "fork-per-connection listen address: each connection runs /bin/echo QUOTE with the socket as its stdin and stdout; empty: off")
	udpAddr := flag.String("udp", "", "UDP echo listen address: one goroutine, ReadFromUDP then WriteToUDP; empty: off")
	quote := flag.String("quote", "An apple a day keeps the doctor away", "the quote of qotd")
	splice := flag.Bool("splice", false, "echo with io.CopyBuffer straight on the *net.TCPConn, which makes Go splice(2) through a pipe per connection (2 more fds each) instead of using the pooled buffer")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("baseline: ")
	raiseNoFile()

	type service struct {
		addr  string
		serve func(net.Conn)
		tls   bool
	}
	echo := echoConn
	if *splice {
		echo = spliceEchoConn
	}
	room := &chatRoom{users: map[string]*chatUser{}}
	qotdLine := []byte(*quote + "\r\n")
	services := []service{
		{*echoAddr, echo, false},
		{*tlsAddr, echoConn, true},
		{*qotdAddr, func(c net.Conn) { c.Write(qotdLine); c.Close() }, false},
		{*chatAddr, room.serve, false},
		{*execAddr, execConn([]string{"/bin/echo", *quote}), false},
	}
	var tlsConf *tls.Config
	for _, s := range services {
		if s.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			log.Fatal(err)
		}
		if s.tls {
			if tlsConf == nil {
				cert, err := selfSigned()
				if err != nil {
					log.Fatal(err)
				}
				tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}}
			}
			ln = tls.NewListener(ln, tlsConf)
		}
		go acceptLoop(ln, s.serve)
	}
	if *udpAddr != "" {
		laddr, err := net.ResolveUDPAddr("udp", *udpAddr)
		if err != nil {
			log.Fatal(err)
		}
		pc, err := net.ListenUDP("udp", laddr)
		if err != nil {
			log.Fatal(err)
		}
		go udpEcho(pc)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

// acceptLoop serves each connection in its own goroutine. Accept errors
// other than a closed listener (EMFILE...) back off, doubling from 5 ms to
// 1 s, as net/http does, instead of spinning.
func acceptLoop(ln net.Listener, serve func(net.Conn)) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log.Printf("accept: %v; retrying in %v", err, delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		go serve(c)
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// echoConn copies the connection onto itself through a pooled 32 KiB
// buffer. The reader and writer are wrapped so io.CopyBuffer uses that
// buffer: handed a *net.TCPConn on both sides it would take the
// ReaderFrom path and splice(2) through a pipe instead, which holds two
// more file descriptors per connection for as long as it is open (a 20,000
// fd limit would then hold under 7,000 idle connections) and leaves the
// pool unused. The wrappers are for TLS a no-op (a *tls.Conn has neither
// ReadFrom nor WriteTo).
func echoConn(c net.Conn) {
	defer c.Close()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, *bp)
}

// udpEcho sends every datagram back to its sender, as a competent Go
// programmer would write it with the standard library: one goroutine, one
// buffer as large as any UDP payload, ReadFromUDP then WriteToUDP, one
// datagram per system call. A failed reply (a full socket buffer, an
// unreachable sender) is dropped, as UDP does. It returns when pc is
// closed.
func udpEcho(pc *net.UDPConn) {
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // nothing read: a transient error, keep serving
		}
		pc.WriteToUDP(buf[:n], from)
	}
}

// spliceEchoConn is echoConn without the wrappers (see -splice).
func spliceEchoConn(c net.Conn) {
	defer c.Close()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	io.CopyBuffer(c, c, *bp)
}

// execConn runs argv for each connection, as inetd's nowait does, with
// os/exec: the child's stdin and stdout are the socket itself (a dup of the
// connection's descriptor from conn.File), so it reads and writes the
// connection directly and nothing is copied; its stderr is the baseline's.
// Once the child has exited and Wait has reaped it, the dup and the
// connection are closed, which sends the FIN.
//
// The child gets a clean environment (execEnv), not the baseline's own:
// the program's cost should not depend on who runs the benchmark. A
// locale in it (LANG=C.UTF-8) makes /bin/echo load it, about a quarter
// more CPU per child here, and superd gives its children a clean
// environment too.
func execConn(argv []string) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		tc, ok := c.(*net.TCPConn)
		if !ok {
			log.Printf("exec: %T is not a TCP connection", c)
			return
		}
		f, err := tc.File()
		if err != nil {
			log.Printf("exec: %v", err)
			return
		}
		defer f.Close()
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = execEnv
		cmd.Stdin, cmd.Stdout, cmd.Stderr = f, f, os.Stderr
		if err := cmd.Run(); err != nil {
			log.Printf("exec %s: %v", argv[0], err)
		}
	}
}

// execEnv is the environment of execConn's children: PATH alone, the
// default PATH superd gives its own.
var execEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// The chat: superd's chat protocol (see services/chat) with a
// mutex-protected room. Each line is written to every other user directly
// (conn.Write) from the sender's goroutine.
const (
	maxNameLength = 64
	maxLineLength = 16384
	promptLine    = "What's your name?\r\n"
	takenLine     = "Name taken, please choose another.\r\n"
	invalidLine   = "Invalid name, please choose another.\r\n"
)

type chatRoom struct {
	mu    sync.Mutex
	users map[string]*chatUser
	order []*chatUser // registration order: the order of delivery
}

type chatUser struct {
	conn net.Conn
	name string
}

func (r *chatRoom) serve(c net.Conn) {
	defer c.Close()
	u := &chatUser{conn: c}
	defer r.leave(u)
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), maxLineLength+3)
	sc.Split(scanCRLF)
	if _, err := io.WriteString(c, promptLine); err != nil {
		return
	}
	var msg []byte
	var others []*chatUser
	for sc.Scan() {
		line := sc.Bytes()
		if u.name == "" {
			if !validName(line) {
				io.WriteString(c, invalidLine)
			} else if !r.join(string(line), u) {
				io.WriteString(c, takenLine)
			} else {
				io.WriteString(c, "Welcome, "+u.name+"!\r\n")
			}
			continue
		}
		msg = append(msg[:0], '<')
		msg = append(msg, u.name...)
		msg = append(msg, "> "...)
		msg = append(msg, line...)
		msg = append(msg, "\r\n"...)
		// Copy the recipients under the lock, write outside it: a user who
		// does not read blocks only this sender, not the whole room.
		others = r.others(u, others[:0])
		for _, o := range others {
			o.conn.Write(msg)
		}
		clear(others)
	}
}

func (r *chatRoom) join(name string, u *chatUser) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, taken := r.users[name]; taken {
		return false
	}
	u.name = name
	r.users[name] = u
	r.order = append(r.order, u)
	return true
}

func (r *chatRoom) leave(u *chatUser) {
	if u.name == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.users, u.name)
	for i, o := range r.order {
		if o == u {
			r.order = append(r.order[:i], r.order[i+1:]...)
			break
		}
	}
}

func (r *chatRoom) others(u *chatUser, dst []*chatUser) []*chatUser {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.order {
		if o != u {
			dst = append(dst, o)
		}
	}
	return dst
}

var errLineTooLong = errors.New("line too long")

// scanCRLF splits lines at CRLF like superd's LineReceiver: a line over
// maxLineLength bytes, or unterminated input reaching maxLineLength+2
// bytes, ends the connection; an unterminated tail at EOF is dropped.
func scanCRLF(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.Index(data, []byte("\r\n")); i >= 0 {
		if i > maxLineLength {
			return 0, nil, errLineTooLong
		}
		return i + 2, data[:i], nil
	}
	if len(data) >= maxLineLength+2 {
		return 0, nil, errLineTooLong
	}
	if atEOF {
		return len(data), nil, bufio.ErrFinalToken
	}
	return 0, nil, nil
}

// validName: non-empty, at most 64 bytes, valid UTF-8, no control
// character (C0, DEL, C1).
func validName(b []byte) bool {
	if len(b) == 0 || len(b) > maxNameLength || !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// selfSigned makes an in-memory ECDSA P-256 certificate for localhost and
// 127.0.0.1 (the kind superd's self_signed = true makes).
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"baseline self-signed"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
