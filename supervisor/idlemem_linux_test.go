package supervisor

import (
	"maps"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/engine"
	"github.com/superd-dev/superd/internal/testkit"
)

type idleEchoFactory struct{}

func (idleEchoFactory) BuildProtocol(net.Addr) framework.Protocol { return new(idleEcho) }

type idleEcho struct{ framework.BaseProtocol }

func (e *idleEcho) DataReceived(b []byte) { e.Transport.Write(b) }

// TestIdleConnectionHeap measures what an idle TCP connection served by a
// protocol keeps on the Go heap, through the real accept path of the
// supervisor and the engine (on Linux: raw sockets, /proc). It runs only when SUPERD_IDLE_CONNS gives a
// number of connections; with SUPERD_IDLE_HEAPPROFILE it also writes a
// heap profile (every allocation sampled) while they are all open:
//
//	SUPERD_IDLE_CONNS=5000 SUPERD_IDLE_HEAPPROFILE=/tmp/idle.pprof \
//	  go test -run TestIdleConnectionHeap -v ./supervisor/
//	go tool pprof -sample_index=inuse_space -top /tmp/idle.pprof
//
// The client's sockets are raw descriptors, so the test's own side holds
// nothing on the heap per connection (but 8 bytes in its slice of them).
// The VmRSS it reports is the whole process's, taken without the profile
// (which costs memory of its own). Figures go in BENCHMARKS.md.
func TestIdleConnectionHeap(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SUPERD_IDLE_CONNS"))
	if n <= 0 {
		t.Skip("set SUPERD_IDLE_CONNS to the number of connections to hold")
	}
	profile := os.Getenv("SUPERD_IDLE_HEAPPROFILE")
	if profile != "" {
		runtime.MemProfileRate = 1 // every allocation: the profile is exact, RSS is not
	}
	addr := testkit.FreeAddr(t, "tcp")
	sc := serviceConfig("idle", idleEchoFactory{}, config.Limits{}, tcpEndpoint(addr))
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{sc}, ShutdownTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	ap := netip.MustParseAddrPort(addr)
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}

	// A first connection, so that what is made once (the poller, pools)
	// is not counted.
	first := dialRaw(t, sa)
	pingRaw(t, first, 'x')
	time.Sleep(time.Second)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	rssBefore := vmRSS(t)
	classesBefore := memoryClasses()

	fds := make([]int, 0, n)
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
		unix.Close(first)
	}()
	for range n {
		fds = append(fds, dialRaw(t, sa))
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.ActiveConnections() != n+1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections active, want %d", s.ActiveConnections(), n+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // every connection parks
	rssAfter := vmRSS(t)        // as the IDLE bench cell reads it: before any forced GC
	classesAfter := memoryClasses()
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	t.Logf("%d idle connections: heap in use %.0f B/conn (HeapAlloc), %.0f B/conn (HeapInuse spans), %.0f objects/conn; stacks %.0f B/conn; VmRSS %.0f B/conn; goroutines %d",
		n, per(after.HeapAlloc, before.HeapAlloc), per(after.HeapInuse, before.HeapInuse),
		per(after.HeapObjects, before.HeapObjects), per(after.StackInuse, before.StackInuse),
		per(rssAfter, rssBefore), runtime.NumGoroutine())
	t.Logf("engine.Conn is %d B", unsafe.Sizeof(engine.Conn{}))
	t.Logf("the runtime's memory classes, settled, before the GCs:")
	for _, name := range slices.Sorted(maps.Keys(classesAfter)) {
		if d := float64(classesAfter[name]) - float64(classesBefore[name]); d != 0 {
			t.Logf("  %-45s %8.1f B/conn", name, d/float64(n))
		}
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	// Every connection is still served.
	for i, fd := range fds {
		pingRaw(t, fd, byte(i))
	}
}

// memoryClasses reads the runtime's /memory/classes metrics.
func memoryClasses() map[string]uint64 {
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	m := map[string]uint64{}
	for _, s := range samples {
		m[s.Name] = s.Value.Uint64()
	}
	return m
}

// vmRSS is the test process's resident memory, in bytes.
func vmRSS(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// dialRaw connects a blocking socket that is a bare descriptor.
func dialRaw(t *testing.T, sa *unix.SockaddrInet4) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return fd
}

// pingRaw writes one byte and expects it back.
func pingRaw(t *testing.T, fd int, v byte) {
	t.Helper()
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
	if _, err := unix.Write(fd, []byte{v}); err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	if m, err := unix.Read(fd, b); err != nil || m != 1 || b[0] != v {
		t.Fatalf("echo: %d %#x, %v (sent %#x)", m, b[0], err, v)
	}
}
