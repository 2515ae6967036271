package supervisor

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Datagrams move in batches: one recvmmsg(2) reads up to batchSize queued
// datagrams, and the replies made while they are delivered leave in one
// sendmmsg(2). Every buffer, header and address is allocated once per
// socket and reused, so a datagram in the steady state costs no
// allocation.
//
// Both calls are made with MSG_DONTWAIT, so they never block: they are
// raw system calls, which do not tell the Go scheduler. A call the
// scheduler is told of (syscall.Syscall) wakes the runtime's sysmon thread
// the first time the loop runs after the socket went dry, and sysmon then
// polls every 20 µs for a while; under U64 that was 10% of superd's CPU,
// and raw calls cut superd's CPU per datagram by a fifth. The price: the
// loop's thread keeps its P for the length of one call (a sendmmsg of a
// full batch over loopback delivers every datagram in the call: about
// 5 µs each under U64, so under 200 µs for 32), during which a
// stop-the-world waits for it.

// mmsghdr is struct mmsghdr: a msghdr and the length the kernel filled in.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// batchIO is the batched reader and writer of one udp socket.
type batchIO struct {
	raw  syscall.RawConn
	six  bool // the socket is AF_INET6 (IPv4 peers appear as mapped addresses)
	recv mmsgs
	send mmsgs
	nout int // datagrams queued in send

	// Set for the closures below, which are made once: a method value
	// passed to RawConn each time would allocate. The loop reads while
	// other goroutines flush (under the socket's lock): each side has its
	// own results.
	got, sentN int
	err, werr  error
	readFn     func(fd uintptr) bool
	writeFn    func(fd uintptr) bool
	// claim is called right before each read: false leaves the queue
	// alone (read returns errYield); true holds the owner until settle,
	// called right after the read with whether it got anything, so no
	// owner swap falls between the claim and the read.
	claim  func() bool
	settle func(read bool)
	addrs  []net.UDPAddr // recv's source addresses, reused

	// A socket bound to every address (0.0.0.0, ::) has pktinfo: the
	// kernel tells the address each datagram was sent to, and a reply
	// to that datagram's source leaves from it (see enablePktinfo). The
	// slices are per recv slot, written by datagram.
	pktinfo bool
	locals  []netip.Addr     // the address datagram i was sent to, or the zero Addr (the kernel's choice)
	ifindex []uint32         // the interface datagram i came in by
	srcs    []netip.AddrPort // datagram i's source, unmapped, without its zone
	scopes  []uint32         // datagram i's source's scope id (IPv6)
	// cur is the datagram being delivered, -1 between them (see
	// delivering). It is atomic because a WriteTo from another goroutine
	// reads it (under the socket's lock) while the loop delivers.
	cur atomic.Int32
}

// mmsgs is a vector of messages with one buffer and one address each,
// and on a pktinfo socket one control buffer each.
type mmsgs struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	bufs  [][]byte
	names []unix.RawSockaddrInet6 // big enough for either family
	ctrls [][]byte                // nil without pktinfo
}

func newMmsgs(n, size, ctrl int) mmsgs {
	m := mmsgs{
		hdrs:  make([]mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		bufs:  make([][]byte, n),
		names: make([]unix.RawSockaddrInet6, n),
	}
	var block []byte
	if ctrl > 0 {
		m.ctrls = make([][]byte, n)
		// Backed by uint64s: a cmsghdr's length is a size_t, so each
		// buffer (ctrl is a multiple of the alignment) starts aligned.
		words := make([]uint64, n*ctrl/8)
		block = unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), n*ctrl)
	}
	for i := range m.hdrs {
		m.bufs[i] = make([]byte, size)
		m.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&m.names[i]))
		m.hdrs[i].hdr.Iov = &m.iovs[i]
		m.hdrs[i].hdr.SetIovlen(1)
		if ctrl > 0 {
			m.ctrls[i] = block[i*ctrl : (i+1)*ctrl : (i+1)*ctrl]
			m.hdrs[i].hdr.Control = &m.ctrls[i][0] // its length is set per call
		}
	}
	return m
}

const (
	// recvCtrl is the control buffer of each datagram read on a pktinfo
	// socket: IPV6_PKTINFO and IP_PKTINFO (an IPv6 socket taking IPv4
	// gets both), with room to spare for any option the service manager
	// set on a passed socket (a cut-short buffer loses only what did not
	// fit: MSG_CTRUNC).
	recvCtrl = 128
	// sendCtrl is the control buffer of each reply: one IPV6_PKTINFO or
	// IP_PKTINFO.
	sendCtrl = 64
)

