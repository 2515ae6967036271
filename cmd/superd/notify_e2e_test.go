package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notifySocket listens where superd sends its sd_notify messages, as
// systemd does.
type notifySocket struct {
	t    *testing.T
	conn *net.UnixConn
	addr string // what NOTIFY_SOCKET says
}

func listenNotify(t *testing.T, abstract bool) *notifySocket {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify.sock")
	addr := name
	if abstract {
		addr = fmt.Sprintf("@superd-test-notify-%d-%d", os.Getpid(), time.Now().UnixNano())
		name = addr
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &notifySocket{t: t, conn: c, addr: addr}
}

// next returns the next message, failing after timeout.
func (n *notifySocket) next(timeout time.Duration) string {
	n.t.Helper()
	return n.nextBy(time.Now().Add(timeout))
}

// nextBy returns the next message, failing if none has come by deadline.
func (n *notifySocket) nextBy(deadline time.Time) string {
	n.t.Helper()
	buf := make([]byte, 4096)
	n.conn.SetReadDeadline(deadline)
	k, err := n.conn.Read(buf)
	if err != nil {
		n.t.Fatalf("no sd_notify message by the deadline: %v", err)
	}
	return string(buf[:k])
}

// nextNonWatchdog skips watchdog pings, failing if no other message has
// come within timeout (pings do not extend it).
func (n *notifySocket) nextNonWatchdog(timeout time.Duration) string {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := n.nextBy(deadline); m != "WATCHDOG=1" {
			return m
		}
	}
}

func startNotified(t *testing.T, ns *notifySocket, env ...string) (*daemon, string) {
	t.Helper()
	return startNotifiedOn(t, ns, freeAddr(t), env...)
}

