//go:build linux

package exec

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
)

// TestCountTCPWhileAcknowledged counts a socket's bytes again and again
// while the peer reads what it still holds, as when a program exits with
// its output queued and the client is still reading: every count must be
// all that was written, whenever the acknowledgements arrive.
func TestCountTCPWhileAcknowledged(t *testing.T) {
	client, server := tcpPair(t)
	// Fill the kernel's buffers: the write stops when they are full.
	payload := make([]byte, 32<<20)
	server.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	written, err := server.Write(payload)
	if written == 0 || err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("filling the buffers: wrote %d bytes: %v", written, err)
	}
	fd, err := dupBlocking(server.(syscall.Conn))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	var read atomic.Int64
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<10)
		for read.Load() < int64(written) {
			client.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := client.Read(buf)
			read.Add(int64(n))
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	counts, wrong := 0, 0
	var first int64
	for read.Load() < int64(written) {
		hc := &framework.HandedConn{}
		countTCP(fd, hc)
		counts++
		if hc.BytesOut != int64(written) {
			if wrong == 0 {
				first = hc.BytesOut
			}
			wrong++
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("client read %d of %d bytes: %v", read.Load(), written, err)
	}
	t.Logf("%d bytes, %d counts while the client read", written, counts)
	if wrong > 0 {
		t.Errorf("%d of %d counts were wrong (the first: %d); want %d each", wrong, counts, first, written)
	}
}

// handedFD is the program's side of a connection as serveDirect leaves it:
// superd's blocking duplicate, the only descriptor of the socket.
func handedFD(t *testing.T) (client net.Conn, fd int) {
	t.Helper()
	client, server := tcpPair(t)
	fd, err := dupBlocking(server.(syscall.Conn))
	server.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return client, fd
}

// waitTCPState polls the socket's state until it is want.
func waitTCPState(t *testing.T, fd int, want uint8) *unix.TCPInfo {
	t.Helper()
	var info *unix.TCPInfo
	waitFor(t, 10*time.Second, fmt.Sprintf("TCP state %d", want), func() bool {
		var err error
		info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		return info.State == want
	})
	return info
}

// A program that exits leaving the client's input unread and its own
// output queued: superd's close resets the connection and the kernel
// drops what it has not sent, so only what it sent is counted, and the
// client gets no more than that. Also when the program shut its side down
// first: its FIN, queued behind the data, is dropped with it and is not
// counted twice (it is in what was not sent).
func TestCountTCPUnreadInputDropsTheQueue(t *testing.T) {
	for _, shutWrite := range []bool{false, true} {
		t.Run(fmt.Sprintf("shutdown %v", shutWrite), func(t *testing.T) {
			countUnreadInput(t, shutWrite)
		})
	}
}

func countUnreadInput(t *testing.T, shutWrite bool) {
	client, fd := handedFD(t)
	if _, err := client.Write([]byte("request left")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the request to arrive", func() bool { return holdsInput(fd) })
	// The program: writes until the buffers are full (the client reads
	// nothing yet), never reads, exits.
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	written := 0
	for {
		n, err := unix.Write(fd, chunk)
		if n > 0 {
			written += n
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err != nil || q == 0 {
		t.Fatalf("nothing queued (%d, %v): the test needs a queue", q, err)
	}
	if shutWrite {
		if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
	}
	hc := &framework.HandedConn{}
	countTCP(fd, hc)
	if hc.BytesIn != int64(len("request left")) {
		t.Errorf("BytesIn = %d; want %d", hc.BytesIn, len("request left"))
	}
	if hc.BytesOut >= int64(written) {
		t.Errorf("BytesOut = %d of %d written: what the close drops was counted", hc.BytesOut, written)
	}
	unix.Close(fd) // superd's close: a reset
	var got int64
	buf := make([]byte, 64<<10)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, err := client.Read(buf)
		got += int64(n)
		if err != nil {
			if !errors.Is(err, syscall.ECONNRESET) && err != io.EOF {
				t.Fatalf("client read %d bytes: %v", got, err)
			}
			break
		}
	}
	if got > hc.BytesOut {
		t.Errorf("the client got %d bytes, more than the %d counted", got, hc.BytesOut)
	}
	t.Logf("written %d, counted %d, the client got %d", written, hc.BytesOut, got)
}

// A connection both sides shut down, in either order, has ended (TCP_CLOSE)
// when superd counts it: the two FINs are not bytes.
func TestCountTCPAfterBothShutDown(t *testing.T) {
	for _, programFirst := range []bool{true, false} {
		client, fd := handedFD(t)
		clientSide := func() {
			if _, err := client.Write([]byte("abc")); err != nil {
				t.Fatal(err)
			}
			client.(*net.TCPConn).CloseWrite()
		}
		if !programFirst {
			clientSide()
		}
		// The program: writes 5 bytes, shuts its side down, reads to the end.
		if _, err := unix.Write(fd, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(client); err != nil || string(b) != "hello" {
			t.Fatalf("client read %q, %v", b, err)
		}
		if programFirst {
			clientSide()
		}
		buf := make([]byte, 16)
		for {
			n, err := unix.Read(fd, buf)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
		waitTCPState(t, fd, tcpClose)
		hc := &framework.HandedConn{}
		countTCP(fd, hc)
		if hc.BytesIn != 3 || hc.BytesOut != 5 {
			t.Errorf("program shut down first %v: counted %d in, %d out; want 3, 5", programFirst, hc.BytesIn, hc.BytesOut)
		}
		client.Close()
	}
}

// A connection the peer reset while the program's output was still queued:
// what was never delivered is not counted as sent.
func TestCountTCPAfterReset(t *testing.T) {
	client, fd := handedFD(t)
	client.(*net.TCPConn).SetReadBuffer(4 << 10)
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	written := 0
	chunk := make([]byte, 64<<10)
	for written < 64<<20 {
		n, err := unix.Write(fd, chunk)
		written += max(n, 0)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 1000)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil {
		t.Fatal(err)
	}
	client.(*net.TCPConn).SetLinger(0)
	client.Close() // a reset
	info := waitTCPState(t, fd, tcpClose)
	hc := &framework.HandedConn{}
	countTCP(fd, hc)
	if hc.BytesOut != int64(info.Bytes_acked) || hc.BytesOut >= int64(written) || hc.BytesIn != 0 {
		t.Errorf("program wrote %d bytes, the peer acknowledged %d and reset; counted %d out, %d in; want %d, 0",
			written, info.Bytes_acked, hc.BytesOut, hc.BytesIn, info.Bytes_acked)
	}
}

// The peer closed (its FIN) and then reset, when the program wrote after
// its close: the FIN came before the reset (EPIPE) and is not a byte.
func TestCountTCPResetAfterPeersFIN(t *testing.T) {
	client, fd := handedFD(t)
	if _, err := client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	client.Close()
	waitTCPState(t, fd, tcpCloseWait)
	buf := make([]byte, 16)
	if n, err := unix.Read(fd, buf); n != 3 || err != nil {
		t.Fatalf("program read %d bytes, %v", n, err)
	}
	if _, err := unix.Write(fd, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	waitTCPState(t, fd, tcpClose) // the client's kernel resets
	hc := &framework.HandedConn{}
	countTCP(fd, hc)
	if hc.BytesIn != 3 {
		t.Errorf("counted %d bytes in, want 3", hc.BytesIn)
	}
}

// Where the counters of data sent cannot be trusted (a queueing
// discipline refused segments, or a kernel before 4.19 reads 0), a clean
// end tells that superd's FIN was acknowledged.
func TestFINAcknowledged(t *testing.T) {
	for _, c := range []struct {
		name                 string
		sent, retrans, acked uint64
		queued               int
		clean, want          bool
	}{
		{"data and FIN acknowledged", 100, 0, 101, 0, true, true},
		{"FIN not acknowledged", 100, 0, 100, 0, false, false},
		{"FIN acknowledged, then a reset", 100, 0, 101, 0, false, true},
		{"retransmitted data", 150, 50, 101, 0, true, true},
		{"refused by the qdisc, clean end", 7679644, 2629184, 4194305, 0, true, true},
		{"refused by the qdisc, reset", 7679644, 2629184, 4194000, 305, false, false},
		{"before 4.19, clean end", 0, 0, 101, 0, true, true},
		{"before 4.19, reset", 0, 0, 50, 51, false, false},
		{"nothing sent, FIN acknowledged", 0, 0, 1, 0, true, true},
	} {
		info := &unix.TCPInfo{Bytes_sent: c.sent, Bytes_retrans: c.retrans, Bytes_acked: c.acked}
		if got := finAcknowledged(info, c.queued, c.clean); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// While the program runs, the status view reads the connection's bytes so
// far: the kernel's count for a socket handed over, the relay's for TLS;
// once the connection has ended, none (its end counts are set).
func TestLiveBytes(t *testing.T) {
	for _, kind := range []string{"tcp", "tls"} {
		t.Run(kind, func(t *testing.T) {
			f, _ := newTestFactory(t, `command = ["/bin/cat"]`)
			var client, server net.Conn
			if kind == "tls" {
				client, server = tlsPair(t)
			} else {
				client, server = tcpPair(t)
			}
			h := serveConn(t, f, server, 0)
			if _, err := client.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(client, make([]byte, 5)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "the live counts to say 5 and 5", func() bool {
				in, out := h.hc.LiveBytes()
				return in == 5 && out == 5
			})
			client.Close()
			if err := h.wait(t, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if in, out := h.hc.LiveBytes(); in != 0 || out != 0 {
				t.Errorf("live counts after the end: %d, %d", in, out)
			}
			if h.hc.BytesIn != 5 || h.hc.BytesOut != 5 {
				t.Errorf("end counts %d, %d, want 5 and 5", h.hc.BytesIn, h.hc.BytesOut)
			}
		})
	}
}
