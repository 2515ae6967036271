package supervisor

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
	"github.com/superd-dev/superd/metrics"
)

// dgramFactory is a test DatagramFactory. Its protocol echoes each
// datagram unless onDatagram says otherwise; it records what reaches it,
// and whether any DatagramReceived ran after (or during) StopFactory.
type dgramFactory struct {
	onDatagram func(p *dgramProto, data []byte, from net.Addr) // nil: echo

	starts, stops atomic.Int32
	received      atomic.Int64 // DatagramReceived calls
	inFlight      atomic.Int32 // DatagramReceived calls running now
	lateCalls     atomic.Int32 // DatagramReceived calls running after or during StopFactory
	stopped       atomic.Bool

	mu         sync.Mutex
	transports []framework.DatagramTransport
}

func (f *dgramFactory) BuildProtocol(net.Addr) framework.Protocol { return nil }

func (f *dgramFactory) StartFactory() error { f.starts.Add(1); return nil }

func (f *dgramFactory) StopFactory() error {
	f.stopped.Store(true)
	if f.inFlight.Load() > 0 {
		f.lateCalls.Add(1)
	}
	f.stops.Add(1)
	return nil
}

func (f *dgramFactory) BuildDatagramProtocol(t framework.DatagramTransport) framework.DatagramProtocol {
	f.mu.Lock()
	f.transports = append(f.transports, t)
	f.mu.Unlock()
	return &dgramProto{f: f, t: t}
}

func (f *dgramFactory) transport(i int) framework.DatagramTransport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.transports[i]
}

type dgramProto struct {
	f *dgramFactory
	t framework.DatagramTransport
}

func (p *dgramProto) DatagramReceived(data []byte, from net.Addr) {
	p.f.inFlight.Add(1)
	defer p.f.inFlight.Add(-1)
	if p.f.stopped.Load() {
		p.f.lateCalls.Add(1)
	}
	p.f.received.Add(1)
	if p.f.onDatagram != nil {
		p.f.onDatagram(p, data, from)
		return
	}
	p.t.WriteTo(data, from)
}

func udpEndpoint(addr string) endpoint.Config {
	return makeEndpoint(endpoint.KindUDP, addr)
}

// dgramServiceConfig is serviceConfig for a factory that serves datagrams,
// with the guards of the built-in services when guarded.
func dgramServiceConfig(name string, f framework.Factory, guarded bool, lim config.Limits, eps ...endpoint.Config) *config.Service {
	sc := serviceConfig(name, f, lim, eps...)
	sc.Spec.Serves = framework.Streams | framework.Datagrams
	sc.Spec.DatagramGuards = guarded
	sc.Fingerprint += fmt.Sprintf(" guarded=%v", guarded)
	return sc
}

// loopbacks are the loopback hosts to run a test on: 127.0.0.1, and ::1
// where the machine has IPv6.
func loopbacks() []string {
	hosts := []string{"127.0.0.1"}
	if pc, err := net.ListenPacket("udp6", "[::1]:0"); err == nil {
		pc.Close()
		hosts = append(hosts, "::1")
	}
	return hosts
}

// startDgram starts one service with a udp endpoint on host and returns
// the supervisor, its metrics and the endpoint's address.
func startDgram(t *testing.T, name, host string, f framework.Factory, guarded bool, lim config.Limits) (*Supervisor, *metrics.Metrics, string) {
	t.Helper()
	addr := testkit.FreeAddrOn(t, "udp", host)
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig(name, f, guarded, lim, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	return s, m, addr
}

func dialUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// bindUDP opens an unconnected client socket on laddr; ok is false when
// the address cannot be bound here.
func bindUDP(t *testing.T, laddr string) (*net.UDPConn, bool) {
	t.Helper()
	pc, err := net.ListenPacket("udp", laddr)
	if err != nil {
		return nil, false
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn), true
}

func sendTo(t *testing.T, c *net.UDPConn, to string, data []byte) {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteToUDP(data, ua); err != nil {
		t.Fatal(err)
	}
}

func send(t *testing.T, c *net.UDPConn, data []byte) {
	t.Helper()
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
}

// recv reads one datagram, waiting at most timeout.
func recv(c *net.UDPConn, timeout time.Duration) ([]byte, error) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(timeout))
	n, _, err := c.ReadFromUDP(buf)
	return buf[:n], err
}

