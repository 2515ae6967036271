package engine

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A read that takes the last bytes queued on a TCP socket also takes the
// peer's FIN queued behind them, and returns short: the reader, told the
// socket is empty, would wait for readiness that never comes again (the
// FIN's was spent on the wake-up that led to this read), and see the end
// of stream only when its park deadline fires. TCP_INQ (Linux 4.18) has
// every recvmsg say what is still queued, and 1 after a FIN, so the reader
// reads again exactly when there is something to read: no read that finds
// nothing, and no end of stream left waiting. It also says what an urgent
// mark left behind.

// inqScratch is the recvmsg of a reader whose socket has TCP_INQ, kept in
// the reader so that a read allocates nothing.
type inqScratch struct {
	msg syscall.Msghdr
	iov syscall.Iovec
	oob [4]uint64 // one TCP_CM_INQ control message (aligned as a cmsghdr)
}

// enableInq turns TCP_INQ on for the TCP socket fd; false where the kernel
// does not know it (the reader then reads again after every delivery).
func enableInq(fd int) bool {
	return unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_INQ, 1) == nil
}

// recvInq reads into b like read(2); left is what the socket still holds
// after it (bytes, or at least 1 when the peer's FIN is queued), -1 when
// the kernel did not say.
func (r *reader) recvInq(fd int, b []byte) (n, left int, err error) {
	s := &r.inq
	s.iov.Base = &b[0]
	s.iov.SetLen(len(b))
	s.msg.Iov = &s.iov
	s.msg.Iovlen = 1
	s.msg.Control = (*byte)(unsafe.Pointer(&s.oob[0]))
	s.msg.SetControllen(len(s.oob) * 8)
	s.msg.Flags = 0
	m, _, e := syscall.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&s.msg)), 0)
	s.iov.Base = nil // the buffer goes back to its pool
	if e != 0 {
		return 0, -1, e
	}
	return int(m), inqOf(unsafe.Slice((*byte)(unsafe.Pointer(&s.oob[0])), int(s.msg.Controllen))), nil
}

// inqOf finds the TCP_CM_INQ control message in oob; -1 when there is
// none.
func inqOf(oob []byte) int {
	const hdr = syscall.SizeofCmsghdr
	for len(oob) >= hdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			break
		}
		if h.Level == syscall.SOL_TCP && h.Type == unix.TCP_CM_INQ && l >= hdr+4 {
			return int(*(*int32)(unsafe.Pointer(&oob[hdr])))
		}
		step := (l + int(unsafe.Sizeof(uintptr(0))) - 1) &^ (int(unsafe.Sizeof(uintptr(0))) - 1)
		if step >= len(oob) {
			break
		}
		oob = oob[step:]
	}
	return -1
}
