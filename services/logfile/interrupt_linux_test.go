//go:build linux

package logfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestInterruptEndsAWriteToAStalledPipe: with a FIFO whose reader stopped
// reading as the path, a write waits for room; once the factory is
// interrupted (a drain that ran out of time) it fails and aborts its
// connection, so the connection ends and the shutdown goes on; a later
// write that would wait fails at once too.
func TestInterruptEndsAWriteToAStalledPipe(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0) // it never reads
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	size, err := unix.FcntlInt(r.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := started(t, fmt.Sprintf("  path = %q\n", fifo))
	c := f.connect()
	line := strings.Repeat("x", 1023) + "\n"
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 2 * size / len(line) {
			c.send(line)
		}
	}()
	// The pipe is full: the write waits.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ) // FIONREAD
		if err != nil {
			t.Fatal(err)
		}
		if n >= size-len(line) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pipe holds %d bytes of %d, and does not fill", n, size)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("the writes returned with the pipe full and not read")
	case <-time.After(50 * time.Millisecond):
	}

	f.Interrupt()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the write waiting for the pipe did not return after Interrupt")
	}
	if !c.t.Aborted() {
		t.Error("the connection whose write failed was not aborted")
	}
	later := f.connect()
	start := time.Now()
	later.send(line)
	if !later.t.Aborted() {
		t.Error("a later write to the full pipe did not fail")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a later write took %v to fail", d)
	}
}