func newBatchIO(uc *net.UDPConn) (*batchIO, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &batchIO{raw: raw}
	var serr error
	wildcard := false
	raw.Control(func(fd uintptr) {
		var sa unix.Sockaddr
		sa, serr = unix.Getsockname(int(fd))
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			wildcard = sa.Addr == [4]byte{}
		case *unix.SockaddrInet6:
			b.six = true
			wildcard = netip.AddrFrom16(sa.Addr).Unmap().IsUnspecified()
		}
	})
	if serr != nil {
		return nil, serr
	}
	b.cur.Store(-1)
	if wildcard {
		if err := b.enablePktinfo(); err != nil {
			return nil, err
		}
	}
	rc, sc := 0, 0
	if b.pktinfo {
		rc, sc = recvCtrl, sendCtrl
		b.locals = make([]netip.Addr, batchSize)
		b.ifindex = make([]uint32, batchSize)
		b.srcs = make([]netip.AddrPort, batchSize)
		b.scopes = make([]uint32, batchSize)
	}
	b.recv = newMmsgs(batchSize, maxDatagram, rc)
	b.send = newMmsgs(batchSize, 0, sc) // grown to each reply's size
	b.addrs = make([]net.UDPAddr, batchSize)
	for i := range b.addrs {
		b.addrs[i].IP = make(net.IP, 0, net.IPv6len)
	}
	b.readFn = func(fd uintptr) bool {
		if b.claim != nil && !b.claim() {
			b.got, b.err = 0, errYield
			return true
		}
		b.got, b.err = b.recvmmsg(fd)
		if b.claim != nil {
			b.settle(b.err == nil)
		}
		return b.err != unix.EAGAIN
	}
	b.writeFn = func(fd uintptr) bool {
		b.sentN, b.werr = b.sendmmsg(fd, b.sentN)
		return true // MSG_DONTWAIT: never wait for room
	}
	return b, nil
}

// read waits until datagrams are queued and reads up to batchSize of them.
func (b *batchIO) read() (int, error) {
	if err := b.raw.Read(b.readFn); err != nil {
		return 0, err
	}
	return b.got, b.err
}

// enablePktinfo asks the kernel to tell, with each datagram, the address
// it was sent to. Without it a socket bound to every address replies
// from whatever address the routing picks for the client: on a host
// with several, a client that wrote to another one (a connected client:
// nc -u, rdate -u, net.Dial; or a NAT's mapping) drops the reply, and
// the service looks dead. The reply to each datagram then names that
// address as its source (queue). A socket bound to one address needs
// none of it, and its loop does none of the work.
//
// It is set here, where every udp socket gets its batchIO, whether
// superd opened it or the service manager passed it (bound to every
// address too, perhaps); the socket keeps it, and its batchIO, across
// reloads that hand it to another service. A program in wait mode that
// is handed the socket gets it without (see lendToProgram).
func (b *batchIO) enablePktinfo() error {
	if err := b.setPktinfo(true); err != nil {
		return err
	}
	b.pktinfo = true
	return nil
}

// lendToProgram turns the options enablePktinfo set off while a program
// in wait mode owns the socket (on: it does), and on again when superd
// reads it once more: the program gets the socket as it would from
// inetd, without control messages it did not ask for (a recvmsg with a
// control buffer sized for its own would see it cut short). The loop
// reads nothing meanwhile; a datagram it reads while the option is off
// gets its reply from the routing's choice, as without pktinfo.
func (b *batchIO) lendToProgram(on bool) error {
	if !b.pktinfo {
		return nil
	}
	return b.setPktinfo(!on)
}

func (b *batchIO) setPktinfo(on bool) error {
	v := 0
	if on {
		v = 1
	}
	var serr error
	if err := b.raw.Control(func(fd uintptr) {
		if b.six {
			// An IPv6 socket gets IPV6_PKTINFO for every datagram,
			// an IPv4 one as an IPv4-mapped address. IP_PKTINFO is
			// asked for too: for IPv4 datagrams it gives ipi_spec_dst,
			// the local address to answer from, which differs from
			// the address written to when that was a broadcast one (a
			// source the kernel refuses: 127.255.255.255 arrives with
			// ipi_spec_dst 127.0.0.1).
			serr = os.NewSyscallError("setsockopt IPV6_RECVPKTINFO",
				unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, v))
			if serr == nil {
				serr = os.NewSyscallError("setsockopt IP_PKTINFO",
					unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, v))
			}
			return
		}
		serr = os.NewSyscallError("setsockopt IP_PKTINFO",
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, v))
	}); err != nil {
		return err
	}
	return serr
}