func mustRecv(t *testing.T, c *net.UDPConn, want []byte) {
	t.Helper()
	got, err := recv(c, 10*time.Second)
	if err != nil {
		t.Fatalf("no reply (want %d bytes %.20q): %v", len(want), want, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("reply %d bytes %.20q, want %d bytes %.20q", len(got), got, len(want), want)
	}
}

// expectSilence checks that nothing arrives on c: a reply the service did
// not send never comes, so this waits a short while and no longer.
func expectSilence(t *testing.T, c *net.UDPConn) {
	t.Helper()
	if got, err := recv(c, 100*time.Millisecond); err == nil {
		t.Fatalf("unexpected reply %q", got)
	}
}

func dgramReceived(m *metrics.Metrics, svc, addr string) float64 {
	return testutil.ToFloat64(m.DatagramsReceived.WithLabelValues(svc, "lifecycle", "udp:"+addr))
}

func dgramSent(m *metrics.Metrics, svc, addr string) float64 {
	return testutil.ToFloat64(m.DatagramsSent.WithLabelValues(svc, "lifecycle", "udp:"+addr))
}

func dgramDropped(m *metrics.Metrics, svc, reason string) float64 {
	return testutil.ToFloat64(m.DatagramsDropped.WithLabelValues(svc, "lifecycle", reason))
}

// checkDrops checks every drop reason of svc: want's, and 0 for the others.
func checkDrops(t *testing.T, m *metrics.Metrics, svc string, want map[string]float64) {
	t.Helper()
	for _, r := range metrics.DatagramDropReasons {
		if got := dgramDropped(m, svc, r); got != want[r] {
			t.Errorf("superd_datagrams_dropped_total{reason=%q} = %v, want %v", r, got, want[r])
		}
	}
}

// Datagrams of every size (empty, small, the largest IPv4 takes) are
// delivered and answered through WriteTo, on IPv4 and IPv6, and counted:
// datagrams received and sent per endpoint, bytes both ways per service.
func TestDatagramEchoAndCounters(t *testing.T) {
	for _, host := range loopbacks() {
		t.Run(host, func(t *testing.T) {
			f := &dgramFactory{}
			s, m, addr := startDgram(t, "echo", host, f, false, config.Limits{})
			defer s.Shutdown(5 * time.Second)
			c := dialUDP(t, addr)
			sizes := []int{5, 0, 1, 1472, 9000, 65507}
			total := 0
			for i, n := range sizes {
				p := bytes.Repeat([]byte{byte('a' + i)}, n)
				send(t, c, p)
				mustRecv(t, c, p)
				total += n
			}
			waitFor(t, func() bool { return dgramSent(m, "echo", addr) == float64(len(sizes)) })
			if got := dgramReceived(m, "echo", addr); got != float64(len(sizes)) {
				t.Errorf("datagrams received = %v, want %d", got, len(sizes))
			}
			if got := testutil.ToFloat64(m.ReceivedBytes.WithLabelValues("echo", "lifecycle")); got != float64(total) {
				t.Errorf("received bytes = %v, want %d", got, total)
			}
			if got := testutil.ToFloat64(m.SentBytes.WithLabelValues("echo", "lifecycle")); got != float64(total) {
				t.Errorf("sent bytes = %v, want %d", got, total)
			}
			checkDrops(t, m, "echo", nil)
			if got := f.transport(0).LocalAddr().String(); got != addr {
				t.Errorf("LocalAddr = %s, want %s", got, addr)
			}
		})
	}
}

// A socket bound to every address (":P", an IPv6 socket taking IPv4 too)
// answers IPv4 clients from the address they wrote to.
func TestDatagramEchoDualStack(t *testing.T) {
	if len(loopbacks()) < 2 {
		t.Skip("no IPv6 here")
	}
	f := &dgramFactory{}
	_, port, _ := net.SplitHostPort(testkit.FreeAddrOn(t, "udp", "::"))
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{
		dgramServiceConfig("dual", f, false, config.Limits{}, udpEndpoint(":"+port)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	for _, host := range []string{"127.0.0.1", "::1"} {
		c := dialUDP(t, net.JoinHostPort(host, port)) // connected: takes replies from that address only
		send(t, c, []byte("hello "+host))
		mustRecv(t, c, []byte("hello "+host))
	}
}

// Every datagram family has its series from startup: received and sent for
// each udp endpoint, dropped for every reason, all at 0, as a scrape of
// /metrics shows them.
func TestDatagramSeriesFromStartup(t *testing.T) {
	addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{
		dgramServiceConfig("u", &dgramFactory{}, true, config.Limits{}, udpEndpoint(addr)),
		serviceConfig("t", &lifecycleFactory{}, config.Limits{}, tcpEndpoint(testkit.FreeAddr(t, "tcp"))),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	srv := httptest.NewServer(m.Handler(func() []string { return nil }))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	series := func(name string) map[string]float64 {
		out := map[string]float64{}
		f := fams[name]
		if f == nil {
			t.Errorf("family %s missing", name)
			return out
		}
		if f.GetType() != dto.MetricType_COUNTER {
			t.Errorf("%s is a %v, want a counter", name, f.GetType())
		}
		for _, mt := range f.Metric {
			var key []string
			for _, l := range mt.Label {
				key = append(key, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(key)
			out[fmt.Sprint(key)] = mt.GetCounter().GetValue()
		}
		return out
	}
	want := func(name string, keys ...string) {
		t.Helper()
		got := series(name)
		if len(got) != len(keys) {
			t.Errorf("%s has %d series, want %d: %v", name, len(got), len(keys), got)
		}
		for _, k := range keys {
			if v, ok := got[k]; !ok || v != 0 {
				t.Errorf("%s: series %s = %v (present %v), want 0", name, k, v, ok)
			}
		}
	}
	ep := fmt.Sprint([]string{"endpoint=udp:" + addr, "factory=lifecycle", "service=u"})
	want("superd_datagrams_received_total", ep)
	want("superd_datagrams_sent_total", ep)
	var drops []string
	for _, r := range []string{"denied", "rate_limit", "rate_limit_per_ip", "reflection", "send_failed"} {
		drops = append(drops, fmt.Sprint([]string{"factory=lifecycle", "reason=" + r, "service=u"}))
	}
	want("superd_datagrams_dropped_total", drops...)
}

// allow and deny apply to each datagram (deny wins), IPv4 peers of a
// dual-stack socket included; a denied datagram never reaches the protocol.
func TestDatagramAllowDeny(t *testing.T) {
	if _, ok := bindUDP(t, "127.0.0.2:0"); !ok {
		t.Skip("127.0.0.2 is not a local address here")
	}
	lim := config.Limits{
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Deny:  []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}
	hosts := []string{"127.0.0.1"}
	if len(loopbacks()) == 2 {
		hosts = append(hosts, "::") // IPv4 peers arrive as ::ffff:127.0.0.x
	}
	for _, host := range hosts {
		t.Run(host, func(t *testing.T) {
			f := &dgramFactory{}
			s, m, addr := startDgram(t, "ad", host, f, false, lim)
			defer s.Shutdown(5 * time.Second)
			_, port, _ := net.SplitHostPort(addr)
			to := "127.0.0.1:" + port
			denied, _ := bindUDP(t, "127.0.0.1:0")
			allowed, _ := bindUDP(t, "127.0.0.2:0")
			for range 3 {
				sendTo(t, denied, to, []byte("let me in"))
			}
			sendTo(t, allowed, to, []byte("allowed"))
			mustRecv(t, allowed, []byte("allowed"))
			// One socket, one loop: the denied datagrams came first.
			if got := dgramDropped(m, "ad", "denied"); got != 3 {
				t.Errorf("dropped{denied} = %v, want 3", got)
			}
			if got := dgramReceived(m, "ad", addr); got != 4 {
				t.Errorf("received = %v, want 4 (denied datagrams count as received)", got)
			}
			if got := f.received.Load(); got != 1 {
				t.Errorf("the protocol got %d datagrams, want 1", got)
			}
			checkDrops(t, m, "ad", map[string]float64{"denied": 3})
			expectSilence(t, denied)
		})
	}
}

// countReplies reads replies on c until it has want of them, and checks
// no more arrive.
func countReplies(t *testing.T, c *net.UDPConn, want int) {
	t.Helper()
	for i := range want {
		if _, err := recv(c, 10*time.Second); err != nil {
			t.Fatalf("reply %d of %d: %v", i+1, want, err)
		}
	}
	expectSilence(t, c)
}

// rate_limit applies to each datagram of the service: its bucket starts
// full, so burst datagrams pass and the rest are dropped, exactly.
func TestDatagramRateLimit(t *testing.T) {
	f := &dgramFactory{}
	s, m, addr := startDgram(t, "rl", "127.0.0.1", f, false,
		config.Limits{RateLimit: &config.Rate{Rate: 0.001, Burst: 5}})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	for i := range 10 {
		send(t, c, []byte(strconv.Itoa(i)))
	}
	waitFor(t, func() bool { return dgramReceived(m, "rl", addr) == 10 })
	countReplies(t, c, 5)
	if got := f.received.Load(); got != 5 {
		t.Errorf("delivered %d datagrams, want 5", got)
	}
	checkDrops(t, m, "rl", map[string]float64{"rate_limit": 5})
}

// rate_limit_per_ip keeps one bucket per source: each source gets its own
// burst.
func TestDatagramRateLimitPerIP(t *testing.T) {
	other, ok := bindUDP(t, "127.0.0.2:0")
	if !ok {
		t.Skip("127.0.0.2 is not a local address here")
	}
	f := &dgramFactory{}
	s, m, addr := startDgram(t, "rlip", "127.0.0.1", f, false,
		config.Limits{RateLimitPerIP: &config.Rate{Rate: 0.001, Burst: 5}})
	defer s.Shutdown(5 * time.Second)
	one, _ := bindUDP(t, "127.0.0.1:0")
	for i := range 10 {
		sendTo(t, one, addr, []byte(strconv.Itoa(i)))
	}
	for i := range 7 {
		sendTo(t, other, addr, []byte(strconv.Itoa(i)))
	}
	waitFor(t, func() bool { return dgramReceived(m, "rlip", addr) == 17 })
	countReplies(t, one, 5)
	countReplies(t, other, 5)
	if got := f.received.Load(); got != 10 {
		t.Errorf("delivered %d datagrams, want 10", got)
	}
	checkDrops(t, m, "rlip", map[string]float64{"rate_limit_per_ip": 7})
}

func TestReflects(t *testing.T) {
	var g guardPorts
	g.p.Store(&map[uint16]bool{7: true, 13013: true})
	cases := []struct {
		to   string
		want bool
	}{
		{"127.0.0.1:40000", false},
		{"[::1]:40000", false},
		{"192.0.2.1:1024", false},
		{"192.0.2.1:1023", true},
		{"192.0.2.1:0", true},
		{"[2001:db8::1]:53", true},
		{"192.0.2.1:13013", true}, // a guarded endpoint's port
		{"[::ffff:192.0.2.1]:13013", true},
		{"224.0.0.1:40000", true},
		{"[::ffff:239.1.2.3]:40000", true},
		{"[ff02::1]:40000", true},
		{"0.0.0.0:40000", true},
		{"[::]:40000", true},
		{"255.255.255.255:40000", true},
		{"[::ffff:255.255.255.255]:40000", true},
	}
	for _, c := range cases {
		if got := reflects(netip.MustParseAddrPort(c.to), &g); got != c.want {
			t.Errorf("reflects(%s) = %v, want %v", c.to, got, c.want)
		}
	}
	if reflects(netip.MustParseAddrPort("192.0.2.1:40000"), &guardPorts{}) {
		t.Error("reflects with no guarded ports set")
	}
}

// A guarded factory (the built-in services) sends no reply to the port of
// a guarded udp endpoint of this superd, its own included, counted as
// reflection; a factory without guards does. A reload that removes the
// other guarded endpoint frees its port.
func TestDatagramReflectionToGuardedPorts(t *testing.T) {
	if _, ok := bindUDP(t, "127.0.0.2:0"); !ok {
		t.Skip("127.0.0.2 is not a local address here")
	}
	aF, bF, cF := &dgramFactory{}, &dgramFactory{}, &dgramFactory{}
	aAddr, bAddr, cAddr := testkit.FreeAddrOn(t, "udp", "127.0.0.1"), testkit.FreeAddrOn(t, "udp", "127.0.0.1"), testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	a := dgramServiceConfig("a", aF, true, config.Limits{}, udpEndpoint(aAddr))
	c := dgramServiceConfig("c", cF, false, config.Limits{}, udpEndpoint(cAddr))
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		a, dgramServiceConfig("b", bF, true, config.Limits{}, udpEndpoint(bAddr)), c,
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	// Clients on 127.0.0.2 with the ports of a's and b's endpoints: to
	// the guard they are those endpoints.
	_, aPort, _ := net.SplitHostPort(aAddr)
	_, bPort, _ := net.SplitHostPort(bAddr)
	asA, ok1 := bindUDP(t, "127.0.0.2:"+aPort)
	asB, ok2 := bindUDP(t, "127.0.0.2:"+bPort)
	if !ok1 || !ok2 {
		t.Skip("cannot bind 127.0.0.2 on the endpoints' ports")
	}
	sendTo(t, asB, aAddr, []byte("from b's port"))
	sendTo(t, asA, aAddr, []byte("from a's own port"))
	waitFor(t, func() bool { return dgramDropped(m, "a", "reflection") == 2 })
	if got := aF.received.Load(); got != 2 {
		t.Errorf("a's protocol got %d datagrams, want 2 (the guard is on the reply)", got)
	}
	checkDrops(t, m, "a", map[string]float64{"reflection": 2})
	if got := dgramSent(m, "a", aAddr); got != 0 {
		t.Errorf("a sent %v datagrams", got)
	}
	expectSilence(t, asB)
	expectSilence(t, asA)

	// c has no guards: it answers b's port.
	sendTo(t, asB, cAddr, []byte("to c"))
	mustRecv(t, asB, []byte("to c"))
	checkDrops(t, m, "c", nil)

	// b removed: its port is no longer guarded.
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{a, c}}); err != nil {
		t.Fatal(err)
	}
	sendTo(t, asB, aAddr, []byte("b is gone"))
	mustRecv(t, asB, []byte("b is gone"))
	sendTo(t, asA, aAddr, []byte("still a's own port"))
	waitFor(t, func() bool { return dgramDropped(m, "a", "reflection") == 3 })
	expectSilence(t, asA)
}

// A guarded factory sends no reply to a source port below 1024 (binding
// one needs root); a factory without guards does.
func TestDatagramReflectionToPrivilegedPort(t *testing.T) {
	var low *net.UDPConn
	for p := 1023; p >= 600 && low == nil; p-- {
		low, _ = bindUDP(t, "127.0.0.1:"+strconv.Itoa(p))
	}
	if low == nil {
		t.Skip("cannot bind a udp port below 1024 (needs root)")
	}
	gF, pF := &dgramFactory{}, &dgramFactory{}
	gAddr, pAddr := testkit.FreeAddrOn(t, "udp", "127.0.0.1"), testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{
		dgramServiceConfig("guarded", gF, true, config.Limits{}, udpEndpoint(gAddr)),
		dgramServiceConfig("plain", pF, false, config.Limits{}, udpEndpoint(pAddr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	sendTo(t, low, gAddr, []byte("from a low port"))
	waitFor(t, func() bool { return dgramDropped(m, "guarded", "reflection") == 1 })
	expectSilence(t, low)
	sendTo(t, low, pAddr, []byte("from a low port"))
	mustRecv(t, low, []byte("from a low port"))
	checkDrops(t, m, "plain", nil)
}

// A panic in DatagramReceived loses that datagram only: the loop goes on,
// and the socket's send queue is usable (the panic left no lock held).
func TestDatagramPanicLosesOnlyThatDatagram(t *testing.T) {
	f := &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
		if string(data) == "boom" {
			p.t.WriteTo([]byte("queued before the panic"), from)
			panic("boom")
		}
		p.t.WriteTo(data, from)
	}}
	s, _, addr := startDgram(t, "p", "127.0.0.1", f, false, config.Limits{})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("before"))
	mustRecv(t, c, []byte("before"))
	send(t, c, []byte("boom"))
	mustRecv(t, c, []byte("queued before the panic"))
	send(t, c, []byte("after"))
	mustRecv(t, c, []byte("after"))
	if got := f.received.Load(); got != 3 {
		t.Errorf("the protocol got %d datagrams, want 3", got)
	}
}

// WriteTo to an address the socket cannot reach (IPv6 from an IPv4
// socket, or not a UDP address at all) drops that reply as send_failed and
// harms nothing else.
func TestDatagramWriteToUnusableAddress(t *testing.T) {
	f := &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
		p.t.WriteTo([]byte("nowhere"), &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 4000})
		p.t.WriteTo([]byte("nowhere"), &net.UnixAddr{Name: "/x", Net: "unixgram"})
		p.t.WriteTo([]byte("nowhere"), &net.UDPAddr{Port: 4000})
		p.t.WriteTo(data, from)
	}}
	s, m, addr := startDgram(t, "w", "127.0.0.1", f, false, config.Limits{})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("one"))
	mustRecv(t, c, []byte("one"))
	send(t, c, []byte("two"))
	mustRecv(t, c, []byte("two"))
	waitFor(t, func() bool { return dgramSent(m, "w", addr) == 2 })
	checkDrops(t, m, "w", map[string]float64{"send_failed": 6})

	// The same from outside DatagramReceived.
	tr := f.transport(0)
	tr.WriteTo([]byte("nowhere"), &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 4000})
	checkDrops(t, m, "w", map[string]float64{"send_failed": 7})
	send(t, c, []byte("three"))
	mustRecv(t, c, []byte("three"))
}

