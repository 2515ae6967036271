package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lowPort finds a free port below 1024 on 127.0.0.1 (binding it needs
// root).
func lowPort(t *testing.T, not int) int {
	t.Helper()
	// From a random start, so test runs side by side rarely pick the same
	// port between this probe and superd's bind.
	start := rand.IntN(424)
	for i := range 424 {
		p := 600 + (start+i)%424
		if p == not {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			ln.Close()
			return p
		}
	}
	t.Skip("no free port below 1024 on 127.0.0.1")
	return 0
}

// Started as root with user = "nobody", superd binds a port below 1024,
// then runs as nobody (every uid and gid field of /proc/PID/status), and
// serves; a reload that needs root (another port below 1024) fails as a
// reload does, with the cause in the log, and changes nothing.
func TestPrivilegeDrop(t *testing.T) {
	nobody := nobodyUser(t)
	port := lowPort(t, 0)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	text := fmt.Sprintf(`
user = "nobody"
metrics { address = "METRICS" }
service "echo" "low" {
  endpoint "tcp" { address = %q }
}
`, addr)
	path, metrics := writeConfig(t, text)
	// nobody must be able to read the file for a reload.
	os.Chmod(filepath.Dir(filepath.Dir(path)), 0o755)
	os.Chmod(filepath.Dir(path), 0o755)
	os.Chmod(path, 0o644)
	d := startDaemon(t, path, metrics)
	if err := echoOnce("tcp", addr, "as nobody"); err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		var want string
		switch {
		case strings.HasPrefix(line, "Uid:"):
			want = nobody.Uid
		case strings.HasPrefix(line, "Gid:"):
			want = nobody.Gid
		default:
			continue
		}
		for _, f := range strings.Fields(line)[1:] {
			if f != want {
				t.Errorf("%s: want every field %s", line, want)
			}
		}
	}
	if !d.logged("dropped privileges") {
		t.Error("the drop is not logged")
	}

	port2 := lowPort(t, port)
	rewriteConfig(t, path, metrics, text+fmt.Sprintf(`
service "echo" "low2" {
  endpoint "tcp" { address = "127.0.0.1:%d" }
}
`, port2))
	os.Chmod(path, 0o644)
	d.signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, _ := metric(d.scrape(), "superd_config_reloads_total", map[string]string{"result": "failure"})
		if v == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reload needing root did not fail\n%s", d.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if log := d.stderr.String(); !strings.Contains(log, "permission denied") || !strings.Contains(log, strconv.Itoa(port2)) {
		t.Errorf("the failed reload does not name its cause and endpoint:\n%s", log)
	}
	if err := echoOnce("tcp", addr, "still serving"); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// A user superd cannot become (it does not run as root) fails at start.
func TestPrivilegeDropNeedsRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("the test needs to run as a user other than root")
	}
	path, metrics := writeConfig(t, fmt.Sprintf(`
user = "root"
metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "tcp" { address = %q }
}
`, freeAddr(t)))
	_ = metrics
	out, err := exec.Command(superdBin, "run", "-config", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs superd to start as root") {
		t.Fatalf("got %v:\n%s", err, out)
	}
}

