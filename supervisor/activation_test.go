package supervisor

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/metrics"
)

// describeInherited gives a passed socket the address (and so the key) an
// endpoint on the same socket has: a unix path, an abstract "@NAME", none
// for an unnamed socket.
func TestDescribeInheritedUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.sock")
	abstract := fmt.Sprintf("@superd-test/%d/describe", os.Getpid())
	for _, tc := range []struct {
		name   string
		listen string
		key    string
	}{
		{"path", path, "unix:" + path},
		{"abstract", abstract, "unix:" + abstract},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("unix", tc.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			f, err := ln.(*net.UnixListener).File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			in, err := describeInherited(f)
			if err != nil {
				t.Fatal(err)
			}
			if !in.stream || in.addr.Key() != tc.key {
				t.Errorf("stream %v, key %q; want a stream socket with key %q", in.stream, in.addr.Key(), tc.key)
			}
			ep := makeEndpoint(endpoint.KindUnix, tc.listen)
			if ep.Addr.Key() != in.addr.Key() {
				t.Errorf("the endpoint's key %q is not the passed socket's %q", ep.Addr.Key(), in.addr.Key())
			}
		})
	}
	t.Run("unnamed", func(t *testing.T) {
		// Datagrams: a stream socket without an address is no listener
		// (listen(2) would have bound it), and is refused as such.
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		f, g := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
		defer f.Close()
		defer g.Close()
		in, err := describeInherited(f)
		if err != nil {
			t.Fatal(err)
		}
		if k := in.addr.Key(); k != "" {
			t.Errorf("an unnamed socket has the key %q; want none (only a name takes it)", k)
		}
	})
}

// A stream socket passed that is not listening (a connection: what a
// socket unit with Accept=yes passes) is refused, with a warning that says
// why, instead of being taken as a listener whose every accept fails: the
// endpoint binds its own socket and serves.
func TestInheritedConnectionIsNotAListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	client, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The connection's local address is the endpoint's: the address match
	// would take it.
	f, err := conn.(*net.TCPConn).File()
	conn.Close()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.Buffer
	s := New(slog.New(slog.NewTextHandler(&logs, nil)), metrics.New("test"))
	s.Inherit([]*os.File{f})
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("passed", &lifecycleFactory{}, config.Limits{}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	dialEcho(t, "tcp", addr, "served").Close()
	if log := logs.String(); !strings.Contains(log, "not listening") || !strings.Contains(log, "Accept=yes") {
		t.Errorf("no warning that the passed socket is a connection (Accept=yes?):\n%s", log)
	}
	if st, _ := s.Status(false); len(st) != 1 || st[0].Endpoints[0].Inherited {
		t.Errorf("the endpoint took the passed connection: %+v", st)
	}
}

// passedTCPListener is a listening TCP socket on a free loopback port as
// the service manager passes one: a File named name (its LISTEN_FDNAMES
// entry, as go-systemd's activation.Files names it) on a descriptor of its
// own, closed at the end. (Two Files on one descriptor would close it
// twice, the second time from a finalizer, closing whatever socket of a
// later test has the number by then.)
func passedTCPListener(t *testing.T, name string) (f *os.File, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	lf, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(lf.Fd()))
	lf.Close()
	if err != nil {
		t.Fatal(err)
	}
	f = os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f, addr
}

// Several passed sockets with one name (systemd's FileDescriptorName=
// names every socket of its unit): each endpoint with that name takes the
// one bound to its own address, whatever the order of the endpoints.
func TestInheritedSameNameGoesByAddress(t *testing.T) {
	var files []*os.File
	var addrs []string
	for range 2 {
		f, addr := passedTCPListener(t, "web")
		files = append(files, f)
		addrs = append(addrs, addr)
	}
	s, _ := newTestSupervisor()
	s.Inherit(files)
	named := func(addr string) endpoint.Config {
		ep := tcpEndpoint(addr)
		ep.Name = "web"
		return ep
	}
	// The endpoints in the other order than the sockets.
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("second", &lifecycleFactory{greet: []byte("second")}, config.Limits{}, named(addrs[1])),
		serviceConfig("first", &lifecycleFactory{greet: []byte("first!")}, config.Limits{}, named(addrs[0])),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	for i, want := range []string{"first!", "second"} {
		c, err := net.Dial("tcp", addrs[i])
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, len(want))
		_, err = io.ReadFull(c, buf)
		c.Close()
		if err != nil || string(buf) != want {
			t.Errorf("%s: greeted by %q (%v); want the service whose endpoint has this address, %q", addrs[i], buf, err, want)
		}
	}
}

