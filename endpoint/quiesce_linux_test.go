package endpoint

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// acceptQueue returns the number of connections queued on a listener
// (TCP_INFO's tcpi_unacked on a listening socket).
func acceptQueue(t *testing.T, ln net.Listener) int {
	t.Helper()
	raw, err := tcpListenerOf(ln).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n uint32
	var gerr error
	raw.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		if info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); gerr == nil {
			n = info.Unacked
		}
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return int(n)
}

// echoOne serves one connection: one byte back.
func echoOne(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err == nil {
		c.Write(b)
	}
}

// Two listeners share a port (reuse_port). Once one is quiesced, the
// kernel queues no new connection on it, what was queued before stays
// for it to accept, and when it closes every client that was knocking
// is served by the other: none refused, none reset.
func TestQuiesceReusePort(t *testing.T) {
	if migratesOnClose() {
		t.Skip("net.ipv4.tcp_migrate_req = 1: the kernel moves a closing listener's connections, and Quiesce leaves it to it")
	}
	a := listen(t, tcpConfig(t, "127.0.0.1:0", TCPOptions{}, true))
	addr := a.Addr().String()
	b := listen(t, tcpConfig(t, addr, TCPOptions{}, true))
	if p := sockopt(t, tcpListenerOf(a), unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.IPPROTO_TCP {
		t.Fatalf("a reuse_port listener has protocol %d, want plain TCP (%d): Linux takes no socket filter on MPTCP", p, unix.IPPROTO_TCP)
	}
	var served sync.WaitGroup
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		for {
			c, err := b.Accept()
			if err != nil {
				return
			}
			served.Go(func() { echoOne(c) })
		}
	}()
	defer func() {
		b.Close()
		<-bDone
		served.Wait()
	}()

	dial := func() error {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	}

	// One connection queued on a (the group's hash decides: dial until
	// one lands there).
	var queued []chan error
	for i := 0; acceptQueue(t, a) == 0; i++ {
		if i == 64 {
			t.Fatal("64 connections and none queued on the first listener")
		}
		ch := make(chan error, 1)
		go func() { ch <- dial() }()
		queued = append(queued, ch)
		deadline := time.Now().Add(time.Second)
		for acceptQueue(t, a) == 0 && len(ch) == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}

	if err := Quiesce(a); err != nil {
		t.Fatal(err)
	}
	// New clients: about half hash to a, whose filter drops their SYN.
	const clients = 16
	errs := make(chan error, clients)
	for range clients {
		go func() { errs <- dial() }()
	}
	// The connection queued before stays, and nothing new joins it.
	tcpListenerOf(a).SetDeadline(time.Now().Add(2 * time.Second))
	c, err := a.Accept()
	if err != nil {
		t.Fatalf("the connection queued before Quiesce: %v", err)
	}
	served.Go(func() { echoOne(c) })
	tcpListenerOf(a).SetDeadline(time.Now().Add(300 * time.Millisecond))
	if c, err := a.Accept(); err == nil {
		c.Close()
		t.Fatal("a quiesced listener was given a new connection")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	a.Close()

	// Everyone is served, by b, within a few SYN retransmissions.
	for _, ch := range queued {
		if err := <-ch; err != nil {
			t.Errorf("a connection made before Quiesce: %v", err)
		}
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Errorf("a connection made after Quiesce: %v", err)
		}
	}
}

// Quiesce leaves a listener that is not TCP alone.
func TestQuiesceOtherListeners(t *testing.T) {
	path := t.TempDir() + "/q.sock"
	if err := Quiesce(listen(t, unixConfig(path, 0o600))); err != nil {
		t.Errorf("Quiesce of a unix listener: %v", err)
	}
}
