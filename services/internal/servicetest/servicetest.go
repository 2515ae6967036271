// Package servicetest owns what the tests of the built-in services share:
// a loopback TCP server that runs a factory's protocols through the
// framework's connection machinery, the configuration loader for one
// service block, fake datagram transports, polling helpers, and goleak's
// settings. Only tests import it.
package servicetest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/engine"
)

// VerifyTestMain runs the package's tests and fails if a goroutine is left
// behind (opts: goleak's, for more exceptions), or if anything was logged
// through the global slog: a service
// logs through the logger superd hands it (framework.Env.Log). The
// framework's idle poller is started on first use and lives for the
// process, so it is not a leak.
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	global := &globalLog{}
	slog.SetDefault(slog.New(global))
	opts = append(opts, goleak.IgnoreAnyFunction("github.com/superd-dev/superd/internal/engine.(*idlePoller).loop"))
	goleak.VerifyTestMain(checkGlobalLog{m, global}, opts...)
}

// checkGlobalLog fails the run when the global slog received a record.
type checkGlobalLog struct {
	m      *testing.M
	global *globalLog
}

func (c checkGlobalLog) Run() int {
	code := c.m.Run()
	if msgs := c.global.messages(); len(msgs) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: logged through the global slog instead of framework.Env.Log: %q\n", msgs)
		return 1
	}
	return code
}

// globalLog is the global slog's handler under test: it keeps what it is
// given.
type globalLog struct {
	mu   sync.Mutex
	msgs []string
}

func (g *globalLog) Enabled(context.Context, slog.Level) bool { return true }
func (g *globalLog) Handle(_ context.Context, r slog.Record) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.msgs = append(g.msgs, r.Message)
	return nil
}
func (g *globalLog) WithAttrs([]slog.Attr) slog.Handler { return g }
func (g *globalLog) WithGroup(string) slog.Handler      { return g }

func (g *globalLog) messages() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.msgs)
}

// Build builds svc's factory as superd does, handing it a logger whose
// records go to log (nil: nowhere) and a registry of its own.
func Build(svc *config.Service, log slog.Handler) (framework.Factory, error) {
	if log == nil {
		log = slog.DiscardHandler
	}
	return svc.NewFactory(slog.New(log), prometheus.NewRegistry())
}

// Block is one service block of a test's superd.hcl, for the real
// configuration loader (HCL text, the factory's schema and its own
// checks). The file is written as
//
//	BEFORE
//	service "FACTORY" "NAME" {
//	BODY
//	  endpoint "tcp" { address = "127.0.0.1:1" }
//	}
//
// so that BODY starts on line 2 when there is nothing before it; the
// endpoint line is left out when BODY has an endpoint of its own.
type Block struct {
	Factory string // the factory's name, the block's first label
	Name    string // the service's name; "s" when empty
	Body    string // the attributes and blocks inside, indentation included
	Dir     string // the folder of superd.hcl, from which relative paths resolve; a fresh one when empty
	Before  string // top-level text before the block, such as a cluster block
}

// File parses the configuration file holding b. Errors are the loader's
// diagnostics.
func (b Block) File(t testing.TB) (*config.File, error) {
	t.Helper()
	name, dir := b.Name, b.Dir
	if name == "" {
		name = "s"
	}
	if dir == "" {
		dir = t.TempDir()
	}
	src := b.Before + fmt.Sprintf("service %q %q {\n%s\n", b.Factory, name, b.Body)
	if !strings.Contains(b.Body, "endpoint") {
		src += "  endpoint \"tcp\" { address = \"127.0.0.1:1\" }\n"
	}
	src += "}\n"
	return config.Parse([]byte(src), filepath.Join(dir, "superd.hcl"))
}

// Service parses the file holding b and returns b's service.
func (b Block) Service(t testing.TB) (*config.Service, error) {
	t.Helper()
	f, err := b.File(t)
	if err != nil {
		return nil, err
	}
	name := b.Name
	if name == "" {
		name = "s"
	}
	svc := f.Service(name)
	if svc == nil {
		t.Fatalf("service %q missing from a valid file", name)
	}
	return svc, nil
}

// Parse parses the file holding b and builds b's factory (see Build).
func (b Block) Parse(t testing.TB) (framework.Factory, error) {
	t.Helper()
	svc, err := b.Service(t)
	if err != nil {
		return nil, err
	}
	return Build(svc, nil)
}

// Parse decodes one service block of factory with the attributes in body
// and builds the factory: Block{Factory: factory, Body: body}.Parse.
func Parse(t testing.TB, factory, body string) (framework.Factory, error) {
	t.Helper()
	return Block{Factory: factory, Body: body}.Parse(t)
}

// Factory is Parse for a block that must be valid.
func Factory(t testing.TB, factory, body string) framework.Factory {
	t.Helper()
	f, err := Parse(t, factory, body)
	if err != nil {
		t.Fatalf("service %q with %q: %v", factory, body, err)
	}
	return f
}

// Served is one connection accepted by Serve.
type Served struct {
	Conn     *engine.Conn
	Protocol framework.Protocol
	// Done receives the reason given to ConnectionLost, once.
	Done <-chan error
}

