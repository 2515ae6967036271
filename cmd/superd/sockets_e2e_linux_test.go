package main

// End-to-end tests of socket options against the real binary: reuse_port
// shared by two superd processes (tcp and udp), unix owner and group,
// abstract unix sockets (own and passed by systemd-socket-activate), and
// udp buffer sizes applied to a passed socket.

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// counter reads one series of d's /metrics (0 when absent).
func (d *daemon) counter(name string, labels map[string]string) float64 {
	v, _ := metric(d.scrape(), name, labels)
	return v
}

// Two superd processes share one tcp port with reuse_port: both serve,
// and while 16 clients keep connecting one of them stops (SIGTERM): no
// connection is refused, and none is reset (the stopping one quiesces its
// listener before closing it: endpoint.Quiesce; without it, connections
// queued on it at close were reset in every run).
func TestReusePortTwoProcesses(t *testing.T) {
	addr := freeAddr(t)
	conf := fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "5s"
service "echo" "e" {
  endpoint "tcp" {
    address    = %q
    reuse_port = true
  }
}
`, addr)
	pa, ma := writeConfig(t, conf)
	pb, mb := writeConfig(t, conf)
	a := startDaemon(t, pa, ma)
	b := startDaemon(t, pb, mb)
	served := func(d *daemon) float64 {
		return d.counter("superd_connections_total", map[string]string{"service": "e"})
	}

	// Both serve: the kernel spreads new connections over the two.
	for i := 0; served(a) == 0 || served(b) == 0; i++ {
		if i == 200 {
			t.Fatalf("200 connections, and a served %v, b %v", served(a), served(b))
		}
		if err := echoOnce("tcp", addr, fmt.Sprintf("both %d", i)); err != nil {
			t.Fatal(err)
		}
	}

	// Clients keep connecting while a stops.
	var stop atomic.Bool
	var ok, closed atomic.Int64
	var wg sync.WaitGroup
	failures := make(chan error, 64)
	for w := range 16 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				err := echoOnce("tcp", addr, fmt.Sprintf("w%d-%d", w, i))
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
					select {
					case failures <- err:
					default:
					}
				case errors.Is(err, io.EOF):
					// Accepted by a as it stopped, and closed by its
					// drain before the line arrived: not refused, not
					// reset.
					closed.Add(1)
				default:
					select {
					case failures <- err:
					default:
					}
				}
			}
		})
	}
	waitOK := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for ok.Load() < n && time.Now().Before(deadline) && len(failures) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitOK(100)
	bBefore := served(b)
	a.signal(syscall.SIGTERM)
	code := a.wait(15 * time.Second)
	waitOK(ok.Load() + 100)
	stop.Store(true)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Errorf("a client failed while one of the two superd stopped: %v", err)
	}
	if code != 0 {
		t.Errorf("the stopped superd exited %d", code)
	}
	if served(b) <= bBefore {
		t.Errorf("the remaining superd served nothing after the other stopped")
	}
	t.Logf("%d echoes, %d connections closed by the stopping superd's drain", ok.Load(), closed.Load())
	b.signal(syscall.SIGTERM)
	b.wait(15 * time.Second)
}

// Two superd processes share one udp port with reuse_port: both answer
// (each client socket's datagrams go to one of them), and once one stops
// the other answers every client socket; no client ever sees "connection
// refused" (an ICMP port unreachable).
func TestReusePortUDPTwoProcesses(t *testing.T) {
	addr := udpFreeAddr(t)
	conf := fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "u" {
  endpoint "udp" {
    address    = %q
    reuse_port = true
  }
}
`, addr)
	pa, ma := writeConfig(t, conf)
	pb, mb := writeConfig(t, conf)
	a := startDaemon(t, pa, ma)
	b := startDaemon(t, pb, mb)
	received := func(d *daemon) float64 {
		return d.counter("superd_datagrams_received_total", map[string]string{"service": "u"})
	}
	// ask sends a datagram on c until it is answered (a few tries: udp
	// may lose one); ECONNREFUSED is an error at once.
	ask := func(c net.Conn, msg string) error {
		buf := make([]byte, 64)
		var err error
		for range 5 {
			if _, err = c.Write([]byte(msg)); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			var n int
			n, err = c.Read(buf)
			if err == nil && string(buf[:n]) == msg {
				return nil
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				return err
			}
		}
		return fmt.Errorf("no answer to %q: %v", msg, err)
	}

	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := 0; received(a) == 0 || received(b) == 0; i++ {
		if i == 64 {
			t.Fatalf("64 client sockets, and a received %v datagrams, b %v", received(a), received(b))
		}
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		if err := ask(c, fmt.Sprintf("c%d", i)); err != nil {
			t.Fatal(err)
		}
	}

	a.signal(syscall.SIGTERM)
	if code := a.wait(15 * time.Second); code != 0 {
		t.Errorf("the stopped superd exited %d", code)
	}
	for i, c := range clients {
		if err := ask(c, fmt.Sprintf("after %d", i)); err != nil {
			t.Errorf("client %d after one superd stopped: %v", i, err)
		}
	}
	b.signal(syscall.SIGTERM)
	b.wait(15 * time.Second)
}

