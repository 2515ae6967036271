package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// echoOnce sends line over network/addr and checks it comes back.
func echoOnce(network, addr, line string) error {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("echo of %q came back as %q", line, got)
	}
	return nil
}

// Sockets passed by the real systemd-socket-activate are taken by the
// endpoints matching them: by address (unnamed) or by name, over tcp and
// unix; LISTEN_* are gone from what children see; the unix socket file is
// not removed at exit (it belongs to the activator).
func TestActivationBySystemdSocketActivate(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian package systemd)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "echo.sock")
	tcpAddr, namedAddr := freeAddr(t), freeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "byaddress" {
  endpoint "tcp"  { address = %q }
  endpoint "unix" {
    path = %q
    mode = "0600" # the activator's socket: not applied, a warning says so
  }
}
service "echo" "byname" {
  # bound by the activator elsewhere than it says: the name decides
  endpoint "tcp" {
    address = "127.0.0.1:1"
    name    = "named"
  }
}
service "exec" "env" {
  command = ["/bin/cat", "/proc/self/environ"]
  endpoint "tcp" { address = %q }
}
`, tcpAddr, sock, freeAddr(t)))
	envAddr := ""
	{
		// The exec service's address, read back from the file.
		text, _ := os.ReadFile(path)
		i := strings.LastIndex(string(text), `address = "`)
		envAddr = strings.SplitN(string(text[i+len(`address = "`):]), `"`, 2)[0]
	}
	cmd := exec.Command(activate,
		"-l", tcpAddr, "-l", sock, "-l", namedAddr,
		"--fdname=plain:plainunix:named",
		superdBin, "run", "-config", path)
	woke := wakeActivator(tcpAddr)
	d := startCmd(t, cmd, metrics)
	<-woke
	for _, c := range []struct{ network, addr string }{{"tcp", tcpAddr}, {"unix", sock}, {"tcp", namedAddr}} {
		if err := echoOnce(c.network, c.addr, "via "+c.addr); err != nil {
			t.Errorf("%s %s: %v", c.network, c.addr, err)
		}
	}
	// The exec service bound its own socket; its child sees no LISTEN_*.
	c, err := net.Dial("tcp", envAddr)
	if err != nil {
		t.Fatal(err)
	}
	env, _ := io.ReadAll(c)
	c.Close()
	if strings.Contains(string(env), "LISTEN_") {
		t.Errorf("a child sees LISTEN_* variables: %q", env)
	}
	if !d.logged("socket passed by the service manager") {
		t.Errorf("no log of the passed sockets")
	}
	if !d.logged("mode, owner and group are not applied") {
		t.Errorf("no warning that the unix endpoint's mode is not applied to the passed socket")
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() == 0o600 {
		t.Errorf("the passed socket's mode was changed to 0600 (or it is gone: %v)", err)
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("the activator's unix socket file was removed: %v", err)
	}
}

// startActivated starts superd with ln passed as fd 3 (LISTEN_FDS=1), the
// way a service manager does; superd's own binary, started under the exec
// shim's name, sets LISTEN_PID to the pid superd will have.
func startActivated(t *testing.T, ln *os.File, name, path, metrics string) *daemon {
	t.Helper()
	cmd := &exec.Cmd{
		Path:       superdBin,
		Args:       []string{"superd-exec-shim", "listen_pid", superdBin, superdBin, "run", "-config", path},
		Env:        append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES="+name),
		ExtraFiles: []*os.File{ln},
	}
	return startCmd(t, cmd, metrics)
}

// The service manager holds the socket: superd stopped and started again
// refuses no connection (they queue in the socket meanwhile), and a reload
// that moves the service off the passed socket keeps it open, so moving
// back later serves what queued.
func TestActivationRestartAndReloadRefuseNothing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	conf := `
metrics { address = "METRICS" }
shutdown_timeout = "5s"
service "echo" "e" {
  endpoint "tcp" {
    address = "127.0.0.1:1"
    name    = "echo"
  }
}
`
	path, metrics := writeConfig(t, conf)
	d := startActivated(t, lf, "echo", path, metrics)

	// Clients keep coming while superd restarts.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var served atomic.Int64
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				err := echoOnce("tcp", addr, fmt.Sprintf("w%d-%d", w, i))
				switch {
				case errors.Is(err, syscall.ECONNREFUSED):
					errs <- err // what the held socket must prevent
					return
				case err != nil:
					// Accepted by the stopping superd just as it closed its
					// listener, and closed by its drain before any byte
					// arrived: not a refusal; the client tries again.
					continue
				}
				served.Add(1)
			}
		}()
	}
	waitServed := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for served.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d echoes served", served.Load())
			}
			select {
			case err := <-errs:
				t.Fatalf("a client failed: %v", err)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	waitServed(50)
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	before := served.Load()
	path2, metrics2 := writeConfig(t, conf)
	d = startActivated(t, lf, "echo", path2, metrics2)
	waitServed(before + 50)
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("a client failed across the restart: %v", err)
	default:
	}

	// Reload off the passed socket: it stays open (a connection queues),
	// and a reload back serves it.
	other := freeAddr(t)
	moved := strings.Replace(strings.Replace(conf, "METRICS", metrics2, 1),
		"address = \"127.0.0.1:1\"\n    name    = \"echo\"", fmt.Sprintf("address = %q", other), 1)
	if err := os.WriteFile(path2, []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	pollReady(t, func() error { return echoOnce("tcp", other, "moved") })
	queued, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("the passed socket was closed by the reload: %v", err)
	}
	defer queued.Close()
	if err := os.WriteFile(path2, []byte(strings.Replace(conf, "METRICS", metrics2, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	queued.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(queued, "queued\n")
	got, err := bufio.NewReader(queued).ReadString('\n')
	if err != nil || got != "queued\n" {
		t.Fatalf("the connection queued on the passed socket got %q, %v", got, err)
	}
	d.signal(syscall.SIGTERM)
	d.wait(15 * time.Second)
}

// pollReady retries f until it succeeds or 15 s pass.
func pollReady(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func netDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }

// echoOnceConn sends a line on c and checks it comes back.
func echoOnceConn(c net.Conn, line string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	buf := make([]byte, len(line)+1)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != line+"\n" {
		return fmt.Errorf("echo of %q came back as %q", line, buf)
	}
	c.SetDeadline(time.Time{})
	return nil
}

// A datagram socket passed by systemd-socket-activate goes to the udp
// endpoint on its address; the datagram that woke the activator is the
// first one answered.
func TestActivationUDP(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian package systemd)")
	}
	addr := udpFreeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "u" {
  endpoint "udp" { address = %q }
}
`, addr))
	cmd := exec.Command(activate, "-d", "-l", addr, superdBin, "run", "-config", path)
	client, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	started := make(chan struct{})
	go func() {
		// The activator execs superd on the first datagram.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-started:
				return
			default:
			}
			client.Write([]byte("wake"))
			time.Sleep(50 * time.Millisecond)
		}
	}()
	d := startCmd(t, cmd, metrics)
	close(started)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, err := client.Read(buf)
	if err != nil || string(buf[:n]) != "wake" {
		t.Fatalf("first reply %q, %v", buf[:n], err)
	}
	if !d.logged("endpoint uses a socket passed by the service manager") {
		t.Errorf("the udp endpoint did not take the passed socket:\n%s", d.stderr.String())
	}
	d.signal(syscall.SIGTERM)
	d.wait(15 * time.Second)
}

// wakeActivator connects to addr until one connection succeeds (or 10 s
// pass): systemd-socket-activate starts superd on the first connection.
// The channel closes when it is done.
func wakeActivator(addr string) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return done
}
