//go:build unix

package endpoint

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const ioTimeout = 5 * time.Second

// listen opens cfg with Listen and closes it at the end of the test.
func listen(t *testing.T, cfg Config) net.Listener {
	t.Helper()
	ln, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// roundTrip dials ln and checks that a byte goes each way through the
// accepted connection.
func roundTrip(t *testing.T, ln net.Listener) {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- result{c, err}
	}()
	client, err := net.DialTimeout(ln.Addr().Network(), ln.Addr().String(), ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", ln.Addr(), err)
	}
	defer client.Close()
	r := <-accepted
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	server := r.c
	defer server.Close()
	deadline := time.Now().Add(ioTimeout)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)

	if _, err := client.Write([]byte("p")); err != nil {
		t.Fatalf("client write: %v", err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(server, buf); err != nil || buf[0] != 'p' {
		t.Fatalf("server read: %q, %v", buf, err)
	}
	if _, err := server.Write([]byte("q")); err != nil {
		t.Fatalf("server write: %v", err)
	}
	if _, err := io.ReadFull(client, buf); err != nil || buf[0] != 'q' {
		t.Fatalf("client read: %q, %v", buf, err)
	}
}

// checkClosed checks that Accept on a closed listener fails with
// net.ErrClosed, which the supervisor's accept loop relies on.
func checkClosed(t *testing.T, ln net.Listener) {
	t.Helper()
	if err := ln.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}

func hasIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

func TestListenTCP(t *testing.T) {
	for _, tc := range []struct {
		name, address string
		ipv6          bool
	}{
		{"ipv4", "127.0.0.1:0", false},
		{"ipv6", "[::1]:0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ipv6 && !hasIPv6Loopback() {
				t.Skip("no IPv6 loopback on this machine")
			}
			for _, kind := range []string{KindTCP, KindTLS} {
				ln := listen(t, Config{Kind: kind, Label: kind + ":" + tc.address, Addr: mustParse(kind, tc.address)})
				if _, ok := ln.(*tcpListener); !ok {
					t.Fatalf("%s listener is a %T, want *tcpListener", kind, ln)
				}
				roundTrip(t, ln)
				checkClosed(t, ln)
			}
		})
	}
}

func TestListenTCPAddressInUse(t *testing.T) {
	first := listen(t, Config{Kind: KindTCP, Label: "tcp:127.0.0.1:0", Addr: mustParse(KindTCP, "127.0.0.1:0")})
	addr := first.Addr().String()
	label := "tcp:" + addr

	_, err := Listen(Config{Kind: KindTCP, Label: label, Addr: mustParse(KindTCP, addr)})
	if err == nil {
		t.Fatal("second Listen on the same address succeeded")
	}
	_, port, _ := net.SplitHostPort(addr)
	want := "listen " + label + ": address already in use: another process holds port " + port +
		" (`ss -ltnp 'sport = :" + port + "'` shows which)"
	if err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v does not wrap EADDRINUSE", err)
	}
	var le *ListenError
	if !errors.As(err, &le) || le.Label != label {
		t.Errorf("error %#v is not a *ListenError for %s", err, label)
	}
	roundTrip(t, first) // the first listener is unharmed
}

func TestListenErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no address", Config{Kind: KindTCP, Label: "tcp:nonsense"},
			"listen tcp:nonsense: no tcp address"},
		{"address of another network", Config{Kind: KindTCP, Addr: mustParse(KindUDP, "127.0.0.1:0")},
			"listen tcp:127.0.0.1:0: no tcp address"},
		{"label made up when empty", Config{Kind: KindTCP, Addr: mustParse(KindTCP, "192.0.2.1:1")},
			"listen tcp:192.0.2.1:1: "},
		{"unknown kind", Config{Kind: "sctp", Label: "sctp:x", Addr: mustParse(KindTCP, "127.0.0.1:0")},
			`listen sctp:x: unknown endpoint kind "sctp"`},
		{"udp", Config{Kind: KindUDP, Label: "udp:x", Addr: mustParse(KindUDP, "127.0.0.1:0")},
			"listen udp:x: a udp endpoint has no listener (see ListenUDP)"},
		{"empty path", Config{Kind: KindUnix, Label: "unix:"}, "listen unix:: empty socket path"},
		{"path too long", Config{Kind: KindUnix, Addr: Address{Network: NetworkUnix, Path: "/" + strings.Repeat("x", 200)}},
			"is 201 bytes long, and the system takes at most"},
		{"missing folder", Config{Kind: KindUnix, Addr: mustParse(KindUnix, filepath.Join(dir, "nope", "s.sock"))},
			"listen unix:" + filepath.Join(dir, "nope", "s.sock") + ": no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := Listen(tc.cfg)
			if err == nil {
				ln.Close()
				t.Fatalf("Listen(%+v) succeeded", tc.cfg)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func unixConfig(path string, mode fs.FileMode) Config {
	return Config{Kind: KindUnix, Label: "unix:" + path, Addr: Address{Network: NetworkUnix, Path: path}, Mode: mode}
}

func TestListenUnixMode(t *testing.T) {
	// The mode must be exact whatever the umask: more bits than it allows
	// (0666 under 022) and fewer than it leaves (0600).
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)

	for _, tc := range []struct {
		name string
		mode fs.FileMode
		want fs.FileMode
	}{
		{"0600", 0o600, 0o600},
		{"0660", 0o660, 0o660},
		{"0666", 0o666, 0o666},
		{"default", 0, DefaultUnixMode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			ln := listen(t, unixConfig(path, tc.mode))
			// Before any Accept.
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket {
				t.Fatalf("%s is %v, not a socket", path, fi.Mode())
			}
			if got := fi.Mode().Perm(); got != tc.want {
				t.Errorf("mode = %#o, want %#o", got, tc.want)
			}
			if _, ok := ln.(*UnixListener); !ok {
				t.Errorf("listener is a %T, want *UnixListener", ln)
			}
			if got := ln.Addr().String(); got != path {
				t.Errorf("Addr() = %q, want %q", got, path)
			}
			roundTrip(t, ln)
		})
	}
}

func TestListenUnixRemovedOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln := listen(t, unixConfig(path, 0o600))
	roundTrip(t, ln)
	checkClosed(t, ln)
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket file after Close: %v, want it removed", err)
	}
	// And the path can be listened on again.
	roundTrip(t, listen(t, unixConfig(path, 0o600)))
}

// precious creates a regular file with mode 0600 that no unix endpoint may
// change or remove, and returns its path.
func precious(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "precious")
	if err := os.WriteFile(p, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkPrecious checks that the file precious made is as it was.
func checkPrecious(t *testing.T, p string) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if got := fi.Mode(); got != 0o600 {
		t.Errorf("%s has mode %v, want -rw------- (unchanged)", p, got)
	}
	if data, err := os.ReadFile(p); err != nil || string(data) != "precious" {
		t.Errorf("%s holds %q, %v", p, data, err)
	}
}

// swapForSymlink replaces path with a symbolic link to target.
func swapForSymlink(t *testing.T, path, target string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// A path swapped for a symbolic link between bind and the setting of the
// mode: the link's target keeps its mode, and the link stays.
func TestListenUnixModeNeverFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	target := precious(t, dir)
	path := filepath.Join(dir, "s.sock")
	testHookBound = func(p string) { swapForSymlink(t, p, target) }
	t.Cleanup(func() { testHookBound = nil })

	ln, err := Listen(unixConfig(path, 0o666))
	checkPrecious(t, target)
	if err == nil {
		ln.Close()
		t.Fatal("Listen succeeded although its socket file was replaced by a symbolic link")
	}
	want := "listen unix:" + path + ": " + path + " is no longer the socket superd bound there (something replaced it); not changing its mode"
	if err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if got, err := os.Readlink(path); err != nil || got != target {
		t.Errorf("the symbolic link after Listen: %q, %v; want it left alone", got, err)
	}
}

// SetFileAttrs (a reload changing the mode of a socket it keeps) acts on
// the socket file bound, never on what a symbolic link put in its place
// points to.
func TestUnixListenerSetFileAttrs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	ln := listen(t, unixConfig(path, 0o600)).(*UnixListener)
	if _, err := ln.SetFileAttrs(unixConfig(path, 0o640)); err != nil {
		t.Fatalf("SetFileAttrs(0640): %v", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("after SetFileAttrs(0640): %v, %v", fi.Mode(), err)
	}

	target := precious(t, dir)
	swapForSymlink(t, path, target)
	_, err := ln.SetFileAttrs(unixConfig(path, 0o666))
	if err == nil || !strings.Contains(err.Error(), "is no longer the socket superd bound there") {
		t.Errorf("SetFileAttrs after the path became a symbolic link: %v", err)
	}
	checkPrecious(t, target)
}

