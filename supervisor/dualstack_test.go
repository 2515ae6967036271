package supervisor

import (
	"bufio"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/superd-dev/superd/config"
)

// On a dual-stack listener ([::]:P), IPv4 clients arrive as IPv4-mapped
// IPv6 addresses; allow/deny and the per-source limits must see them as
// the plain IPv4 addresses the configuration names.
func TestDualStackPeersArePlainIPv4(t *testing.T) {
	probe, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no IPv6 on this machine: %v", err)
	}
	port := probe.Addr().(*net.TCPAddr).Port
	probe.Close()
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	addr := "[::]:" + strconv.Itoa(port)
	deny := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	f := &lifecycleFactory{}
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: time.Second, Services: []*config.Service{
		serviceConfig("ds", f, config.Limits{Deny: deny}, tcpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(time.Second)

	denied := m.ConnectionsRejected.WithLabelValues("ds", "lifecycle", "denied")
	c4, err := net.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c4.Close()
	waitFor(t, func() bool { return testutil.ToFloat64(denied) == 1 })

	c6, err := net.Dial("tcp6", "[::1]:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c6.Close()
	c6.SetDeadline(time.Now().Add(5 * time.Second))
	c6.Write([]byte("hi\n"))
	if _, err := bufio.NewReader(c6).ReadString('\n'); err != nil {
		t.Fatalf("::1 was not served: %v", err)
	}
	if got := testutil.ToFloat64(denied); got != 1 {
		t.Errorf("denied = %v, want 1 (only the IPv4 client)", got)
	}
}

func TestPlainPeer(t *testing.T) {
	mapped := &net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 7}
	if got := plainPeer(mapped); got != "127.0.0.1:7" {
		t.Errorf("plainPeer(%v) = %q", mapped, got)
	}
	v6 := &net.TCPAddr{IP: net.ParseIP("::1"), Port: 7}
	if got := plainPeer(v6); got != "[::1]:7" {
		t.Errorf("plainPeer(%v) = %q", v6, got)
	}
}
