package supervisor

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/testkit"
)

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A udp socket bound to every address answers from the address the client
// wrote to, not from the one the kernel's routing picks: a connected
// client (nc -u, rdate -u, net.Dial) or a NAT drops a reply from any
// other. On Linux all of 127.0.0.0/8 is local, so 127.0.0.2 is a second
// address of the host with nothing to set up.
func TestDatagramWildcardRepliesFromTheAddressWrittenTo(t *testing.T) {
	for _, bind := range []string{"0.0.0.0", ""} {
		t.Run("bind="+bind, func(t *testing.T) {
			f := &dgramFactory{}
			_, port, _ := net.SplitHostPort(testkit.FreeAddrOn(t, "udp", "0.0.0.0"))
			s, _ := newTestSupervisor()
			if err := s.Start(&config.File{Services: []*config.Service{
				dgramServiceConfig("wild", f, false, config.Limits{}, udpEndpoint(net.JoinHostPort(bind, port))),
			}}); err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown(5 * time.Second)
			pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: atoi(t, port)}
			if _, err := pc.WriteTo([]byte("hi"), to); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			if from.String() != to.String() {
				t.Errorf("reply %q came from %v; the client wrote to %v", buf[:n], from, to)
			}
		})
	}
}

// startWildcard starts a service of f on a udp endpoint bound to every
// address: bind is "0.0.0.0", "::" or "" (":P", both families where the
// machine has IPv6). It returns the supervisor and the port.
func startWildcard(t *testing.T, bind string, f framework.Factory) (*Supervisor, int) {
	t.Helper()
	probe := "0.0.0.0"
	if bind == "::" {
		probe = "::"
	}
	_, port, _ := net.SplitHostPort(testkit.FreeAddrOn(t, "udp", probe))
	s, _ := newTestSupervisor()
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("wild", f, false, config.Limits{}, udpEndpoint(net.JoinHostPort(bind, port))),
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(5 * time.Second) })
	return s, atoi(t, port)
}

// wildcardBinds are the wildcard addresses to run a test on: 0.0.0.0, and
// where the machine has IPv6 "::" and "" (both an IPv6 socket taking IPv4
// as mapped addresses).
func wildcardBinds() []string {
	if len(loopbacks()) < 2 {
		return []string{"0.0.0.0"}
	}
	return []string{"0.0.0.0", "::", ""}
}

// listenUDPOn binds a client socket to host:0.
func listenUDPOn(t *testing.T, host string) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// readFrom reads one datagram, or fails the test after five seconds.
func readFrom(t *testing.T, c *net.UDPConn) (string, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("%v: %v", c.LocalAddr(), err)
	}
	return string(buf[:n]), netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

// The same from an IPv4 client to a socket bound to "::" (dual-stack), and
// from a connected client, which takes replies from the address it dialed
// only.
func TestDatagramWildcardRepliesToIPv4ClientsFromTheAddressWrittenTo(t *testing.T) {
	for _, bind := range wildcardBinds() {
		t.Run("bind="+bind, func(t *testing.T) {
			_, port := startWildcard(t, bind, &dgramFactory{})
			for _, host := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.1"} {
				c := dialUDP(t, net.JoinHostPort(host, strconv.Itoa(port)))
				send(t, c, []byte("to "+host))
				mustRecv(t, c, []byte("to "+host))
			}
		})
	}
}

// otherIPv6Addr returns an IPv6 address of this machine that is neither
// ::1 nor link-local, or skips the test.
func otherIPv6Addr(t *testing.T) netip.Addr {
	t.Helper()
	if len(loopbacks()) < 2 {
		t.Skip("no IPv6 here")
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skip(err)
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr()
		if !ip.Is6() || ip.Is4In6() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() {
			continue
		}
		if pc, err := net.ListenPacket("udp6", net.JoinHostPort(ip.String(), "0")); err == nil {
			pc.Close()
			return ip
		}
	}
	t.Skip("no IPv6 address other than ::1 and link-local ones")
	return netip.Addr{}
}

// An IPv6 client writing from ::1 to another address of the machine gets
// its reply from that address (the routing would pick ::1).
func TestDatagramWildcardRepliesToIPv6ClientsFromTheAddressWrittenTo(t *testing.T) {
	other := otherIPv6Addr(t)
	for _, bind := range []string{"::", ""} {
		t.Run("bind="+bind, func(t *testing.T) {
			_, port := startWildcard(t, bind, &dgramFactory{})
			for _, to := range []netip.Addr{other, netip.IPv6Loopback()} {
				c := listenUDPOn(t, "::1")
				dst := netip.AddrPortFrom(to, uint16(port))
				if _, err := c.WriteToUDPAddrPort([]byte("hi"), dst); err != nil {
					t.Fatal(err)
				}
				if got, from := readFrom(t, c); got != "hi" || from != dst {
					t.Errorf("reply %q came from %v; the client wrote to %v", got, from, dst)
				}
			}
		})
	}
}