// Close removes the socket file only while the path still names it:
// whatever was put in its place stays.
func TestListenUnixCloseLeavesReplacedFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		replace func(t *testing.T, path string)
		check   func(t *testing.T, path string)
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, checkPrecious},
		{"another socket", func(t *testing.T, path string) {
			other, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			other.SetUnlinkOnClose(false)
			t.Cleanup(func() { other.Close() })
		}, func(t *testing.T, path string) {
			if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
				t.Errorf("the other socket after Close: %v, %v; want it left alone", fi, err)
			}
		}},
		{"symbolic link", func(t *testing.T, path string) {
			if err := os.Symlink("/nonexistent", path); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, path string) {
			if got, err := os.Readlink(path); err != nil || got != "/nonexistent" {
				t.Errorf("the symbolic link after Close: %q, %v; want it left alone", got, err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			ln, err := Listen(unixConfig(path, 0o600))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			tc.replace(t, path)
			checkClosed(t, ln)
			tc.check(t, path)
		})
	}
}

func TestListenUnixRelativePath(t *testing.T) {
	t.Chdir(t.TempDir())
	ln := listen(t, unixConfig("rel.sock", 0o600))
	roundTrip(t, ln)
	checkClosed(t, ln)
	if _, err := os.Lstat("rel.sock"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket file after Close: %v, want it removed", err)
	}
}

func TestListenUnixReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	// A socket left behind by a server that died without cleaning up.
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("stale socket not in place: %v, %v", fi, err)
	}

	ln := listen(t, unixConfig(path, 0o600))
	roundTrip(t, ln)
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("replaced socket: %v, %v", fi, err)
	}
}

func TestListenUnixRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	before, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}

	ln, err := Listen(unixConfig(path, 0o600))
	if err == nil {
		ln.Close()
		t.Fatal("Listen on a live server's socket succeeded")
	}
	want := "listen unix:" + path + ": a server is already listening on " + path
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error = %q, want prefix %q", err, want)
	}
	after, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("live socket file gone: %v", err)
	}
	if !os.SameFile(before, after) {
		t.Fatal("live socket file was replaced")
	}
	// The live server still gets its connections. (It also got the probe,
	// which was closed at once: drain it first.)
	probe, err := live.Accept()
	if err != nil {
		t.Fatal(err)
	}
	probe.Close()
	roundTrip(t, live)
}

func TestListenUnixRefusesNonSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	// A link to a stale socket is still not ours to replace.
	stale := filepath.Join(dir, "stale.sock")
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close()
	link := filepath.Join(dir, "link")
	if err := os.Symlink(stale, link); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ path, what string }{
		{file, "a regular file"},
		{sub, "a directory"},
		{link, "a symbolic link"},
	} {
		ln, err := Listen(unixConfig(tc.path, 0o600))
		if err == nil {
			ln.Close()
			t.Fatalf("Listen on %s succeeded", tc.what)
		}
		want := "listen unix:" + tc.path + ": " + tc.path + " exists and is not a socket (" + tc.what + ")"
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("error = %q, want prefix %q", err, want)
		}
	}
	if data, err := os.ReadFile(file); err != nil || string(data) != "precious" {
		t.Errorf("regular file after Listen: %q, %v", data, err)
	}
	if fi, err := os.Stat(sub); err != nil || !fi.IsDir() {
		t.Errorf("directory after Listen: %v, %v", fi, err)
	}
	if target, err := os.Readlink(link); err != nil || target != stale {
		t.Errorf("link after Listen: %q, %v", target, err)
	}
	if fi, err := os.Lstat(stale); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("link target after Listen: %v, %v", fi, err)
	}
}

func TestListenUnixUnprobeableSocketKept(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root connects whatever the socket's mode")
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := os.Chmod(path, 0o000); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(unixConfig(path, 0o600))
	if err == nil {
		ln.Close()
		t.Fatal("Listen on a socket it cannot probe succeeded")
	}
	if !strings.Contains(err.Error(), "could not be probed (permission denied); not removing it") {
		t.Errorf("error = %q", err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("socket file gone: %v", err)
	}
}

// SetFileAttrs reports what it changed, and its restore puts it back; with
// nothing to change it changes nothing (no restore).
func TestUnixListenerSetFileAttrsRestore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.sock")
	ln := listen(t, unixConfig(path, 0o600)).(*UnixListener)
	restore, err := ln.SetFileAttrs(unixConfig(path, 0o600))
	if err != nil || restore != nil {
		t.Fatalf("SetFileAttrs(same mode) = %v, %v; want nothing to restore", restore != nil, err)
	}
	restore, err = ln.SetFileAttrs(unixConfig(path, 0o640))
	if err != nil || restore == nil {
		t.Fatalf("SetFileAttrs(0640) = %v, %v", restore != nil, err)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("after restore: %v, %v; want 0600", fi.Mode(), err)
	}
}
