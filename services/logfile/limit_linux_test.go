//go:build linux

package logfile

import (
	"syscall"
	"testing"
)

// TestPartialWriteTearsNoLine: a write the file can take only part of (a
// disk that fills up halfway through it; here the file size limit,
// RLIMIT_FSIZE, which cuts a write short the same way, with EFBIG instead
// of ENOSPC) leaves no part of a line in the file: the whole lines that
// fitted stay, the piece of the next one is taken back, and what is
// written once there is room again starts on a line of its own.
func TestPartialWriteTearsNoLine(t *testing.T) {
	f := started(t, "")
	c := f.connect()
	c.send("first\n")

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	limited := old
	limited.Cur = uint64(len("first\n") + 10) // room for "whole\n" and 4 bytes more
	if limited.Cur > old.Max {
		t.Skipf("RLIMIT_FSIZE hard limit %d", old.Max)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limited); err != nil {
		t.Skip("cannot set RLIMIT_FSIZE:", err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer restore()

	c.send("whole\nthis line does not fit\n")
	if !c.t.Aborted() {
		t.Error("a write that failed did not abort the connection")
	}
	restore()

	f.connect().send("after\n")
	if got, want := readFile(t, f.path), "first\nwhole\nafter\n"; got != want {
		t.Fatalf("file %q, want %q (no torn line)", got, want)
	}
}