// A link-local source goes with its interface (IPV6_PKTINFO's ifindex):
// a peer on the link writing to a link-local address of the machine gets
// its reply from it.
func TestDatagramWildcardRepliesToLinkLocalPeers(t *testing.T) {
	if len(loopbacks()) < 2 {
		t.Skip("no IPv6 here")
	}
	var laddr *net.UDPAddr
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() == nil && ipn.IP.IsLinkLocalUnicast() {
				laddr = &net.UDPAddr{IP: ipn.IP, Zone: ifc.Name}
				break
			}
		}
		if laddr != nil {
			break
		}
	}
	if laddr == nil {
		t.Skip("no link-local IPv6 address")
	}
	pc, err := net.ListenUDP("udp6", laddr)
	if err != nil {
		t.Skip("cannot bind ", laddr, ": ", err)
	}
	defer pc.Close()
	_, port := startWildcard(t, "::", &dgramFactory{})
	to := &net.UDPAddr{IP: laddr.IP, Zone: laddr.Zone, Port: port}
	if _, err := pc.WriteToUDP([]byte("hi"), to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pc.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "hi" || !from.IP.Equal(to.IP) || from.Port != port {
		t.Errorf("reply %q came from %v; the client wrote to %v", buf[:n], from, to)
	}
}

// A datagram sent to a broadcast address is answered from the local
// address the kernel names for it (IP_PKTINFO's ipi_spec_dst): the
// broadcast address itself cannot be a source, and the reply would be
// refused.
func TestDatagramWildcardAnswersBroadcasts(t *testing.T) {
	for _, bind := range wildcardBinds() {
		t.Run("bind="+bind, func(t *testing.T) {
			_, port := startWildcard(t, bind, &dgramFactory{})
			c := listenUDPOn(t, "127.0.0.1") // Go's sockets have SO_BROADCAST
			bcast := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 255, 255, 255}), uint16(port))
			if _, err := c.WriteToUDPAddrPort([]byte("anyone?"), bcast); err != nil {
				t.Fatal(err)
			}
			got, from := readFrom(t, c)
			if want := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port)); got != "anyone?" || from != want {
				t.Errorf("reply %q came from %v; want it from %v", got, from, want)
			}
		})
	}
}

// One batch mixes many sources and several destination addresses: each
// reply leaves from the address its own request went to, and a copy
// written to someone else meanwhile goes from the address the routing
// picks (no source of another datagram sticks to it).
func TestDatagramWildcardMixedBatch(t *testing.T) {
	for _, bind := range wildcardBinds() {
		t.Run("bind="+bind, func(t *testing.T) {
			release := make(chan struct{})
			watcher := listenUDPOn(t, "127.0.0.1")
			watch := watcher.LocalAddr()
			f := &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
				if string(data) == "gate" {
					<-release // the others queue meanwhile: one batch
				}
				p.t.WriteTo(data, watch)
				p.t.WriteTo(data, from)
			}}
			_, port := startWildcard(t, bind, f)
			dsts := []netip.Addr{
				netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.AddrFrom4([4]byte{127, 0, 0, 2}),
				netip.AddrFrom4([4]byte{127, 0, 0, 3}), netip.AddrFrom4([4]byte{127, 0, 0, 4}),
			}
			gate := listenUDPOn(t, "127.0.0.1")
			if _, err := gate.WriteToUDPAddrPort([]byte("gate"), netip.AddrPortFrom(dsts[1], uint16(port))); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return f.inFlight.Load() == 1 })

			// 24 requests (the batch holds 32) from 8 clients on three
			// source addresses, each client writing to three of the
			// destinations.
			type req struct {
				c  *net.UDPConn
				to netip.AddrPort
			}
			var reqs []req
			want := map[string]netip.AddrPort{}
			for i := range 8 {
				c := listenUDPOn(t, fmt.Sprintf("127.0.0.%d", 1+i%3))
				for j := range 3 {
					to := netip.AddrPortFrom(dsts[(i+j)%len(dsts)], uint16(port))
					msg := fmt.Sprintf("%d/%d", i, j)
					if _, err := c.WriteToUDPAddrPort([]byte(msg), to); err != nil {
						t.Fatal(err)
					}
					reqs = append(reqs, req{c, to})
					want[msg] = to
				}
			}
			time.Sleep(50 * time.Millisecond) // loopback: they are queued
			close(release)

			if got, from := readFrom(t, gate); got != "gate" || from.Addr() != dsts[1] {
				t.Errorf("gate: reply %q came from %v; want it from %v", got, from, dsts[1])
			}
			for i := 0; i < len(reqs); i += 3 {
				for range 3 {
					got, from := readFrom(t, reqs[i].c)
					if to, ok := want[got]; !ok || from != to {
						t.Errorf("reply %q came from %v; its request went to %v", got, from, to)
					}
				}
			}
			for range len(reqs) + 1 {
				got, from := readFrom(t, watcher)
				if from.Addr() != dsts[0] {
					t.Errorf("the copy of %q to a third party came from %v; want the routing's choice, %v", got, from, dsts[0])
				}
			}
		})
	}
}