// WriteTo from another goroutine, outside DatagramReceived, sends at once,
// and the loop reading meanwhile is not disturbed.
func TestDatagramWriteToFromAnotherGoroutine(t *testing.T) {
	peers := make(chan *net.UDPAddr, 1)
	f := &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
		if string(data) == "subscribe" {
			ua := from.(*net.UDPAddr)
			peers <- &net.UDPAddr{IP: append(net.IP(nil), ua.IP...), Port: ua.Port} // from is reused: copy
			return
		}
		p.t.WriteTo(data, from)
	}}
	s, m, addr := startDgram(t, "push", "127.0.0.1", f, false, config.Limits{})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("subscribe"))
	peer := <-peers
	tr := f.transport(0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			tr.WriteTo([]byte("push "+strconv.Itoa(i)), peer)
		}
	}()
	// Echoes go on meanwhile, on the loop.
	for i := range 100 {
		send(t, c, []byte("echo "+strconv.Itoa(i)))
	}
	<-done
	pushes, echoes := 0, 0
	for pushes+echoes < 200 {
		b, err := recv(c, 10*time.Second)
		if err != nil {
			t.Fatalf("after %d pushes and %d echoes: %v", pushes, echoes, err)
		}
		switch {
		case bytes.HasPrefix(b, []byte("push ")):
			pushes++
		case bytes.HasPrefix(b, []byte("echo ")):
			echoes++
		}
	}
	waitFor(t, func() bool { return dgramSent(m, "push", addr) == 200 })
	// One alone, while the loop is idle: it leaves at once.
	tr.WriteTo([]byte("alone"), peer)
	mustRecv(t, c, []byte("alone"))
}

