package exec

import (
	"errors"
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