// Serve accepts on a loopback TCP listener and serves each connection with
// a protocol from f, through the framework, until the test ends; each
// connection is sent on conns (when nobody has taken the last 64, it is
// not). The cleanup closes the listener and waits for every connection to
// end, so a test closes its clients first.
func Serve(t testing.TB, f framework.Factory) (addr string, conns <-chan *Served) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *Served, 64)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			p := f.BuildProtocol(nc.RemoteAddr())
			if p == nil {
				nc.Close()
				continue
			}
			done := make(chan error, 1)
			s := &Served{Conn: engine.NewConn(nc, nil), Protocol: p, Done: done}
			select {
			case ch <- s:
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				done <- s.Conn.Serve(p)
			}()
		}
	}()
	return ln.Addr().String(), ch
}

// Dial connects to addr with a deadline for the whole exchange.
func Dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(60 * time.Second))
	return c.(*net.TCPConn)
}

// WaitFor polls cond until it holds, failing the test after d.
func WaitFor(t testing.TB, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Settle polls value until it has not changed for quiet, and returns it,
// failing the test if it still moves after limit.
func Settle(t testing.TB, value func() int64, quiet, limit time.Duration, what string) int64 {
	t.Helper()
	deadline := time.Now().Add(limit)
	last, since := value(), time.Now()
	for {
		time.Sleep(2 * time.Millisecond)
		if v := value(); v != last {
			last, since = v, time.Now()
		} else if time.Since(since) >= quiet {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still moving after %v (now %d)", what, limit, last)
		}
	}
}

// Holds polls cond for d and fails the test as soon as it is false: the
// observation window of a "nothing happens" check.
func Holds(t testing.TB, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !cond() {
			t.Fatalf(format, args...)
		}
		time.Sleep(time.Millisecond)
	}
}

// Datagram is one datagram a protocol sent.
type Datagram struct {
	Data []byte
	To   net.Addr
}

// DatagramRecorder is a framework.DatagramTransport that keeps a copy of
// every datagram written to it.
type DatagramRecorder struct {
	mu   sync.Mutex
	sent []Datagram
}

// WriteTo implements framework.DatagramTransport.
func (r *DatagramRecorder) WriteTo(b []byte, addr net.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, Datagram{Data: append([]byte{}, b...), To: addr})
}

// LocalAddr implements framework.DatagramTransport.
func (r *DatagramRecorder) LocalAddr() net.Addr { return LocalUDP }

// Sent returns the datagrams written so far, and forgets them.
func (r *DatagramRecorder) Sent() []Datagram {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sent
	r.sent = nil
	return s
}

// NopDatagramTransport sends and records nothing, so an allocation count
// sees only the protocol's own.
type NopDatagramTransport struct{ Writes int }

// WriteTo implements framework.DatagramTransport.
func (n *NopDatagramTransport) WriteTo(b []byte, addr net.Addr) { n.Writes++ }

// LocalAddr implements framework.DatagramTransport.
func (n *NopDatagramTransport) LocalAddr() net.Addr { return LocalUDP }

// LocalUDP and PeerUDP are the addresses of the fake datagram exchanges.
var (
	LocalUDP = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7}
	PeerUDP  = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
)

// DatagramProtocol builds f's datagram protocol over t, failing the test if
// f does not serve datagrams.
func DatagramProtocol(t testing.TB, f framework.Factory, tr framework.DatagramTransport) framework.DatagramProtocol {
	t.Helper()
	df, ok := f.(framework.DatagramFactory)
	if !ok {
		t.Fatalf("%T does not implement framework.DatagramFactory", f)
	}
	p := df.BuildDatagramProtocol(tr)
	if p == nil {
		t.Fatal("BuildDatagramProtocol returned nil")
	}
	return p
}

// ServesBoth fails the test unless factory name is registered as serving
// streams and datagrams under the built-in services' datagram guards, as
// every RFC small service is.
func ServesBoth(t testing.TB, name string) {
	t.Helper()
	spec, ok := framework.Lookup(name)
	if !ok {
		t.Fatalf("factory %q is not registered", name)
	}
	if !spec.Serves.HasStreams() || !spec.Serves.HasDatagrams() {
		t.Fatalf("factory %q serves %b; want streams and datagrams", name, spec.Serves)
	}
	if !spec.DatagramGuards {
		t.Fatalf("factory %q is built in but not under DatagramGuards", name)
	}
}

// ServeUDP runs f's datagram protocol on a loopback UDP socket until the
// test ends, with the least machinery that does it (one goroutine reading,
// replies written at once): superd's own udp endpoint, with its limits and
// reflection rule, is the supervisor's and is tested there. It lets real
// clients (rdate -pu, nc -u) talk to a protocol.
func ServeUDP(t testing.TB, f framework.Factory) (addr string) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := DatagramProtocol(t, f, udpTransport{pc})
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			p.DatagramReceived(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

type udpTransport struct{ pc *net.UDPConn }

func (u udpTransport) WriteTo(b []byte, addr net.Addr) { u.pc.WriteTo(b, addr) }
func (u udpTransport) LocalAddr() net.Addr             { return u.pc.LocalAddr() }