// A reload that keeps a udp service unchanged keeps its socket and its
// protocol: the same port, and datagrams keep flowing.
func TestDatagramReloadKeepsUnchangedService(t *testing.T) {
	f := &dgramFactory{}
	addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	keep := dgramServiceConfig("keep", f, true, config.Limits{}, udpEndpoint(addr))
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		keep, serviceConfig("other", &lifecycleFactory{}, config.Limits{}, tcpEndpoint(testkit.FreeAddr(t, "tcp"))),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("before"))
	mustRecv(t, c, []byte("before"))
	local := f.transport(0).LocalAddr().String()

	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		keep, serviceConfig("other", &lifecycleFactory{}, config.Limits{MaxConnections: 3}, tcpEndpoint(testkit.FreeAddr(t, "tcp"))),
	}}); err != nil {
		t.Fatal(err)
	}
	send(t, c, []byte("after"))
	mustRecv(t, c, []byte("after"))
	if f.starts.Load() != 1 || f.stops.Load() != 0 {
		t.Errorf("unchanged service restarted: starts %d stops %d", f.starts.Load(), f.stops.Load())
	}
	f.mu.Lock()
	n := len(f.transports)
	f.mu.Unlock()
	if n != 1 {
		t.Errorf("%d datagram protocols built, want 1", n)
	}
	if got := f.transport(0).LocalAddr().String(); got != local {
		t.Errorf("local address %s after reload, was %s", got, local)
	}
	if got := dgramReceived(m, "keep", addr); got != 2 {
		t.Errorf("received = %v, want 2", got)
	}
}

