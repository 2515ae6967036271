//go:build linux

package rawconn_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/rawconn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ioTimeout = 5 * time.Second

func listen(t *testing.T, cfg endpoint.Config) net.Listener {
	t.Helper()
	ln, err := endpoint.Listen(cfg)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func tcpConfig(t *testing.T, addr string, o endpoint.TCPOptions) endpoint.Config {
	t.Helper()
	a, err := endpoint.ParseAddress(endpoint.KindTCP, addr)
	if err != nil {
		t.Fatal(err)
	}
	return endpoint.Config{Kind: endpoint.KindTCP, Addr: a, TCP: o}
}

func unixConfig(t *testing.T, path string) endpoint.Config {
	t.Helper()
	a, err := endpoint.ParseAddress(endpoint.KindUnix, path)
	if err != nil {
		t.Fatal(err)
	}
	return endpoint.Config{Kind: endpoint.KindUnix, Addr: a}
}

// acceptRaw dials ln and accepts the connection with rawconn.Accept.
func acceptRaw(t *testing.T, ln net.Listener) (server *rawconn.Conn, client net.Conn) {
	t.Helper()
	rl := rawListener(t, ln)
	client, err := net.DialTimeout(ln.Addr().Network(), ln.Addr().String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = rl.Accept()
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	return server, client
}

func rawListener(t *testing.T, ln net.Listener) *rawconn.Listener {
	t.Helper()
	sc, isUnix, laddr, ok := endpoint.RawListener(ln)
	if !ok {
		t.Fatalf("RawListener(%T): not ok", ln)
	}
	rl, err := rawconn.NewListener(sc, isUnix, laddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rl.Close() })
	return rl
}

// acceptNet dials ln and accepts the connection as net does.
func acceptNet(t *testing.T, ln net.Listener, dial string) (server, client net.Conn) {
	t.Helper()
	if dial == "" {
		dial = ln.Addr().String()
	}
	client, err := net.DialTimeout(ln.Addr().Network(), dial, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return server, client
}

func sockopts(t *testing.T, c syscall.Conn) map[string]int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	rc.Control(func(fd uintptr) {
		for name, o := range map[string][2]int{
			"TCP_NODELAY":   {syscall.IPPROTO_TCP, syscall.TCP_NODELAY},
			"SO_KEEPALIVE":  {syscall.SOL_SOCKET, syscall.SO_KEEPALIVE},
			"TCP_KEEPIDLE":  {syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE},
			"TCP_KEEPINTVL": {syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL},
			"TCP_KEEPCNT":   {syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT},
		} {
			v, err := syscall.GetsockoptInt(int(fd), o[0], o[1])
			if err != nil {
				t.Errorf("getsockopt %s: %v", name, err)
			}
			got[name] = v
		}
	})
	return got
}

// The options net sets on each accepted connection reach a bare
// descriptor from the listening socket.
func TestAcceptedOptionsAsNet(t *testing.T) {
	for name, o := range map[string]endpoint.TCPOptions{
		"default":      {},
		"nagle":        {Nagle: true},
		"keepalive":    {Keepalive: 42 * time.Second, KeepaliveInterval: 7 * time.Second, KeepaliveCount: 3},
		"no keepalive": {Keepalive: -1},
	} {
		t.Run(name, func(t *testing.T) {
			ln := listen(t, tcpConfig(t, "127.0.0.1:0", o))
			viaNet, _ := acceptNet(t, ln, "")
			viaRaw, _ := acceptRaw(t, ln)
			want, got := sockopts(t, viaNet.(syscall.Conn)), sockopts(t, viaRaw)
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %d, net's connection has %d", k, got[k], v)
				}
			}
		})
	}
}