// A socket the service manager passed, bound to every address, gets the
// option too.
func TestDatagramInheritedWildcardRepliesFromTheAddressWrittenTo(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	file, err := pc.(*net.UDPConn).File()
	pc.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newTestSupervisor()
	s.Inherit([]*os.File{file})
	if err := s.Start(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("passed", &dgramFactory{}, false, config.Limits{}, udpEndpoint("0.0.0.0:"+strconv.Itoa(port))),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	c := dialUDP(t, "127.0.0.2:"+strconv.Itoa(port))
	send(t, c, []byte("passed"))
	mustRecv(t, c, []byte("passed"))
}

// Replies written from another goroutine while the loop delivers (they
// share the send batch) are sent, and race nothing; they may leave from
// the routing's address, but every echo leaves from the address written
// to.
func TestDatagramWildcardWriteToFromAnotherGoroutine(t *testing.T) {
	peers := make(chan *net.UDPAddr, 1)
	f := &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
		if string(data) == "subscribe" {
			ua := from.(*net.UDPAddr)
			peers <- &net.UDPAddr{IP: append(net.IP(nil), ua.IP...), Port: ua.Port}
			return
		}
		p.t.WriteTo(data, from)
	}}
	_, port := startWildcard(t, "", f)
	c := listenUDPOn(t, "127.0.0.1")
	to := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 2}), uint16(port))
	c.WriteToUDPAddrPort([]byte("subscribe"), to)
	peer := <-peers
	tr := f.transport(0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			tr.WriteTo([]byte("push "+strconv.Itoa(i)), peer)
		}
	}()
	for i := range 100 {
		if _, err := c.WriteToUDPAddrPort([]byte("echo "+strconv.Itoa(i)), to); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	pushes, echoes := 0, 0
	for pushes+echoes < 200 {
		got, from := readFrom(t, c)
		switch {
		case strings.HasPrefix(got, "push "):
			pushes++
		case strings.HasPrefix(got, "echo "):
			echoes++
			if from != to {
				t.Errorf("echo %q came from %v; the client wrote to %v", got, from, to)
			}
		}
	}
}

// On a socket bound to every address too, the steady state allocates
// nothing per datagram.
func TestDatagramWildcardSteadyStateAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, bind := range wildcardBinds() {
		t.Run("bind="+bind, func(t *testing.T) {
			_, port := startWildcard(t, bind, &dgramFactory{})
			c := dialUDP(t, "127.0.0.2:"+strconv.Itoa(port)) // connected: the reply must come from 127.0.0.2
			c.SetReadDeadline(time.Now().Add(time.Minute))
			buf := make([]byte, 2048)
			if err := echoRoundTrips(c, buf, 10); err != nil {
				t.Fatal(err)
			}
			if n := testing.AllocsPerRun(200, func() {
				if err := echoRoundTrips(c, buf, 1); err != nil {
					t.Fatal(err)
				}
			}); n != 0 {
				t.Errorf("a round trip allocates %v times", n)
			}
		})
	}
}

// A program in wait mode gets a wildcard socket without the options the
// loop reads the destination with (it did not ask for their control
// messages); superd turns them on again when it serves the socket once
// more, and answers from the address written to.
func TestDatagramWildcardLentToProgramWithoutPktinfo(t *testing.T) {
	s, port := startWildcard(t, "0.0.0.0", &waitFactory{})
	pktinfo := func() int {
		s.mu.Lock()
		uc := s.services["wild"].bindings[0].sock.dgram.uc
		s.mu.Unlock()
		raw, err := uc.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var serr error
		raw.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO) })
		if serr != nil {
			t.Fatal(serr)
		}
		return v
	}
	if v := pktinfo(); v != 0 {
		t.Errorf("IP_PKTINFO = %d on the socket a program in wait mode owns", v)
	}
	addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(port))
	if err := s.Reload(&config.File{ShutdownTimeout: 5 * time.Second, Services: []*config.Service{
		dgramServiceConfig("wild", &dgramFactory{}, false, config.Limits{MaxConnections: 1}, udpEndpoint(addr)),
	}}); err != nil {
		t.Fatal(err)
	}
	if v := pktinfo(); v != 1 {
		t.Errorf("IP_PKTINFO = %d once superd serves the socket again", v)
	}
	c := dialUDP(t, net.JoinHostPort("127.0.0.2", strconv.Itoa(port)))
	send(t, c, []byte("back"))
	mustRecv(t, c, []byte("back"))
}