// A unix endpoint's owner and group, by name, read back from the socket
// file superd made.
func TestUnixOwnerAndGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving the socket file another owner needs root: run the tests as root (CI does) to check it")
	}
	sock := filepath.Join(t.TempDir(), "owned.sock")
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "o" {
  endpoint "unix" {
    path  = %q
    mode  = "0660"
    owner = "nobody"
    group = "65533"
  }
}
`, sock))
	d := startDaemon(t, path, metrics)
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65533 || fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket file %v owned by %d:%d, want a socket 0660 owned by 65534:65533", fi.Mode(), st.Uid, st.Gid)
	}
	if err := echoOnce("unix", sock, "owned"); err != nil {
		t.Error(err)
	}
	d.signal(syscall.SIGTERM)
	d.wait(15 * time.Second)
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after exit: %v", err)
	}
}

// uniqueAbstract returns an abstract socket name no other test or process
// uses.
func uniqueAbstract(t *testing.T, what string) string {
	return fmt.Sprintf("@superd-e2e/%d/%s/%d", os.Getpid(), what, time.Now().UnixNano())
}

// procNetUnix reports whether /proc/net/unix lists a socket named name.
func procNetUnix(t *testing.T, name string) bool {
	t.Helper()
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 8 && fields[7] == name {
			return true
		}
	}
	return false
}

// An endpoint on path = "@NAME" serves an abstract socket: clients connect
// to "@NAME", /proc/net/unix shows it, no file appears (neither in the
// configuration's folder, which relative paths resolve against, nor in
// superd's working folder), a reload keeps it, and it is gone after exit.
func TestAbstractUnixEndpoint(t *testing.T) {
	name := uniqueAbstract(t, "own")
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "abstract" {
  endpoint "unix" { path = %q }
}
`, name))
	wd := t.TempDir()
	cmd := exec.Command(superdBin, "run", "-config", path)
	cmd.Dir = wd
	d := startCmd(t, cmd, metrics)
	if err := echoOnce("unix", name, "abstract"); err != nil {
		t.Fatal(err)
	}
	if !procNetUnix(t, name) {
		t.Errorf("/proc/net/unix does not list %s", name)
	}
	for _, dir := range []string{wd, filepath.Dir(path)} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "superd.hcl" {
				t.Errorf("%s holds %s: an abstract socket made a file", dir, e.Name())
			}
		}
	}

	// A reload that changes the service hands the socket over (binding
	// the name again while the old instance holds it would fail with
	// "address in use", and so would the reload).
	text, _ := os.ReadFile(path)
	changed := strings.Replace(string(text), `service "echo" "abstract" {`, `service "echo" "abstract" {
  max_connections = 50`, 1)
	if err := os.WriteFile(path, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	d.waitMetric("superd_config_reloads_total", map[string]string{"result": "success"}, 1)
	if err := echoOnce("unix", name, "after the reload"); err != nil {
		t.Errorf("after the reload: %v", err)
	}

	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if procNetUnix(t, name) {
		t.Errorf("/proc/net/unix still lists %s after exit", name)
	}
}