// A reload that changes the address of an endpoint named after a passed
// socket (the address it binds when no socket is passed) keeps it on the
// passed socket, as a reload keeps an endpoint whose address stays on its
// socket: the service manager's socket is served throughout, and the new
// address is not bound.
func TestReloadKeepsNamedEndpointOnItsPassedSocket(t *testing.T) {
	f, passed := passedTCPListener(t, "web")
	s, _ := newTestSupervisor()
	s.Inherit([]*os.File{f})
	named := func() endpoint.Config {
		ep := tcpEndpoint(testkit.FreeAddr(t, "tcp"))
		ep.Name = "web"
		return ep
	}
	fa := &lifecycleFactory{}
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("web", fa, config.Limits{}, named()),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	dialEcho(t, "tcp", passed, "before").Close()

	moved := named()
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("web", fa, config.Limits{}, moved),
	}}); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Status(false)
	for _, svc := range st {
		if svc.State == "running" && !svc.Endpoints[0].Inherited {
			t.Errorf("after the reload the endpoint is not on the passed socket: %+v", svc.Endpoints)
		}
		// Status shows where it listens: the passed socket's address,
		// not the fallback written in the file.
		if svc.State == "running" && svc.Endpoints[0].Address != passed {
			t.Errorf("status shows the endpoint at %q, want the passed socket's %q", svc.Endpoints[0].Address, passed)
		}
	}
	dialEcho(t, "tcp", passed, "after").Close()
	if c, err := net.Dial("tcp", moved.Addr.String()); err == nil {
		c.Close()
		t.Errorf("the endpoint bound its fallback address %s as well", moved.Addr)
	}
}

// A reload binding an address that a passed socket in use overlaps fails
// with the hint that superd itself holds it.
func TestReloadAddressInUseByPassedSocketHints(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	passed := ln.Addr().(*net.TCPAddr)
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newTestSupervisor()
	s.Inherit([]*os.File{f})
	fa := &lifecycleFactory{}
	held := serviceConfig("held", fa, config.Limits{}, tcpEndpoint(passed.String()))
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{held}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	err = s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		held, serviceConfig("all", &lifecycleFactory{}, config.Limits{}, tcpEndpoint(fmt.Sprintf(":%d", passed.Port))),
	}})
	if err == nil || !strings.Contains(err.Error(), "superd itself holds it") {
		t.Errorf("reload: %v; want address in use, with the hint that superd holds it", err)
	}
}

// A passed socket of the wrong type for the endpoint at its address is
// named by its type in the error: a seqpacket socket is not "a datagram
// socket".
func TestInheritedWrongTypeNamed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "seq")
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		f.Close()
		t.Fatal(err)
	}
	s := New(slog.New(slog.DiscardHandler), metrics.New("test"))
	s.Inherit([]*os.File{f})
	ep := makeEndpoint(endpoint.KindUnix, path)
	err = s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("passed", &lifecycleFactory{}, config.Limits{}, ep),
	}})
	if err == nil {
		s.Shutdown(5 * time.Second)
		t.Fatal("a unix endpoint took a passed seqpacket socket")
	}
	if !strings.Contains(err.Error(), "is a seqpacket socket, which a unix endpoint cannot use") {
		t.Errorf("error %q; want it to name the socket a seqpacket socket", err)
	}
}

// A passed socket named for one endpoint goes to it, even where another
// endpoint, earlier in the file and without a name, is at its address
// (SPEC section 11: the name first, then the address).
func TestInheritedNameWinsOverAnotherEndpointsAddress(t *testing.T) {
	passed, addr := passedTCPListener(t, "web")
	s, _ := newTestSupervisor()
	s.Inherit([]*os.File{passed})
	unnamed := tcpEndpoint(addr)
	named := tcpEndpoint(testkit.FreeAddr(t, "tcp"))
	named.Name = "web"
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endpointNames = endpointNames(&config.File{Services: []*config.Service{
		serviceConfig("first", &lifecycleFactory{}, config.Limits{}, unnamed),
		serviceConfig("second", &lifecycleFactory{}, config.Limits{}, named),
	}})
	if in, err := s.takeInheritedLocked(&unnamed); err != nil || in != nil {
		t.Errorf("the endpoint at the socket's address took it (%v, %v), though another asks for it by name", in, err)
	}
	if in, err := s.takeInheritedLocked(&named); err != nil || in == nil || in.name != "web" {
		t.Errorf("the endpoint named web did not get its socket: %v, %v", in, err)
	}
}

// reuse_port and v6only count only before bind: a tcp endpoint that asks
// for them and gets a passed socket without them is told so at start (as
// a udp endpoint is for reuse_port), and served.
func TestInheritedTCPOptionsBeforeBindWarn(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0") // IPV6_V6ONLY 0, as on a dual-stack [::]
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	f, err := ln.(*net.TCPListener).File()
	addr := ln.Addr().String()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.Buffer
	s := New(slog.New(slog.NewTextHandler(&logs, nil)), metrics.New("test"))
	s.Inherit([]*os.File{f})
	ep := tcpEndpoint(addr)
	ep.ReusePort, ep.TCP.V6Only = true, true
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		serviceConfig("passed", &lifecycleFactory{}, config.Limits{}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	dialEcho(t, "tcp", addr, "served").Close()
	for _, want := range []string{"reuse_port cannot be set", "v6only cannot be set"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no warning %q:\n%s", want, logs.String())
		}
	}
}
