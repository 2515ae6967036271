package endpoint

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

var abstractSeq atomic.Int64

// abstractName returns an abstract socket name no other test or process
// uses.
func abstractName(t *testing.T) string {
	return fmt.Sprintf("@superd-test/%d/%d/%s", os.Getpid(), abstractSeq.Add(1), t.Name())
}

// inProcNetUnix reports whether /proc/net/unix lists a socket at path
// (abstract ones are written "@NAME", as Go writes them).
func inProcNetUnix(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 8 && fields[7] == path {
			return true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return false
}

// An abstract socket serves, shows in /proc/net/unix as @NAME, makes no
// file (not in the working folder, where "@NAME" would be a relative
// path), and its name is free again once closed.
func TestListenAbstract(t *testing.T) {
	name := abstractName(t)
	a, err := ParseAddress(KindUnix, name)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Kind: KindUnix, Label: "unix:" + name, Addr: a}
	wd := t.TempDir()
	t.Chdir(wd)

	ln := listen(t, cfg)
	if got := ln.Addr().String(); got != name {
		t.Errorf("Addr() = %q, want %q", got, name)
	}
	roundTrip(t, ln)
	if !inProcNetUnix(t, name) {
		t.Errorf("/proc/net/unix does not list %s", name)
	}
	if entries, _ := os.ReadDir(wd); len(entries) != 0 {
		t.Errorf("the working folder holds %v: an abstract socket made a file", entries)
	}
	if _, err := os.Lstat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Lstat(%q) = %v", name, err)
	}

	checkClosed(t, ln)
	if inProcNetUnix(t, name) {
		t.Errorf("/proc/net/unix still lists %s after Close", name)
	}
	if _, err := net.Dial("unix", name); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after Close: %v, want connection refused", err)
	}
	// The name is free again.
	roundTrip(t, listen(t, cfg))

	// Two listeners cannot share one name.
	if _, err := Listen(cfg); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second Listen on %s: %v, want address in use", name, err)
	}
}

// An abstract socket has no file: no owner or group to give it.
func TestListenAbstractRefusesOwner(t *testing.T) {
	name := abstractName(t)
	cfg := Config{Kind: KindUnix, Label: "unix:" + name, Addr: Address{Network: NetworkUnix, Path: name},
		Owner: "0", Group: "0"}
	ln, err := Listen(cfg)
	if err == nil {
		ln.Close()
		t.Fatal("Listen took an owner for an abstract socket")
	}
	if !strings.Contains(err.Error(), "an abstract socket has no file") {
		t.Errorf("error = %v", err)
	}
}