// Addresses are the values net gives, down to their types.
func TestAddressesAsNet(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, listen, dial string
		unix               bool
	}{
		{name: "ipv4", listen: "127.0.0.1:0"},
		{name: "ipv6", listen: "[::1]:0"},
		{name: "wildcard, ipv4 client", listen: "[::]:0", dial: "127.0.0.1"},
		{name: "wildcard v4", listen: "0.0.0.0:0", dial: "127.0.0.1"},
		{name: "unix", listen: filepath.Join(dir, "s"), unix: true},
		{name: "abstract", listen: "@superd-rawconn-test", unix: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tcpConfig
			if tc.unix {
				cfg = func(t *testing.T, a string, _ endpoint.TCPOptions) endpoint.Config { return unixConfig(t, a) }
			}
			ln := listen(t, cfg(t, tc.listen, endpoint.TCPOptions{}))
			dial := ""
			if tc.dial != "" {
				dial = net.JoinHostPort(tc.dial, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
			}
			viaNet, _ := acceptNet(t, ln, dial)
			rl := rawListener(t, ln)
			client, err := net.DialTimeout(ln.Addr().Network(), orDefault(dial, ln.Addr().String()), ioTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			viaRaw, err := rl.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer viaRaw.Close()
			check := func(what string, got, want net.Addr) {
				t.Helper()
				if got == nil || want == nil {
					if got != want {
						t.Errorf("%s = %#v, net gives %#v", what, got, want)
					}
					return
				}
				if got.String() != want.String() || got.Network() != want.Network() || typeName(got) != typeName(want) {
					t.Errorf("%s = %s %q (%T), net gives %s %q (%T)", what, got.Network(), got, got, want.Network(), want, want)
				}
			}
			if !tc.unix {
				// Each connection has its own port.
				wantPeer := *viaNet.RemoteAddr().(*net.TCPAddr)
				wantPeer.Port = client.LocalAddr().(*net.TCPAddr).Port
				check("RemoteAddr", viaRaw.RemoteAddr(), &wantPeer)
			} else {
				check("RemoteAddr", viaRaw.RemoteAddr(), viaNet.RemoteAddr())
			}
			check("LocalAddr", viaRaw.LocalAddr(), viaNet.LocalAddr())
		})
	}
}

func typeName(a net.Addr) string {
	switch a.(type) {
	case *net.TCPAddr:
		return "tcp"
	case *net.UnixAddr:
		return "unix"
	}
	return "other"
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Reads and writes that must wait (an empty socket, a full send buffer)
// wait in the runtime's poller, and every byte arrives.
func TestWaitsAndDelivers(t *testing.T) {
	ln := listen(t, tcpConfig(t, "127.0.0.1:0", endpoint.TCPOptions{}))
	server, client := acceptRaw(t, ln)
	payload := make([]byte, 8<<20)
	rand.Read(payload)

	// The server's read waits: nothing has been sent yet.
	got := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		b := make([]byte, 32<<10)
		for buf.Len() < len(payload) {
			n, err := server.Read(b)
			buf.Write(b[:n])
			if err != nil {
				break
			}
		}
		got <- buf.Bytes()
	}()
	client.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := client.Write(payload); err != nil {
		t.Fatal(err)
	}
	if b := <-got; sha256.Sum256(b) != sha256.Sum256(payload) {
		t.Fatalf("server read %d bytes, not what was sent", len(b))
	}

	// The server's write fills the socket's buffers and waits for the
	// client to read.
	wrote := make(chan error, 1)
	go func() {
		n, err := server.Write(payload)
		if err == nil && n != len(payload) {
			err = errors.New("short write")
		}
		wrote <- err
	}()
	back := make([]byte, len(payload))
	if _, err := io.ReadFull(client, back); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, payload) {
		t.Fatal("client read something else than the server wrote")
	}
}

func TestDeadlinesAndClose(t *testing.T) {
	ln := listen(t, tcpConfig(t, "127.0.0.1:0", endpoint.TCPOptions{}))
	server, _ := acceptRaw(t, ln)
	if err := server.SetReadDeadline(time.Time{}); err != nil {
		t.Fatalf("clearing a deadline never set: %v", err)
	}
	server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	var ne net.Error
	server.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := server.Read(make([]byte, 1)); done <- err }()
	// Whether the read waits in the poller by now or starts after, Close
	// ends it.
	server.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read interrupted by Close: %v, want net.ErrClosed", err)
	}
	if err := server.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
	if _, err := server.Write([]byte("x")); !errors.As(err, &ne) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

// A connection closed before it ever waited closes its descriptor.
func TestCloseBareDescriptor(t *testing.T) {
	ln := listen(t, tcpConfig(t, "127.0.0.1:0", endpoint.TCPOptions{}))
	server, client := acceptRaw(t, ln)
	if _, err := server.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(client)
	if err != nil || string(b) != "bye" {
		t.Fatalf("client read %q, %v; want \"bye\" then EOF", b, err)
	}
}

func TestCloseWriteAndLinger(t *testing.T) {
	ln := listen(t, tcpConfig(t, "127.0.0.1:0", endpoint.TCPOptions{}))
	server, client := acceptRaw(t, ln)
	client.SetDeadline(time.Now().Add(ioTimeout))
	if err := server.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read after CloseWrite: %d, %v; want EOF", n, err)
	}
	// The other direction still works.
	client.Write([]byte("up"))
	b := make([]byte, 2)
	server.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.ReadFull(server, b); err != nil || string(b) != "up" {
		t.Fatalf("server read %q, %v", b, err)
	}

	server2, client2 := acceptRaw(t, ln)
	client2.SetDeadline(time.Now().Add(ioTimeout))
	server2.SetLinger(0)
	server2.Close()
	if _, err := client2.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after SetLinger(0) and Close: %v, want ECONNRESET", err)
	}
}