// An abstract socket passed by systemd-socket-activate goes to the
// endpoint whose path names it, matched by address as a path would be.
func TestActivationAbstractUnix(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian package systemd)")
	}
	name := uniqueAbstract(t, "passed")
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "abstract" {
  endpoint "unix" { path = %q }
}
`, name))
	cmd := exec.Command(activate, "-l", name, superdBin, "run", "-config", path)
	// The activator starts superd on the first connection: make one.
	first := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := echoOnce("unix", name, "wake")
			if err == nil || time.Now().After(deadline) {
				first <- err
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	d := startCmd(t, cmd, metrics)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if !d.logged("endpoint uses a socket passed by the service manager") {
		t.Errorf("the endpoint did not take the passed abstract socket:\n%s", d.stderr.String())
	}
	if err := echoOnce("unix", name, "served"); err != nil {
		t.Error(err)
	}
	d.signal(syscall.SIGTERM)
	d.wait(15 * time.Second)
}

// sockoptOf reads an integer socket option of descriptor fd of process
// pid, through a duplicate taken with pidfd_getfd (Linux 5.6; the test
// runs as the process's owner).
func sockoptOf(t *testing.T, pid, fd, level, opt int) int {
	t.Helper()
	dup := fdOf(t, pid, fd)
	defer unix.Close(dup)
	v, err := unix.GetsockoptInt(dup, level, opt)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// read_buffer and write_buffer apply to a udp socket passed by
// systemd-socket-activate as to one superd binds: read back from the
// socket itself (the kernel doubles what it is asked for).
func TestActivationUDPBuffers(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian package systemd)")
	}
	addr := udpFreeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "u" {
  endpoint "udp" {
    address      = %q
    read_buffer  = 50000
    write_buffer = 60000
  }
}
`, addr))
	cmd := exec.Command(activate, "--datagram", "-l", addr, superdBin, "run", "-config", path)
	client, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	started := make(chan struct{})
	var woke sync.WaitGroup
	woke.Go(func() {
		// The activator execs superd on the first datagram.
		for range 200 {
			select {
			case <-started:
				return
			default:
			}
			client.Write([]byte("wake"))
			time.Sleep(50 * time.Millisecond)
		}
	})
	d := startCmd(t, cmd, metrics)
	close(started)
	woke.Wait()
	if !d.logged("endpoint uses a socket passed by the service manager") {
		t.Fatalf("the udp endpoint did not take the passed socket:\n%s", d.stderr.String())
	}
	// superd exec'd in the activator's place: the passed socket is its
	// fd 3 (LISTEN_FDS start there).
	pid := d.cmd.Process.Pid
	if v := sockoptOf(t, pid, 3, unix.SOL_SOCKET, unix.SO_RCVBUF); v != 2*50000 {
		t.Errorf("SO_RCVBUF of the passed socket = %d, want %d (read_buffer = 50000)", v, 2*50000)
	}
	if v := sockoptOf(t, pid, 3, unix.SOL_SOCKET, unix.SO_SNDBUF); v != 2*60000 {
		t.Errorf("SO_SNDBUF of the passed socket = %d, want %d (write_buffer = 60000)", v, 2*60000)
	}
	d.signal(syscall.SIGTERM)
	d.wait(15 * time.Second)
}