// startNotifiedOn is startNotified with the echo service at addr.
func startNotifiedOn(t *testing.T, ns *notifySocket, addr string, env ...string) (*daemon, string) {
	t.Helper()
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "tcp" { address = %q }
}
`, addr))
	cmd := exec.Command(superdBin, "run", "-config", path)
	cmd.Env = append(os.Environ(), append([]string{"NOTIFY_SOCKET=" + ns.addr}, env...)...)
	return startCmd(t, cmd, metrics), path
}

// READY=1 once serving, RELOADING=1 with MONOTONIC_USEC then READY=1 around
// a reload (a failed one too), STOPPING=1 at shutdown: in that order, on a
// path socket and on an abstract one.
func TestNotifyLifecycle(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			ns := listenNotify(t, abstract)
			d, path := startNotified(t, ns)

			if m := ns.nextNonWatchdog(10 * time.Second); !strings.HasPrefix(m, "READY=1\n") ||
				!strings.Contains(m, "STATUS=1 services, 0 connections; last reload: none") {
				t.Fatalf("first message %q, want READY=1 with a STATUS", m)
			}

			var before unix.Timespec
			unix.ClockGettime(unix.CLOCK_MONOTONIC, &before)
			d.signal(syscall.SIGHUP)
			m := ns.nextNonWatchdog(10 * time.Second)
			lines := strings.Split(m, "\n")
			if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
				t.Fatalf("reload message %q, want RELOADING=1 and MONOTONIC_USEC", m)
			}
			usec, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
			if err != nil || usec < uint64(before.Sec)*1e6 {
				t.Fatalf("MONOTONIC_USEC %q is not the monotonic clock (before: %ds)", lines[1], before.Sec)
			}
			if m := ns.nextNonWatchdog(10 * time.Second); !strings.HasPrefix(m, "READY=1\n") ||
				!strings.Contains(m, "last reload: success") {
				t.Fatalf("after reload %q, want READY=1 and a successful reload", m)
			}

			// A failed reload ends with READY=1 too, and says so.
			if err := os.WriteFile(path, []byte("service {"), 0o644); err != nil {
				t.Fatal(err)
			}
			d.signal(syscall.SIGHUP)
			if m := ns.nextNonWatchdog(10 * time.Second); !strings.HasPrefix(m, "RELOADING=1\n") {
				t.Fatalf("got %q, want RELOADING=1", m)
			}
			if m := ns.nextNonWatchdog(10 * time.Second); !strings.HasPrefix(m, "READY=1\n") ||
				!strings.Contains(m, "last reload: failure") {
				t.Fatalf("after a failed reload %q, want READY=1 and the failure", m)
			}

			d.signal(syscall.SIGTERM)
			if m := ns.nextNonWatchdog(10 * time.Second); !strings.HasPrefix(m, "STOPPING=1") {
				t.Fatalf("at shutdown %q, want STOPPING=1", m)
			}
			if code := d.wait(10 * time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}

// STATUS= follows the open connections while superd serves: it is sent
// again when its text has changed (here at each watchdog period, faster
// than statusEvery), and not while it has not.
func TestNotifyStatusFollowsConnections(t *testing.T) {
	ns := listenNotify(t, false)
	addr := freeAddr(t)
	d, _ := startNotifiedOn(t, ns, addr, "WATCHDOG_USEC=200000")
	if m := ns.nextNonWatchdog(10 * time.Second); !strings.Contains(m, "STATUS=1 services, 0 connections") {
		t.Fatalf("first message %q, want READY=1 with 0 connections", m)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if m := ns.nextNonWatchdog(5 * time.Second); m != "STATUS=1 services, 1 connections; last reload: none" {
		t.Fatalf("with a connection open %q, want its STATUS=", m)
	}
	c.Close()
	if m := ns.nextNonWatchdog(5 * time.Second); m != "STATUS=1 services, 0 connections; last reload: none" {
		t.Fatalf("after the close %q, want STATUS= with 0 connections", m)
	}
	// Unchanged for ten periods: pings only.
	ns.conn.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	for {
		k, err := ns.conn.Read(buf)
		if err != nil {
			break
		}
		if m := string(buf[:k]); m != "WATCHDOG=1" {
			t.Fatalf("got %q with nothing changed, want pings only", m)
		}
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// With WATCHDOG_USEC set, WATCHDOG=1 comes from the main loop: a reload
// that hangs (it opens a FIFO nobody reads yet) stops the pings,
// and they resume when the reload ends.
func TestNotifyWatchdogFollowsMainLoop(t *testing.T) {
	ns := listenNotify(t, false)
	fifo := filepath.Join(t.TempDir(), "quote.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	d, path := startNotified(t, ns, "WATCHDOG_USEC=200000")
	if m := ns.nextNonWatchdog(10 * time.Second); !strings.HasPrefix(m, "READY=1") {
		t.Fatalf("got %q, want READY=1", m)
	}
	pings := 0
	for pings < 3 {
		if m := ns.next(5 * time.Second); m == "WATCHDOG=1" {
			pings++
		}
	}

	// A reload stuck opening a FIFO nobody reads (a logfile service's
	// StartFactory): the main loop is busy, no pings.
	cfg, _ := os.ReadFile(path)
	stuck := string(cfg) + fmt.Sprintf("service \"logfile\" \"l\" {\n  path = %q\n  endpoint \"tcp\" { address = %q }\n}\n", fifo, freeAddr(t))
	if err := os.WriteFile(path, []byte(stuck), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	if m := ns.nextNonWatchdog(5 * time.Second); !strings.HasPrefix(m, "RELOADING=1") {
		t.Fatalf("got %q, want RELOADING=1", m)
	}
	// RELOADING=1 came from the loop just before it got stuck: nothing
	// may follow for ten ping periods.
	ns.conn.SetReadDeadline(time.Now().Add(time.Second))
	if k, err := ns.conn.Read(make([]byte, 512)); err == nil {
		t.Fatalf("got a message while the main loop is stuck (%d bytes)", k)
	}

	// Unblock the reload (a reader for the FIFO): pings resume.
	r, err := os.OpenFile(fifo, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if m := ns.nextNonWatchdog(10 * time.Second); !strings.HasPrefix(m, "READY=1") {
		t.Fatalf("got %q, want READY=1 after the reload", m)
	}
	if m := ns.next(5 * time.Second); m != "WATCHDOG=1" {
		t.Fatalf("got %q, want the pings back", m)
	}
	d.signal(syscall.SIGTERM)
	d.wait(10 * time.Second)
}

// With the notify socket gone, a failed sd_notify is a warning once, not
// one for every watchdog ping; once the socket is back, sending resumes
// and says so.
func TestNotifyFailureLoggedOnce(t *testing.T) {
	sockPath := filepath.Join(t.TempDir(), "notify.sock")
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "tcp" { address = %q }
}
`, freeAddr(t)))
	cmd := exec.Command(superdBin, "run", "-config", path, "-log-level", "debug")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sockPath, "WATCHDOG_USEC=40000")
	d := startCmd(t, cmd, metrics)
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(d.stderr.String(), "sd_notify failed") < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("no failing pings:\n%s", d.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(d.stderr.String(), "level=WARN msg=\"sd_notify failed"); n != 1 {
		t.Errorf("%d warnings for the failing sd_notify, want 1:\n%s", n, d.stderr.String())
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ns := &notifySocket{t: t, conn: c, addr: sockPath}
	if m := ns.next(5 * time.Second); m != "WATCHDOG=1" {
		t.Errorf("got %q, want the pings back", m)
	}
	if !d.logged("sd_notify works again") {
		t.Error("the recovery is not logged")
	}
	c.Close() // nobody reads the pings any more: refused, not queued
	d.stop(10 * time.Second)
}

// A notify socket whose reader has stopped (its queue full) never stops
// superd's main loop: SIGTERM still shuts superd down, and exits 0.
func TestNotifyStuckReceiverDoesNotBlockSignals(t *testing.T) {
	ns := listenNotify(t, false)
	d, _ := startNotified(t, ns, "WATCHDOG_USEC=20000")
	if m := ns.nextNonWatchdog(10 * time.Second); !strings.HasPrefix(m, "READY=1") {
		t.Fatalf("got %q, want READY=1", m)
	}
	// From now on nobody reads: wait until the socket's queue is full (a
	// datagram of our own no longer fits), so superd's next ping cannot
	// be queued either.
	probe, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(probe)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Sendto(probe, []byte("X=1"), unix.MSG_DONTWAIT, &unix.SockaddrUnix{Name: ns.addr})
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the notify socket's queue never filled")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