func (b *batchIO) recvmmsg(fd uintptr) (int, error) {
	for i := range b.recv.hdrs {
		h := &b.recv.hdrs[i]
		h.hdr.Namelen = unix.SizeofSockaddrInet6
		h.hdr.Flags = 0
		b.recv.iovs[i].Base = &b.recv.bufs[i][0]
		b.recv.iovs[i].SetLen(len(b.recv.bufs[i]))
	}
	if b.pktinfo {
		for i := range b.recv.hdrs {
			b.recv.hdrs[i].hdr.SetControllen(recvCtrl) // the kernel leaves what it filled in
		}
	}
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.recv.hdrs[0])),
		uintptr(len(b.recv.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// datagram returns the i-th datagram read and its source; both are reused
// by the next read. truncated reports a datagram longer than the buffer.
func (b *batchIO) datagram(i int) (data []byte, from *net.UDPAddr, truncated bool) {
	h := &b.recv.hdrs[i]
	a := &b.addrs[i]
	sa := &b.recv.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		a.IP = append(a.IP[:0], sa4.Addr[:]...)
		a.Port = int(binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:]))
		a.Zone = ""
	case unix.AF_INET6:
		ip := netip.AddrFrom16(sa.Addr)
		if ip.Is4In6() {
			v4 := ip.As4()
			a.IP = append(a.IP[:0], v4[:]...)
			a.Zone = ""
		} else {
			a.IP = append(a.IP[:0], sa.Addr[:]...)
			a.Zone = zones.name(sa.Scope_id) // a link-local peer's interface
		}
		a.Port = int(binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:]))
	default:
		a.IP = a.IP[:0]
		a.Port = 0
		a.Zone = ""
	}
	if b.pktinfo {
		b.parsePktinfo(i)
	}
	return b.recv.bufs[i][:h.n], a, h.hdr.Flags&unix.MSG_TRUNC != 0
}

// parsePktinfo records where datagram i came from and the address it was
// sent to (its control messages, parsed by hand: unix's parser
// allocates).
func (b *batchIO) parsePktinfo(i int) {
	sa := &b.recv.names[i]
	var src netip.AddrPort
	var scope uint32
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		src = netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr),
			binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:]))
	case unix.AF_INET6:
		src = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(),
			binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:]))
		scope = sa.Scope_id
	}
	b.srcs[i], b.scopes[i] = src, scope

	var local netip.Addr
	var ifx uint32
	buf := b.recv.ctrls[i]
	n := min(int(b.recv.hdrs[i].hdr.Controllen), len(buf))
	hdrLen := unix.CmsgLen(0)
	for off := 0; off+hdrLen <= n; {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&buf[off]))
		l := int(c.Len)
		if l < hdrLen || off+l > n {
			break
		}
		data := buf[off+hdrLen : off+l]
		switch {
		case c.Level == unix.IPPROTO_IP && c.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			// ipi_spec_dst, not ipi_addr (the header's destination):
			// for a datagram sent to a broadcast address it is the
			// local address to answer from.
			if a := netip.AddrFrom4(pi.Spec_dst); !a.IsUnspecified() {
				local, ifx = a, uint32(pi.Ifindex)
			}
		case c.Level == unix.IPPROTO_IPV6 && c.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			// An IPv4 datagram's (a mapped address) is left to
			// IP_PKTINFO, which came too. A multicast address cannot
			// be a source: the kernel picks one.
			if a := netip.AddrFrom16(pi.Addr); !a.Is4In6() && !a.IsMulticast() && !a.IsUnspecified() {
				local, ifx = a, pi.Ifindex
			}
		}
		off += unix.CmsgSpace(l - hdrLen)
	}
	b.locals[i], b.ifindex[i] = local, ifx
}

// delivering tells which datagram the loop delivers now (-1: none): a
// reply the protocol writes to its source leaves from the address it was
// sent to.
func (b *batchIO) delivering(i int) {
	if b.pktinfo {
		b.cur.Store(int32(i))
	}
}

// reaches reports whether the socket can send to to: an IPv4 socket
// cannot send to an IPv6 address (queue would have no sockaddr for it).
func (b *batchIO) reaches(to netip.AddrPort) bool { return b.six || to.Addr().Unmap().Is4() }

