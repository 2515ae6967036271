package supervisor

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/testkit"
)

// A datagram from a scoped IPv6 source is handed to the protocol with its
// zone (the interface's name), and a reply to that address leaves with the
// same scope id, without an allocation once the interface is known. This
// runs on the loopback interface's index whatever addresses the machine
// has: the conversion, not the route.
func TestDatagramZoneCarriedToReply(t *testing.T) {
	uc, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 here: %v", err)
	}
	defer uc.Close()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no interface lo: %v", err)
	}
	b, err := newBatchIO(uc)
	if err != nil {
		t.Fatal(err)
	}
	sa := &b.recv.names[0]
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Scope_id: uint32(lo.Index)}
	sa.Addr = [16]byte{0xfe, 0x80, 15: 1}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], 4321)
	b.recv.hdrs[0].n = 3

	convert := func() (*net.UDPAddr, bool) {
		_, from, _ := b.datagram(0)
		to, ok := addrPort(from)
		if !ok || !b.queue([]byte("abc"), to) {
			return from, false
		}
		b.nout = 0
		return from, true
	}
	from, ok := convert()
	if !ok {
		t.Fatal("the reply was not queued")
	}
	if got, want := from.String(), "[fe80::1%lo]:4321"; got != want {
		t.Errorf("source = %s, want %s", got, want)
	}
	if got := b.send.names[0].Scope_id; got != uint32(lo.Index) {
		t.Errorf("reply's scope id = %d, want %d (lo)", got, lo.Index)
	}

	// A numeric zone (an index) is understood too.
	if got := zones.index(strconv.Itoa(lo.Index)); got != uint32(lo.Index) {
		t.Errorf("zone index of %q = %d, want %d", strconv.Itoa(lo.Index), got, lo.Index)
	}
	// An address without a zone leaves without a scope id.
	b.queue([]byte("x"), netip.MustParseAddrPort("[fe80::1]:4321"))
	if got := b.send.names[0].Scope_id; got != 0 {
		t.Errorf("reply without a zone has scope id %d", got)
	}
	b.nout = 0

	if raceEnabled {
		return
	}
	if n := testing.AllocsPerRun(1000, func() { convert() }); n != 0 {
		t.Errorf("carrying the zone allocates %v times per datagram", n)
	}
}

// A client on a link-local address is seen with its zone, and gets its
// echo. It runs where an interface has a link-local address (loopback has
// none), and is skipped elsewhere. The peer is local, so the kernel would
// deliver the reply even without its scope id: what this checks end to end
// is the zone on the way in; the test above checks the scope id on the way
// out.
func TestDatagramEchoLinkLocal(t *testing.T) {
	var local *net.UDPAddr
	ifs, _ := net.Interfaces()
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() == nil && n.IP.IsLinkLocalUnicast() {
				local = &net.UDPAddr{IP: n.IP, Zone: ifi.Name}
				break
			}
		}
		if local != nil {
			break
		}
	}
	if local == nil {
		t.Skip("no interface with a link-local IPv6 address")
	}
	c, err := net.ListenUDP("udp6", local)
	if err != nil {
		t.Skipf("cannot bind %s: %v", local, err)
	}
	defer c.Close()

	var seen atomic.Value
	f := &dgramFactory{onDatagram: func(p *dgramProto, data []byte, from net.Addr) {
		seen.Store(from.String())
		p.t.WriteTo(data, from)
	}}
	_, port, _ := net.SplitHostPort(testkit.FreeAddrOn(t, "udp", "::"))
	s, m := newTestSupervisor()
	if err := s.Start(&config.File{Services: []*config.Service{
		dgramServiceConfig("ll", f, false, config.Limits{}, udpEndpoint("[::]:"+port)),
	}}); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(5 * time.Second)
	server := &net.UDPAddr{IP: local.IP, Zone: local.Zone}
	server.Port, _ = net.LookupPort("udp", port)
	if _, err := c.WriteToUDP([]byte("hello link-local"), server); err != nil {
		t.Fatal(err)
	}
	mustRecv(t, c, []byte("hello link-local"))
	if got, want := seen.Load(), c.LocalAddr().String(); got != want {
		t.Errorf("the protocol saw the peer as %v, want %s", got, want)
	}
	checkDrops(t, m, "ll", nil)
}