// A reload that changes a udp service hands its socket to the new instance
// without losing a datagram already queued: while the old protocol is held
// in DatagramReceived, more datagrams queue; after the reload and the
// release every one is answered, by the old instance or the new. The old
// factory stops only once its last DatagramReceived has returned.
func TestDatagramReloadHandsOverQueuedDatagrams(t *testing.T) {
	hold, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	oldF := &dgramFactory{}
	oldF.onDatagram = func(p *dgramProto, data []byte, from net.Addr) {
		once.Do(func() { close(held); <-hold })
		p.t.WriteTo(data, from)
	}
	newF := &dgramFactory{}
	addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("swap", oldF, false, config.Limits{}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	c.SetReadBuffer(1 << 20)
	const n = 100 // more than one batch
	send(t, c, []byte("0"))
	<-held // the loop is in DatagramReceived: the rest queue in the socket
	for i := 1; i < n; i++ {
		send(t, c, []byte(strconv.Itoa(i)))
	}
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("swap", newF, false, config.Limits{MaxConnections: 1}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	// The old instance drains in the background; its factory must not
	// stop while its DatagramReceived runs. (A wrong stop happens at once:
	// a short look is enough to see it.)
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end) && oldF.stops.Load() == 0; {
		time.Sleep(time.Millisecond)
	}
	close(hold)
	got := map[string]bool{}
	for len(got) < n {
		b, err := recv(c, 10*time.Second)
		if err != nil {
			t.Fatalf("%d of %d datagrams answered: %v", len(got), n, err)
		}
		got[string(b)] = true
	}
	waitFor(t, func() bool { return oldF.stops.Load() == 1 })
	if o, nw := oldF.received.Load(), newF.received.Load(); o+nw != n || nw == 0 {
		t.Errorf("old instance got %d datagrams, new %d; want %d in all, some for the new", o, nw, n)
	}
	if got := oldF.lateCalls.Load(); got != 0 {
		t.Errorf("the old factory's StopFactory ran while (or before) its DatagramReceived did (%d times)", got)
	}
	if got := dgramReceived(m, "swap", addr); got != n {
		t.Errorf("received = %v, want %d", got, n)
	}
}

// A reload that removes a udp service closes its socket and deletes its
// datagram series.
func TestDatagramReloadRemovesService(t *testing.T) {
	f := &dgramFactory{}
	s, m, addr := startDgram(t, "gone", "127.0.0.1", f, true, config.Limits{})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("x"))
	mustRecv(t, c, []byte("x"))
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.stops.Load() == 1 })
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("the removed service's socket is still bound: %v", err)
	}
	pc.Close()
	for name, n := range map[string]int{
		"superd_datagrams_received_total": testutil.CollectAndCount(m.DatagramsReceived),
		"superd_datagrams_sent_total":     testutil.CollectAndCount(m.DatagramsSent),
		"superd_datagrams_dropped_total":  testutil.CollectAndCount(m.DatagramsDropped),
	} {
		if n != 0 {
			t.Errorf("%s has %d series after the service was removed", name, n)
		}
	}
}

// holdingFactory serves one datagram: its DatagramReceived closes entered
// and waits until release is closed, then sends the datagram back to its
// source, or to to when given.
func holdingFactory(to net.Addr) (f *dgramFactory, entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	f = &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
		close(entered)
		<-release
		if to != nil {
			from = to
		}
		p.t.WriteTo(data, from)
	}}
	return f, entered, release
}

// A reload that removes a udp service whose DatagramReceived is still
// running (a protocol waiting on an upstream) returns without waiting for
// it, as for a stream service: the reload holds the supervisor's lock, and
// the status view and a shutdown wait for it. The old service drains in
// the background: its reply goes out, and then its socket is closed.
func TestDatagramReloadRemovesBusyService(t *testing.T) {
	f, entered, release := holdingFactory(nil)
	s, _, addr := startDgram(t, "slow", "127.0.0.1", f, false, config.Limits{})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("x"))
	<-entered
	reloaded := make(chan error, 1)
	go func() { reloaded <- s.Reload(&config.File{ShutdownTimeout: 5 * time.Second}) }()
	select {
	case err := <-reloaded:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the reload waited for the removed service's DatagramReceived")
	}
	close(release)
	mustRecv(t, c, []byte("x"))
	waitFor(t, func() bool { return f.stops.Load() == 1 })
	waitFor(t, func() bool {
		pc, err := net.ListenPacket("udp", addr)
		if err == nil {
			pc.Close()
		}
		return err == nil
	})
}

// Shutdown closes the socket and stops the factory after its last
// DatagramReceived.
func TestDatagramShutdown(t *testing.T) {
	f := &dgramFactory{}
	s, _, addr := startDgram(t, "bye", "127.0.0.1", f, false, config.Limits{})
	c := dialUDP(t, addr)
	send(t, c, []byte("x"))
	mustRecv(t, c, []byte("x"))
	if err := s.Shutdown(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if f.stops.Load() != 1 || f.lateCalls.Load() != 0 {
		t.Errorf("stops %d, late calls %d", f.stops.Load(), f.lateCalls.Load())
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("socket still bound after shutdown: %v", err)
	}
	pc.Close()
}

// echoRoundTrips sends and reads back n datagrams on c.
func echoRoundTrips(c *net.UDPConn, buf []byte, n int) error {
	for range n {
		if _, err := c.Write(buf[:64]); err != nil {
			return err
		}
		if _, err := c.Read(buf); err != nil {
			return err
		}
	}
	return nil
}

// The steady state allocates nothing per datagram: not in the supervisor's
// path (deliver, checks, WriteTo, flush), and not on a whole round trip
// through the socket's loop.
func TestDatagramSteadyStateAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	f := &dgramFactory{}
	s, _, addr := startDgram(t, "alloc", "127.0.0.1", f, true,
		config.Limits{RateLimit: &config.Rate{Rate: 1e9, Burst: 1 << 30}, RateLimitPerIP: &config.Rate{Rate: 1e9, Burst: 1 << 30},
			Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 2048)
	if err := echoRoundTrips(c, buf, 10); err != nil { // warm up
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(200, func() {
		if err := echoRoundTrips(c, buf, 1); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("a round trip allocates %v times", n)
	}

	s.mu.Lock()
	b := s.services["alloc"].bindings[0]
	s.mu.Unlock()
	d := b.dgram
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1).To4(), Port: c.LocalAddr().(*net.UDPAddr).Port}
	data := make([]byte, 64)
	deliver := func() {
		d.sock.mu.Lock()
		d.sock.dispatching = true
		d.sock.mu.Unlock()
		d.deliver(data, from, time.Now())
		d.sock.mu.Lock()
		d.sock.dispatching = false
		d.flushLocked()
		d.sock.mu.Unlock()
	}
	deliver()
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(500, func() {
		deliver()
		c.Read(buf)
	}); n != 0 {
		t.Errorf("deliver and flush allocate %v times per datagram", n)
	}
}

// BenchmarkDatagramEcho measures a round trip of a 64-byte datagram
// through a udp service whose protocol echoes (run with -benchmem: 0
// allocs/op in the steady state).
func BenchmarkDatagramEcho(b *testing.B) {
	addr := testkit.FreeAddr(b, "udp")
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{
		dgramServiceConfig("bench", &dgramFactory{}, true, config.Limits{}, udpEndpoint(addr)),
	}}); err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	nc, err := net.Dial("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*net.UDPConn)
	c.SetReadDeadline(time.Now().Add(time.Hour))
	buf := make([]byte, 2048)
	if err := echoRoundTrips(c, buf, 10); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(64)
	b.ReportAllocs()
	b.ResetTimer()
	if err := echoRoundTrips(c, buf, b.N); err != nil {
		b.Fatal(err)
	}
}

