package supervisor

import (
	"encoding/binary"
	"net"
	"net/netip"
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
}

// mmsgs is a vector of messages with one buffer and one address each.
type mmsgs struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	bufs  [][]byte
	names []unix.RawSockaddrInet6 // big enough for either family
}

func newMmsgs(n, size int) mmsgs {
	m := mmsgs{
		hdrs:  make([]mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		bufs:  make([][]byte, n),
		names: make([]unix.RawSockaddrInet6, n),
	}
	for i := range m.hdrs {
		m.bufs[i] = make([]byte, size)
		m.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&m.names[i]))
		m.hdrs[i].hdr.Iov = &m.iovs[i]
		m.hdrs[i].hdr.SetIovlen(1)
	}
	return m
}

func newBatchIO(uc *net.UDPConn) (*batchIO, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &batchIO{raw: raw}
	var serr error
	raw.Control(func(fd uintptr) {
		var sa unix.Sockaddr
		sa, serr = unix.Getsockname(int(fd))
		_, b.six = sa.(*unix.SockaddrInet6)
	})
	if serr != nil {
		return nil, serr
	}
	b.recv = newMmsgs(batchSize, maxDatagram)
	b.send = newMmsgs(batchSize, 0) // grown to each reply's size
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

func (b *batchIO) recvmmsg(fd uintptr) (int, error) {
	for i := range b.recv.hdrs {
		h := &b.recv.hdrs[i]
		h.hdr.Namelen = unix.SizeofSockaddrInet6
		h.hdr.Flags = 0
		b.recv.iovs[i].Base = &b.recv.bufs[i][0]
		b.recv.iovs[i].SetLen(len(b.recv.bufs[i]))
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
	return b.recv.bufs[i][:h.n], a, h.hdr.Flags&unix.MSG_TRUNC != 0
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
	b.nout++
	return true
}

// flush sends the queued datagrams without waiting for room; it returns
// how many were sent (and their bytes) and how many failed (a full socket
// buffer, or an error for that destination).
func (b *batchIO) flush() (sent, failed, bytes int) {
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
		default:
			for _, p := range b.send.bufs[sent+failed : sent+failed+b.sentN] {
				bytes += len(p)
			}
			sent += b.sentN
		}
	}
	b.nout = 0
	return sent, failed, bytes
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