// queue adds a datagram to the send batch; it reports false when the
// batch is full (flush first).
func (b *batchIO) queue(p []byte, to netip.AddrPort) bool {
	if b.nout == len(b.send.hdrs) {
		return false
	}
	i := b.nout
	if cap(b.send.bufs[i]) < len(p) {
		b.send.bufs[i] = make([]byte, len(p), max(len(p), 2048))
	}
	buf := b.send.bufs[i][:len(p)]
	copy(buf, p)
	b.send.bufs[i] = buf
	var base *byte
	if len(buf) > 0 {
		base = &buf[0]
	}
	b.send.iovs[i].Base = base
	b.send.iovs[i].SetLen(len(buf))
	sa := &b.send.names[i]
	h := &b.send.hdrs[i].hdr
	addr := to.Addr()
	if b.six {
		*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: addr.As16(), Scope_id: zones.index(addr.Zone())}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], to.Port())
		h.Namelen = unix.SizeofSockaddrInet6
	} else {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: addr.Unmap().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], to.Port())
		h.Namelen = unix.SizeofSockaddrInet4
	}
	if b.pktinfo {
		var scope uint32
		if b.six {
			scope = sa.Scope_id
		}
		h.SetControllen(b.pktinfoFor(i, to, scope))
	}
	b.nout++
	return true
}

// pktinfoFor writes into send slot i's control buffer the source of a
// reply to to, and returns its length: 0 (no control message, the
// kernel picks the source) unless to is the source of the datagram being
// delivered, whose reply leaves from the address that datagram was sent
// to. Replies to anyone else, or written outside a batch, go without.
// scope is to's scope id on an IPv6 socket.
func (b *batchIO) pktinfoFor(i int, to netip.AddrPort, scope uint32) int {
	c := b.cur.Load()
	if c < 0 {
		return 0
	}
	local := b.locals[c]
	if !local.IsValid() || b.srcs[c] != netip.AddrPortFrom(to.Addr().Unmap().WithZone(""), to.Port()) ||
		b.six && b.scopes[c] != scope {
		return 0
	}
	buf := b.send.ctrls[i]
	h := (*unix.Cmsghdr)(unsafe.Pointer(&buf[0]))
	data := unsafe.Pointer(&buf[unix.CmsgLen(0)])
	if local.Is4() {
		// IP_PKTINFO, on an IPv6 socket too (replying to an IPv4 peer
		// as a mapped address): Linux takes it there, as it takes
		// IPV6_PKTINFO with a mapped address (since 4.6 only).
		// ipi_ifindex 0: the routing picks the interface, as for any
		// reply; only the source is set.
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		*(*unix.Inet4Pktinfo)(data) = unix.Inet4Pktinfo{Spec_dst: local.As4()}
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	var ifx uint32
	if local.IsLinkLocalUnicast() {
		ifx = b.ifindex[c] // a link-local source names its link
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	*(*unix.Inet6Pktinfo)(data) = unix.Inet6Pktinfo{Addr: local.As16(), Ifindex: ifx}
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}

// flush sends the queued datagrams without waiting for room; it returns
// how many were sent (and their bytes), how many failed (a full socket
// buffer, or an error for that destination), and how many of those the
// kernel refused as sends to a broadcast address on a socket without
// SO_BROADCAST (EACCES: a guarded service's reply to a directed broadcast
// source, which reflects cannot tell from a host).
func (b *batchIO) flush() (sent, failed, refused, bytes int) {
	for sent+failed < b.nout {
		b.sentN = sent + failed
		if err := b.raw.Write(b.writeFn); err != nil {
			failed = b.nout - sent
			break
		}
		switch {
		case b.werr == unix.EAGAIN || b.werr == unix.ENOBUFS:
			failed = b.nout - sent // the buffer is full: the rest is dropped
		case b.werr != nil:
			failed++ // this destination failed; go on with the next
			if b.werr == unix.EACCES {
				refused++
			}
		default:
			for _, p := range b.send.bufs[sent+failed : sent+failed+b.sentN] {
				bytes += len(p)
			}
			sent += b.sentN
		}
	}
	b.nout = 0
	return sent, failed, refused, bytes
}

// sendmmsg sends the queue from index from on; it returns how many were
// sent.
func (b *batchIO) sendmmsg(fd uintptr, from int) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.send.hdrs[from])),
		uintptr(b.nout-from), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// reportedBufferScale: Linux reports SO_RCVBUF and SO_SNDBUF as twice
// what was set (its bookkeeping), so a size read back is set as half.
const reportedBufferScale = 2