// bothFactory serves streams (lifecycleFactory's echo) and datagrams
// (dgramFactory's echo).
type bothFactory struct {
	dgramFactory
	stream lifecycleFactory
}

func (f *bothFactory) BuildProtocol(a net.Addr) framework.Protocol { return f.stream.BuildProtocol(a) }

// lastGuarded is the factory the testguarded spec built last.
var lastGuarded atomic.Pointer[bothFactory]

func init() {
	framework.Register(framework.Spec{
		Name:           "testguarded",
		Description:    "A test factory with the guards of the built-in services, serving streams and datagrams.",
		Serves:         framework.Streams | framework.Datagrams,
		DatagramGuards: true,
		New: func(*framework.Env, any) (framework.Factory, error) {
			f := &bothFactory{}
			lastGuarded.Store(f)
			return f, nil
		},
	})
}

// The default per-source limit of a guarded factory (rate 10, burst 20)
// limits its datagrams, and never its connections.
func TestDatagramDefaultLimitSparesConnections(t *testing.T) {
	tcpAddr, udpAddr := testkit.FreeAddr(t, "tcp"), testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	cfg, err := config.Parse([]byte(fmt.Sprintf(`metrics { address = "" }
service "testguarded" "g" {
  endpoint "tcp" { address = %q }
  endpoint "udp" { address = %q }
}
`, tcpAddr, udpAddr)), t.TempDir()+"/superd.hcl")
	if err != nil {
		t.Fatal(err)
	}
	s, m := newTestSupervisor()
	if err := s.Start(cfg); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	f := lastGuarded.Load()
	for range 30 {
		dialEcho(t, "tcp", tcpAddr, "x").Close()
	}
	if got := testutil.ToFloat64(m.ConnectionsRejected.WithLabelValues("g", "testguarded", "rate_limit_per_ip")); got != 0 {
		t.Errorf("%v connections rejected by the datagrams' default limit", got)
	}
	c := dialUDP(t, udpAddr)
	for i := range 25 {
		send(t, c, []byte(strconv.Itoa(i)))
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(m.DatagramsReceived.WithLabelValues("g", "testguarded", "udp:"+udpAddr)) == 25
	})
	countReplies(t, c, 20)
	if got := f.received.Load(); got != 20 {
		t.Errorf("delivered %d datagrams, want 20 (the default burst)", got)
	}
	if got := testutil.ToFloat64(m.DatagramsDropped.WithLabelValues("g", "testguarded", "rate_limit_per_ip")); got != 5 {
		t.Errorf("dropped{rate_limit_per_ip} = %v, want 5", got)
	}
}