func TestAcceptDeadlineAndClose(t *testing.T) {
	ln := listen(t, tcpConfig(t, "127.0.0.1:0", endpoint.TCPOptions{}))
	rl := rawListener(t, ln)
	rl.SetDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := rl.Accept(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Accept past the deadline: %v", err)
	}
	rl.SetDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := rl.Accept(); done <- err }()
	rl.Close() // whether Accept waits by now or not

	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v, want net.ErrClosed", err)
	}
}

func TestPeerCredentials(t *testing.T) {
	ln := listen(t, unixConfig(t, filepath.Join(t.TempDir(), "s")))
	server, _ := acceptRaw(t, ln)
	cred, ok := framework.PeerCredentials(server)
	if !ok || cred.UID != uint32(os.Getuid()) || cred.GID != uint32(os.Getgid()) || cred.PID != int32(os.Getpid()) {
		t.Fatalf("PeerCredentials = %+v, %v; want this process", cred, ok)
	}
	tln := listen(t, tcpConfig(t, "127.0.0.1:0", endpoint.TCPOptions{}))
	tserver, _ := acceptRaw(t, tln)
	if _, ok := framework.PeerCredentials(tserver); ok {
		t.Fatal("a TCP connection has peer credentials")
	}
}

// Standard hands the connection to net with nothing lost.
func TestStandard(t *testing.T) {
	ln := listen(t, tcpConfig(t, "127.0.0.1:0", endpoint.TCPOptions{}))
	server, client := acceptRaw(t, ln)
	client.SetDeadline(time.Now().Add(ioTimeout))
	client.Write([]byte("before"))
	nc, err := server.Standard()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, ok := nc.(*net.TCPConn); !ok {
		t.Fatalf("Standard gave a %T", nc)
	}
	if nc.RemoteAddr().String() != client.LocalAddr().String() {
		t.Fatalf("RemoteAddr %s, want %s", nc.RemoteAddr(), client.LocalAddr())
	}
	nc.SetDeadline(time.Now().Add(ioTimeout))
	b := make([]byte, 6)
	if _, err := io.ReadFull(nc, b); err != nil || string(b) != "before" {
		t.Fatalf("read %q, %v", b, err)
	}
	nc.Write([]byte("after"))
	if _, err := io.ReadFull(client, b[:5]); err != nil || string(b[:5]) != "after" {
		t.Fatalf("client read %q, %v", b[:5], err)
	}
	if _, err := server.Read(b); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the bare connection after Standard: %v, want net.ErrClosed", err)
	}
}

// An idle connection costs this much beside its peer's address.
func TestConnSize(t *testing.T) {
	if got := unsafe.Sizeof(rawconn.Conn{}); got > 48 {
		t.Errorf("rawconn.Conn is %d bytes; 48 is the allocator's size class it is meant to fit", got)
	}
}

// A connection handed to net by Standard keeps the options its endpoint
// gave it, as net's own accepted connection has them.
func TestStandardKeepsOptions(t *testing.T) {
	for name, o := range map[string]endpoint.TCPOptions{
		"nagle":        {Nagle: true},
		"keepalive":    {Keepalive: 42 * time.Second, KeepaliveInterval: 7 * time.Second, KeepaliveCount: 3},
		"no keepalive": {Keepalive: -1},
	} {
		t.Run(name, func(t *testing.T) {
			ln := listen(t, tcpConfig(t, "127.0.0.1:0", o))
			viaNet, _ := acceptNet(t, ln, "")
			viaRaw, _ := acceptRaw(t, ln)
			nc, err := viaRaw.Standard()
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			want, got := sockopts(t, viaNet.(syscall.Conn)), sockopts(t, nc.(syscall.Conn))
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %d after Standard, net's connection has %d", k, got[k], v)
				}
			}
		})
	}
}

// Setting a deadline on a closed connection fails as on net's, whether
// or not the connection ever waited.
func TestDeadlineAfterClose(t *testing.T) {
	ln := listen(t, tcpConfig(t, "127.0.0.1:0", endpoint.TCPOptions{}))
	for _, waited := range []bool{false, true} {
		server, _ := acceptRaw(t, ln)
		if waited {
			server.SetReadDeadline(time.Now().Add(time.Hour)) // into the runtime's poller
		}
		server.Close()
		for name, set := range map[string]func(time.Time) error{
			"SetDeadline": server.SetDeadline, "SetReadDeadline": server.SetReadDeadline, "SetWriteDeadline": server.SetWriteDeadline,
		} {
			var ne net.Error
			if err := set(time.Now()); !errors.Is(err, net.ErrClosed) || !errors.As(err, &ne) {
				t.Errorf("waited %v: %s after Close: %v, want a net.Error that is net.ErrClosed", waited, name, err)
			}
		}
	}
}