// A tcp socket passed by systemd-socket-activate gets the endpoint's
// backlog, and the connections accepted on it the endpoint's keepalive and
// Nagle settings, as on a socket superd binds: read back from the kernel.
func TestActivationTCPOptions(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian package systemd)")
	}
	addr := freeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "tcp" {
    address            = %q
    backlog            = 17
    nodelay            = false
    keepalive          = "42s"
    keepalive_interval = "7s"
    keepalive_count    = 5
  }
}
`, addr))
	cmd := exec.Command(activate, "-l", addr, superdBin, "run", "-config", path)
	woke := wakeActivator(addr)
	d := startCmd(t, cmd, metrics)
	<-woke
	defer func() {
		d.signal(syscall.SIGTERM)
		d.wait(15 * time.Second)
	}()
	if !d.logged("endpoint uses a socket passed by the service manager") {
		t.Fatalf("the tcp endpoint did not take the passed socket:\n%s", d.stderr.String())
	}
	client, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, make([]byte, 1)); err != nil {
		t.Fatalf("no echo through the passed socket: %v", err)
	}
	pid := d.cmd.Process.Pid

	// A listening socket's TCP_INFO holds its backlog in tcpi_sacked.
	ln := fdOf(t, pid, 3)
	defer unix.Close(ln)
	info, err := unix.GetsockoptTCPInfo(ln, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	if info.Sacked != 17 {
		t.Errorf("backlog of the passed socket = %d, want 17", info.Sacked)
	}

	conn := acceptedSocketOf(t, pid, client.LocalAddr().(*net.TCPAddr))
	defer unix.Close(conn)
	for _, c := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 0},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 42},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 7},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 5},
	} {
		v, err := unix.GetsockoptInt(conn, c.level, c.opt)
		if err != nil {
			t.Fatal(err)
		}
		if v != c.want {
			t.Errorf("accepted connection: %s = %d, want %d", c.name, v, c.want)
		}
	}
}

// fdOf duplicates descriptor fd of process pid into this one.
func fdOf(t *testing.T, pid, fd int) int {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Skipf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		t.Skipf("pidfd_getfd: %v", err)
	}
	return dup
}

// acceptedSocketOf finds, among process pid's descriptors, the socket
// connected to peer, and duplicates it into this one.
func acceptedSocketOf(t *testing.T, pid int, peer *net.TCPAddr) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:") {
				continue
			}
			n, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			fd := fdOf(t, pid, n)
			if sa, err := unix.Getpeername(fd); err == nil {
				if in4, ok := sa.(*unix.SockaddrInet4); ok && in4.Port == peer.Port && net.IP(in4.Addr[:]).Equal(peer.IP) {
					return fd
				}
			}
			unix.Close(fd)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket of process %d is connected to %s", pid, peer)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A reload that changes only a tcp or tls endpoint's per-connection
// options (nodelay, keepalive, keepalive_interval, keepalive_count) or its
// backlog keeps the socket, and the connections it accepts afterwards get
// the new options: a tcp endpoint's accepted as bare descriptors, a tls
// one's through net. And back to the defaults. reuse_port and v6only,
// which count only at bind, fail the reload, saying so.
func TestReloadRetunesTCPOptions(t *testing.T) {
	tcpAddr, tlsAddr := freeAddr(t), freeAddr(t)
	conf := func(extra string) string {
		return fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "tcp" {
    address = %q
%s
  }
  endpoint "tls" {
    address     = %q
    self_signed = true
%s
  }
}
`, tcpAddr, extra, tlsAddr, extra)
	}
	path, metrics := writeConfig(t, conf(""))
	d := startDaemon(t, path, metrics)
	defer func() {
		d.signal(syscall.SIGTERM)
		d.wait(15 * time.Second)
	}()
	intvl, probes := kernelSysctl(t, "net/ipv4/tcp_keepalive_intvl"), kernelSysctl(t, "net/ipv4/tcp_keepalive_probes")
	check := func(when string, want map[string]int) {
		t.Helper()
		for _, addr := range []string{tcpAddr, tlsAddr} {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if addr == tlsAddr {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
			}
			fd := acceptedSocketOf(t, d.cmd.Process.Pid, c.LocalAddr().(*net.TCPAddr))
			for name, opt := range map[string][2]int{
				"TCP_NODELAY":   {unix.IPPROTO_TCP, unix.TCP_NODELAY},
				"SO_KEEPALIVE":  {unix.SOL_SOCKET, unix.SO_KEEPALIVE},
				"TCP_KEEPIDLE":  {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
				"TCP_KEEPINTVL": {unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
				"TCP_KEEPCNT":   {unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
			} {
				v, err := unix.GetsockoptInt(fd, opt[0], opt[1])
				if err != nil {
					t.Fatal(err)
				}
				if v != want[name] {
					t.Errorf("%s, connection to %s: %s = %d, want %d", when, addr, name, v, want[name])
				}
			}
			unix.Close(fd)
			c.Close()
		}
	}
	check("at start", map[string]int{"TCP_NODELAY": 1, "SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": intvl, "TCP_KEEPCNT": probes})

	rewriteConfig(t, path, metrics, conf(`    backlog            = 17
    nodelay            = false
    keepalive          = "42s"
    keepalive_interval = "7s"
    keepalive_count    = 5`))
	d.reload("success", 1)
	check("after the first reload", map[string]int{"TCP_NODELAY": 0, "SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 42, "TCP_KEEPINTVL": 7, "TCP_KEEPCNT": 5})

	rewriteConfig(t, path, metrics, conf(""))
	d.reload("success", 2)
	check("back to the defaults", map[string]int{"TCP_NODELAY": 1, "SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": intvl, "TCP_KEEPCNT": probes})

	rewriteConfig(t, path, metrics, conf(`    keepalive = "0s"`))
	d.reload("success", 3)
	check("keepalive off", map[string]int{"TCP_NODELAY": 1, "SO_KEEPALIVE": 0, "TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": intvl, "TCP_KEEPCNT": probes})

	rewriteConfig(t, path, metrics, conf(`    reuse_port = true`))
	d.reload("failure", 1)
	if !d.logged("reuse_port (false, now true): set only when the socket is bound") {
		t.Errorf("the failed reload does not say why:\n%s", d.stderr.String())
	}
}

// kernelSysctl reads an integer sysctl under /proc/sys.
func kernelSysctl(t *testing.T, name string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