func sockBuffers(t *testing.T, uc *net.UDPConn) (rcv, snd int) {
	t.Helper()
	raw, err := uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var gerr error
	raw.Control(func(fd uintptr) {
		rcv, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		if gerr == nil {
			snd, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		}
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return rcv, snd
}

// A reload that changes read_buffer or write_buffer of a udp endpoint
// whose socket is handed over applies them to that socket.
func TestDatagramReloadAppliesBufferSizes(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("buffer sizes as Linux reports them")
	}
	addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	s, ep, uc := startUDPBuffers(t, addr)
	ep.ReadBuffer, ep.WriteBuffer = 16384, 32768
	f := &dgramFactory{}
	if err := s.Reload(&config.File{Services: []*config.Service{
		dgramServiceConfig("buf", f, false, config.Limits{}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	same := s.sockets["udp:"+addr].dgram.uc == uc
	s.mu.Unlock()
	if !same {
		t.Fatal("the socket was not handed over")
	}
	if rcv, snd := sockBuffers(t, uc); rcv != 2*16384 || snd != 2*32768 {
		t.Errorf("after reload: SO_RCVBUF %d, SO_SNDBUF %d; want %d and %d", rcv, snd, 2*16384, 2*32768)
	}
	c := dialUDP(t, addr)
	send(t, c, []byte("x"))
	mustRecv(t, c, []byte("x"))
}

// waitFactory serves a udp socket in wait mode, as exec with wait = true
// does: handed the socket, it answers one datagram, as a program that
// exits after one would.
type waitFactory struct {
	served atomic.Int32
}

func (f *waitFactory) BuildProtocol(net.Addr) framework.Protocol { return nil }

func (f *waitFactory) ServesListeners() bool { return true }

func (f *waitFactory) ServeListener(l *framework.HandedListener) error {
	raw, err := l.File.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, 2048)
	raw.Control(func(fd uintptr) {
		n, from, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
		if err != nil {
			return
		}
		f.served.Add(1)
		syscall.Sendto(int(fd), append([]byte("waited "), buf[:n]...), 0, from)
	})
	return nil
}

// A udp endpoint in wait mode has its datagram series from startup too
// (at 0: the program, not superd, reads the datagrams), as a tcp endpoint
// in wait mode has its connections_total.
func TestDatagramWaitModeSeries(t *testing.T) {
	addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	w := &waitFactory{}
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("w", w, false, config.Limits{}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	for name, n := range map[string]int{
		"superd_datagrams_received_total": testutil.CollectAndCount(m.DatagramsReceived),
		"superd_datagrams_sent_total":     testutil.CollectAndCount(m.DatagramsSent),
		"superd_datagrams_dropped_total":  testutil.CollectAndCount(m.DatagramsDropped),
	} {
		if want := map[bool]int{true: 5, false: 1}[strings.HasSuffix(name, "dropped_total")]; n != want {
			t.Errorf("%s has %d series in wait mode, want %d", name, n, want)
		}
	}
	c := dialUDP(t, addr)
	send(t, c, []byte("a"))
	mustRecv(t, c, []byte("waited a"))
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { // the removed instance drains in the background
		return testutil.CollectAndCount(m.DatagramsReceived)+testutil.CollectAndCount(m.DatagramsSent) == 0
	})
}

// A reply the protocol sends while a reload switches its socket to wait
// mode goes out: waking the loop for the switch must not fail the
// socket's writes (the reply is the old owner's, to a datagram it read
// before the switch).
func TestDatagramReplyWhileSwitchingToWaitMode(t *testing.T) {
	addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()
	f := &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
		<-release
		p.t.WriteTo(data, from)
	}}
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("w", f, false, config.Limits{}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("before"))
	waitFor(t, func() bool { return f.inFlight.Load() == 1 })
	w := &waitFactory{}
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("w", w, false, config.Limits{MaxConnections: 1}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	unblock()
	mustRecv(t, c, []byte("before"))
	send(t, c, []byte("after"))
	mustRecv(t, c, []byte("waited after"))
}

// Reloads switch a udp socket from wait mode to a datagram protocol and
// back, many times; a datagram sent once the reload has returned goes to
// the new owner, whichever its mode (none is read by the loop and then
// dropped because the owner now waits).
func TestDatagramReloadToWaitModeAndBack(t *testing.T) {
	addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	s, _ := newTestSupervisor()
	w := &waitFactory{}
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("w", w, false, config.Limits{}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("a"))
	mustRecv(t, c, []byte("waited a"))
	for i := range 50 {
		f := &dgramFactory{}
		if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
			dgramServiceConfig("w", f, false, config.Limits{MaxConnections: 2*i + 1}, udpEndpoint(addr)),
		}}); err != nil {
			t.Fatal(err)
		}
		msg := []byte("to the protocol " + strconv.Itoa(i))
		send(t, c, msg)
		mustRecv(t, c, msg)

		w := &waitFactory{}
		if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
			dgramServiceConfig("w", w, false, config.Limits{MaxConnections: 2*i + 2}, udpEndpoint(addr)),
		}}); err != nil {
			t.Fatal(err)
		}
		msg = []byte("to the program " + strconv.Itoa(i))
		send(t, c, msg)
		mustRecv(t, c, append([]byte("waited "), msg...))
		if f.received.Load() != 1 || w.served.Load() != 1 {
			t.Fatalf("round %d: %d datagrams to the protocol, %d to the program; want 1 and 1", i, f.received.Load(), w.served.Load())
		}
	}
}

// A datagram being delivered when superd shuts down still gets its reply:
// the close stops the reading only, not the batch's replies.
func TestReplyOfDatagramInFlightAtShutdown(t *testing.T) {
	f, entered, release := holdingFactory(nil)
	s, m, addr := startDgram(t, "bye", "127.0.0.1", f, false, config.Limits{})
	s.mu.Lock()
	sock := s.services["bye"].bindings[0].sock
	s.mu.Unlock()
	c := dialUDP(t, addr)
	send(t, c, []byte("last"))
	<-entered
	done := make(chan error)
	go func() { done <- s.Shutdown(5 * time.Second) }()
	waitFor(t, func() bool { return sock.closed.Load() })
	close(release)
	got, err := recv(c, 5*time.Second)
	if serr := <-done; serr != nil {
		t.Fatal(serr)
	}
	if err != nil || string(got) != "last" {
		t.Errorf("the reply of the datagram in flight: %q, %v (send_failed %v)", got, err, dgramDropped(m, "bye", metrics.DatagramSendFailed))
	}
}

// Datagrams a source's own limit refuses spend nothing of the service's:
// a flooding source held to rate_limit_per_ip does not empty rate_limit
// for the others.
func TestPerSourceRefusalsSpareServiceTokens(t *testing.T) {
	other, ok := bindUDP(t, "127.0.0.2:0")
	if !ok {
		t.Skip("127.0.0.2 is not a local address here")
	}
	f := &dgramFactory{}
	s, m, addr := startDgram(t, "both", "127.0.0.1", f, false, config.Limits{
		RateLimit:      &config.Rate{Rate: 0.001, Burst: 5},
		RateLimitPerIP: &config.Rate{Rate: 0.001, Burst: 2},
	})
	defer s.Shutdown(5 * time.Second)
	one, _ := bindUDP(t, "127.0.0.1:0")
	for i := range 10 {
		sendTo(t, one, addr, []byte{byte(i)})
	}
	waitFor(t, func() bool { return dgramReceived(m, "both", addr) == 10 })
	sendTo(t, other, addr, []byte("legit"))
	waitFor(t, func() bool {
		return f.received.Load()+int64(dgramDropped(m, "both", metrics.DatagramRateLimit)+dgramDropped(m, "both", metrics.DatagramRateLimitPerIP)) == 11
	})
	if got := f.received.Load(); got != 3 {
		t.Errorf("delivered %d datagrams, want 3 (2 from the flooding source, 1 from the other); drops rate_limit %v, rate_limit_per_ip %v",
			got, dgramDropped(m, "both", metrics.DatagramRateLimit), dgramDropped(m, "both", metrics.DatagramRateLimitPerIP))
	}
}