// Nothing is served as root: clients already waiting in the listen queue
// when superd starts are accepted only once it runs as nobody, so a
// program it runs for them (with no user of its own) is nobody's too.
func TestPrivilegeDropBeforeTheFirstConnection(t *testing.T) {
	nobody := nobodyUser(t)
	id, err := exec.LookPath("id")
	if err != nil {
		t.Skip("no id program")
	}
	addr := freeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
user = "nobody"
metrics { address = "METRICS" }
service "exec" "whoami" {
  command = [%q, "-u"]
  endpoint "tcp" { address = %q }
}
`, id, addr))
	os.Chmod(filepath.Dir(filepath.Dir(path)), 0o755)
	os.Chmod(filepath.Dir(path), 0o755)
	os.Chmod(path, 0o644)
	// Clients dial from before superd starts, so the first ones wait in
	// the listen queue from the moment the socket is bound, as early as
	// any client can come.
	const clients = 8
	answers := make(chan string, clients)
	stop := make(chan struct{})
	defer close(stop)
	for range clients {
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					time.Sleep(time.Millisecond)
					continue
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				out, err := io.ReadAll(c)
				c.Close()
				if err != nil {
					answers <- "error: " + err.Error()
				} else {
					answers <- strings.TrimSpace(string(out))
				}
				return
			}
		}()
	}
	d := startDaemon(t, path, metrics)
	for range clients {
		select {
		case got := <-answers:
			if got != nobody.Uid {
				t.Errorf("a program run for an early client ran as uid %q, want nobody's %s", got, nobody.Uid)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("an early client got no answer")
		}
	}
	d.stop(10 * time.Second)
}

// An exec service's user is checked against the identity superd serves
// as, after it has dropped privileges, not the root it starts as: the
// same user as superd's runs programs (superd keeps its groups, which it
// may no longer set), and another user fails at start, for that reason.
func TestExecUserAfterPrivilegeDrop(t *testing.T) {
	nobody := nobodyUser(t)
	if _, err := user.Lookup("daemon"); err != nil {
		t.Skip("no user daemon on this system")
	}
	id, err := exec.LookPath("id")
	if err != nil {
		t.Skip("no id program")
	}
	readable := func(path string) {
		os.Chmod(filepath.Dir(filepath.Dir(path)), 0o755)
		os.Chmod(filepath.Dir(path), 0o755)
		os.Chmod(path, 0o644)
	}

	addr := freeAddr(t)
	path, metrics := writeConfig(t, fmt.Sprintf(`
user = "nobody"
metrics { address = "METRICS" }
service "exec" "whoami" {
  command = [%q, "-u"]
  user    = "nobody"
  endpoint "tcp" { address = %q }
}
`, id, addr))
	readable(path)
	d := startDaemon(t, path, metrics)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	out, err := io.ReadAll(c)
	c.Close()
	if got := strings.TrimSpace(string(out)); err != nil || got != nobody.Uid {
		t.Errorf("user = nobody under a superd running as nobody: the program printed %q, %v; want uid %s\n%s",
			got, err, nobody.Uid, lastBytes(d.stderr.String(), 2000))
	}
	d.stop(10 * time.Second)

	path, _ = writeConfig(t, fmt.Sprintf(`
user = "nobody"
metrics { address = "METRICS" }
service "exec" "other" {
  command = [%q, "-u"]
  user    = "daemon"
  endpoint "tcp" { address = %q }
}
`, id, freeAddr(t)))
	readable(path)
	cmd := exec.Command(superdBin, "run", "-config", path)
	done := make(chan struct{})
	var runOut []byte
	var runErr error
	go func() {
		runOut, runErr = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("superd started with user = \"nobody\" and an exec service with user = \"daemon\"; want a failure at start\n%s", runOut)
	}
	if runErr == nil || !strings.Contains(string(runOut), "needs superd to run as root") {
		t.Errorf("superd as nobody with an exec service as daemon: %v\n%s", runErr, runOut)
	}
}

// After the drop, a reload that replaces a service with a unix endpoint
// keeps its socket file (root's, as superd made it) untouched when its
// owner and mode stay: no permission is needed and nothing is logged as
// an error. A reload that changes its mode, which superd can no longer do,
// fails as a reload does, with the cause, and changes nothing.
func TestPrivilegeDropReloadUnixSocket(t *testing.T) {
	nobodyUser(t)
	sockDir := t.TempDir()
	sock := filepath.Join(sockDir, "e.sock")
	service := func(extra string) string {
		return fmt.Sprintf(`
user = "nobody"
metrics { address = "METRICS" }
service "echo" "e" {
  %s
  endpoint "unix" {
    path = %q
  }
}
`, extra, sock)
	}
	path, metrics := writeConfig(t, service(""))
	// nobody must be able to read the file, and reach the socket's folder.
	openToOthers(filepath.Dir(filepath.Dir(path)), filepath.Dir(path), filepath.Dir(sockDir), sockDir)
	d := startDaemon(t, path, metrics)
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 || ownerUID(fi) != 0 {
		t.Fatalf("socket file %v (uid %d), %v; want root's, 0660", fi.Mode(), ownerUID(fi), err)
	}

	// The service changes, its socket file's owner and mode do not.
	rewriteConfig(t, path, metrics, service("max_connections = 5"))
	d.reload("success", 1)
	if !d.logged("service replaced") {
		t.Fatal("the service was not replaced")
	}
	if strings.Contains(d.stderr.String(), "level=ERROR") {
		t.Errorf("a reload that changes nothing of the socket file logged an error:\n%s", d.stderr.String())
	}
	if err := echoOnce("unix", sock, "kept"); err != nil {
		t.Fatal(err)
	}

	// A mode superd, now nobody, cannot give root's file.
	text := strings.Replace(service("max_connections = 6"), "path = ", "mode = \"0666\"\n    path = ", 1)
	rewriteConfig(t, path, metrics, text)
	d.reload("failure", 1)
	if v, _ := metric(d.scrape(), "superd_config_reloads_total", map[string]string{"result": "success"}); v != 1 {
		t.Errorf("reloads succeeded: %v, want 1", v)
	}
	if !d.logged("operation not permitted") || !d.logged(sock) {
		t.Errorf("the failed reload does not name its cause and the socket:\n%s", d.stderr.String())
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket file after the failed reload: %v, %v; want 0660", fi.Mode(), err)
	}
	if err := echoOnce("unix", sock, "still serving"); err != nil {
		t.Fatal(err)
	}
	d.stop(10 * time.Second)
}

// nobodyUser is the user nobody, which the privilege-drop tests switch
// to; it skips t unless the test runs as root and the system has one.
func nobodyUser(t *testing.T) *user.User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("dropping privileges needs the test to run as root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody on this system")
	}
	return nobody
}

// openToOthers lets every user read and enter dirs (mode 0755): the
// configuration file's folders and a socket's, for superd once it runs
// as nobody.
func openToOthers(dirs ...string) {
	for _, dir := range dirs {
		os.Chmod(dir, 0o755)
	}
}

func ownerUID(fi os.FileInfo) int {
	if fi == nil {
		return -1
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}

// A unix socket file superd made as root, in a folder its user may not
// write to, cannot be removed at shutdown once superd has dropped root:
// it says so, naming the file, rather than leaving it silently.
func TestPrivilegeDropSocketFileLeftIsLogged(t *testing.T) {
	nobodyUser(t)
	sockDir := t.TempDir()
	sock := filepath.Join(sockDir, "e.sock")
	path, metrics := writeConfig(t, fmt.Sprintf(`
user = "nobody"
metrics { address = "METRICS" }
service "echo" "e" {
  endpoint "unix" { path = %q }
}
`, sock))
	// root's: nobody may not write there
	openToOthers(filepath.Dir(filepath.Dir(path)), filepath.Dir(path), filepath.Dir(sockDir), sockDir)
	d := startDaemon(t, path, metrics)
	if err := echoOnce("unix", sock, "as nobody"); err != nil {
		t.Fatal(err)
	}
	d.stop(10 * time.Second)
	if _, err := os.Lstat(sock); err != nil {
		t.Skipf("the socket file was removed after all (%v)", err)
	}
	if log := d.stderr.String(); !strings.Contains(log, "cannot remove the socket file") || !strings.Contains(log, sock) ||
		!strings.Contains(log, "permission denied") {
		t.Errorf("the socket file left at shutdown is not reported:\n%s", log)
	}
}

// After the drop, a reload that replaces a service whose unix socket sits
// in a folder only root may enter (superd, now nobody, cannot even look at
// the file) succeeds when the endpoint asks for the same owner and mode.
func TestPrivilegeDropReloadUnixSocketInRootFolder(t *testing.T) {
	nobodyUser(t)
	sockDir := t.TempDir()
	if err := os.Chmod(sockDir, 0o700); err != nil { // root's alone
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "e.sock")
	service := func(extra string) string {
		return fmt.Sprintf(`
user = "nobody"
metrics { address = "METRICS" }
service "echo" "e" {
  %s
  endpoint "unix" { path = %q }
}
`, extra, sock)
	}
	path, metrics := writeConfig(t, service(""))
	openToOthers(filepath.Dir(filepath.Dir(path)), filepath.Dir(path))
	d := startDaemon(t, path, metrics)
	rewriteConfig(t, path, metrics, service("max_connections = 5"))
	d.reload("success", 1)
	if err := echoOnce("unix", sock, "kept"); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
