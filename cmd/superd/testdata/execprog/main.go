// Command execprog is a program for the exec factory's end-to-end tests
// (exec_e2e_test.go builds it with go build). Its first argument picks
// what it does:
//
//	accept N     wait mode, inetd style: the listening socket is fd 0;
//	             accepts N connections, writes one line to each, exits 0
//	listenfds N  wait mode, systemd style: checks LISTEN_PID (its own pid),
//	             LISTEN_FDS and LISTEN_FDNAMES, accepts N connections on
//	             fd 3, writes one line to each (with what it found), exits 0
//	udp N [FD]   wait mode on udp: the socket is fd 0 (or FD); answers N
//	             datagrams with "pid=P dgram=I got=DATA", exits 0
//	stopper SIG  nowait: writes "ready pid=P v=$V"; on SIG writes
//	             "got SIG" and carries on; reads one line L from stdin,
//	             writes "bye L" and exits 0 (or exits 0 at end of input)
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

func main() {
	if len(os.Args) < 3 {
		fail("usage: execprog accept|listenfds N | udp N [FD] | stopper SIGNAL")
	}
	switch os.Args[1] {
	case "accept":
		serve(os.NewFile(0, "listener"), atoi(os.Args[2]), "")
	case "listenfds":
		facts := fmt.Sprintf("listen_pid_ok=%v fds=%s names=%s",
			os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"))
		serve(os.NewFile(3, "listener"), atoi(os.Args[2]), facts)
	case "udp":
		fd := 0
		if len(os.Args) > 3 {
			fd = atoi(os.Args[3])
		}
		answer(os.NewFile(uintptr(fd), "udp socket"), atoi(os.Args[2]))
	case "stopper":
		stopper(os.Args[2])
	default:
		fail("unknown mode %q", os.Args[1])
	}
}

// serve accepts n connections on the listening socket f and writes one line
// to each: "pid=P conn=I" and the facts.
func serve(f *os.File, n int, facts string) {
	ln, err := net.FileListener(f)
	if err != nil {
		fail("not a listening socket: %v", err)
	}
	f.Close()
	for i := range n {
		c, err := ln.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		line := fmt.Sprintf("pid=%d conn=%d", os.Getpid(), i)
		if facts != "" {
			line += " " + facts
		}
		fmt.Fprintln(c, line)
		c.Close()
	}
}

// answer reads n datagrams on the udp socket f and answers each.
func answer(f *os.File, n int) {
	pc, err := net.FilePacketConn(f)
	if err != nil {
		fail("not a datagram socket: %v", err)
	}
	f.Close()
	buf := make([]byte, 2048)
	for i := range n {
		m, from, err := pc.ReadFrom(buf)
		if err != nil {
			fail("read: %v", err)
		}
		fmt.Fprintf(pcWriter{pc, from}, "pid=%d dgram=%d got=%s", os.Getpid(), i, buf[:m])
	}
}

type pcWriter struct {
	pc net.PacketConn
	to net.Addr
}

func (w pcWriter) Write(b []byte) (int, error) { return w.pc.WriteTo(b, w.to) }

func stopper(name string) {
	sig := map[string]os.Signal{"SIGTERM": syscall.SIGTERM, "SIGUSR1": syscall.SIGUSR1, "SIGHUP": syscall.SIGHUP}[name]
	if sig == nil {
		fail("unknown signal %q", name)
	}
	var mu sync.Mutex
	say := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Println(s)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, sig)
	go func() {
		for range sigs {
			say("got " + name)
		}
	}()
	say(fmt.Sprintf("ready pid=%d v=%s", os.Getpid(), os.Getenv("V")))
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		os.Exit(0)
	}
	say("bye " + strings.TrimSpace(line))
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fail("%q is not a number", s)
	}
	return n
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "execprog: "+format+"\n", a...)
	os.Exit(2)
}