// A guarded service does not answer a directed broadcast source (a
// subnet's broadcast address, which reflects cannot tell from a host: a
// spoofed source where rp_filter is off): its socket refuses broadcast
// sends (SO_BROADCAST off), so such a reply fails instead of reaching the
// whole subnet, and is counted as reflection (the kernel's EACCES), not
// as a failed send. Here the reply goes to lo's broadcast address
// 127.255.255.255. An unguarded service's socket keeps Go's default.
func TestGuardedNoDirectedBroadcast(t *testing.T) {
	broadcast := &net.UDPAddr{IP: net.IPv4(127, 255, 255, 255), Port: 40000}
	f := &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
		p.t.WriteTo(data, broadcast)
	}}
	s, m, addr := startDgram(t, "g", "127.0.0.1", f, true, config.Limits{})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("x"))
	waitFor(t, func() bool { return dgramDropped(m, "g", metrics.DatagramReflection) == 1 })
	if n := dgramSent(m, "g", addr); n != 0 {
		t.Errorf("%v replies sent to a broadcast address", n)
	}
	checkDrops(t, m, "g", map[string]float64{metrics.DatagramReflection: 1})
	s.mu.Lock()
	uc := s.services["g"].bindings[0].sock.dgram.uc
	s.mu.Unlock()
	if v := udpSockopt(t, uc, syscall.SO_BROADCAST); v != 0 {
		t.Errorf("SO_BROADCAST = %d on a guarded service's socket", v)
	}

	s2, _, _ := startDgram(t, "open", "127.0.0.1", &dgramFactory{}, false, config.Limits{})
	defer s2.Shutdown(5 * time.Second)
	s2.mu.Lock()
	uc = s2.services["open"].bindings[0].sock.dgram.uc
	s2.mu.Unlock()
	if v := udpSockopt(t, uc, syscall.SO_BROADCAST); v != 1 {
		t.Errorf("SO_BROADCAST = %d on an unguarded service's socket", v)
	}
}

// The rule is the batch's owner's: a guarded service's reply to a
// broadcast address still fails when it is the reply to a datagram it was
// delivering while a reload handed the socket to an unguarded successor
// (which allows broadcast for its own batches).
func TestGuardedNoDirectedBroadcastDuringReload(t *testing.T) {
	broadcast := &net.UDPAddr{IP: net.IPv4(127, 255, 255, 255), Port: 40000}
	old, entered, release := holdingFactory(broadcast)
	s, m, addr := startDgram(t, "g", "127.0.0.1", old, true, config.Limits{})
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, addr)
	send(t, c, []byte("x"))
	<-entered
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("g", &dgramFactory{}, false, config.Limits{MaxConnections: 1}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	close(release)
	waitFor(t, func() bool { return old.stops.Load() == 1 })
	if sent, refused := dgramSent(m, "g", addr), dgramDropped(m, "g", metrics.DatagramReflection); sent != 0 || refused != 1 {
		t.Errorf("the guarded service's reply to %v: sent %v, reflection %v; want it refused", broadcast, sent, refused)
	}
	// The successor's batches allow it.
	send(t, c, []byte("y"))
	mustRecv(t, c, []byte("y"))
	s.mu.Lock()
	uc := s.services["g"].bindings[0].sock.dgram.uc
	s.mu.Unlock()
	if v := udpSockopt(t, uc, syscall.SO_BROADCAST); v != 1 {
		t.Errorf("SO_BROADCAST = %d once the unguarded successor serves", v)
	}
}

func udpSockopt(t *testing.T, uc *net.UDPConn, opt int) int {
	t.Helper()
	raw, err := uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	raw.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt) })
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// reuse_port counts only when the socket is bound, and a reload keeps a
// udp socket as it keeps a tcp listener: a reload that changes it fails
// and says so, as it does for tcp, and the socket serves on under the
// configuration in force. (It reported success while the socket kept the
// option it was bound with: turned on, a second process could still not
// share the port.)
func TestDatagramReloadRefusesReusePortChange(t *testing.T) {
	for _, from := range []bool{false, true} {
		addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
		ep := udpEndpoint(addr)
		ep.ReusePort = from
		s, _ := newTestSupervisor()
		if err := s.Start(&config.File{Services: []*config.Service{
			dgramServiceConfig("rp", &dgramFactory{}, false, config.Limits{}, ep),
		}}); err != nil {
			t.Fatal(err)
		}
		ep.ReusePort = !from
		err := s.Reload(&config.File{Services: []*config.Service{
			dgramServiceConfig("rp", &dgramFactory{}, false, config.Limits{}, ep),
		}})
		want := fmt.Sprintf("reuse_port (%v, now %v): set only when the socket is bound", from, !from)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("reuse_port %v to %v: reload error %v, want one saying %q", from, !from, err, want)
		}
		c := dialUDP(t, addr)
		send(t, c, []byte("still served"))
		mustRecv(t, c, []byte("still served"))
		s.Shutdown(5 * time.Second)
	}
}

// A reload that leaves read_buffer and write_buffer out of a udp endpoint
// it keeps gives the socket the system's sizes again, what a restart with
// that file gives it (and what the README says a size left out is): the
// socket kept the sizes the old file set, so one file gave two sockets,
// depending on whether superd had been reloaded or restarted.
func TestDatagramReloadRestoresSystemBufferSizes(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("buffer sizes as Linux reports them")
	}
	fresh, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	sysRcv, sysSnd := sockBuffers(t, fresh)
	fresh.Close()

	addr := testkit.FreeAddrOn(t, "udp", "127.0.0.1")
	s, _, uc := startUDPBuffers(t, addr)
	if err := s.Reload(&config.File{Services: []*config.Service{
		dgramServiceConfig("buf", &dgramFactory{}, false, config.Limits{}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	same := s.sockets["udp:"+addr].dgram.uc == uc
	s.mu.Unlock()
	if !same {
		t.Fatal("the socket was not handed over")
	}
	if rcv, snd := sockBuffers(t, uc); rcv != sysRcv || snd != sysSnd {
		t.Errorf("after a reload without read_buffer and write_buffer: SO_RCVBUF %d, SO_SNDBUF %d; want the system's, %d and %d", rcv, snd, sysRcv, sysSnd)
	}
	c := dialUDP(t, addr)
	send(t, c, []byte("x"))
	mustRecv(t, c, []byte("x"))
}

// startUDPBuffers starts service "buf" on a udp endpoint at addr with
// read_buffer 4096 and write_buffer 8192 and checks its socket has them
// (Linux doubles both); it returns the supervisor (shut down when the test
// ends), the endpoint and the socket.
func startUDPBuffers(t *testing.T, addr string) (*Supervisor, endpoint.Config, *net.UDPConn) {
	t.Helper()
	ep := udpEndpoint(addr)
	ep.ReadBuffer, ep.WriteBuffer = 4096, 8192
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{
		dgramServiceConfig("buf", &dgramFactory{}, false, config.Limits{}, ep),
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(5 * time.Second) })
	s.mu.Lock()
	uc := s.sockets["udp:"+addr].dgram.uc
	s.mu.Unlock()
	if rcv, snd := sockBuffers(t, uc); rcv != 2*4096 || snd != 2*8192 {
		t.Fatalf("at start: SO_RCVBUF %d, SO_SNDBUF %d", rcv, snd)
	}
	return s, ep, uc
}
