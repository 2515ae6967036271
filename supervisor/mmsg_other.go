//go:build !linux

package supervisor

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
)

// batchIO, where recvmmsg and sendmmsg do not exist, reads and writes one
// datagram per system call with the same interface.
type batchIO struct {
	uc   *net.UDPConn
	buf  []byte
	n    int
	from net.UDPAddr
	out  [][]byte
	to   []netip.AddrPort
	// claim is called after each read (a blocking read cannot be
	// preceded by it here): false drops what was read, as the owner
	// now serves the socket in wait mode.
	claim  func() bool
	settle func(read bool)
}

func newBatchIO(uc *net.UDPConn) (*batchIO, error) {
	return &batchIO{uc: uc, buf: make([]byte, maxDatagram)}, nil
}

func (b *batchIO) read() (int, error) {
	n, ap, err := b.uc.ReadFromUDPAddrPort(b.buf)
	if err != nil {
		return 0, err
	}
	if b.claim != nil {
		if !b.claim() {
			return 0, errYield
		}
		b.settle(true)
	}
	b.n = n
	b.from.IP = append(b.from.IP[:0], ap.Addr().Unmap().AsSlice()...)
	b.from.Zone = ap.Addr().Zone() // a link-local peer's interface, for the reply
	b.from.Port = int(ap.Port())
	return 1, nil
}

func (b *batchIO) datagram(int) ([]byte, *net.UDPAddr, bool) { return b.buf[:b.n], &b.from, false }

// delivering: replies leave from the address the routing picks (there is
// no IP_PKTINFO here; the BSDs' IP_RECVDSTADDR and IP_SENDSRCADDR would
// do for IPv4).
func (b *batchIO) delivering(int) {}

// reaches: the system call reports what the socket cannot reach.
func (b *batchIO) reaches(netip.AddrPort) bool { return true }

func (b *batchIO) queue(p []byte, to netip.AddrPort) bool {
	if len(b.out) == batchSize {
		return false
	}
	b.out = append(b.out, append([]byte(nil), p...))
	b.to = append(b.to, to)
	return true
}

func (b *batchIO) flush() (sent, failed, refused, bytes int) {
	for i, p := range b.out {
		if _, err := b.uc.WriteToUDPAddrPort(p, b.to[i]); err != nil {
			failed++
			if errors.Is(err, syscall.EACCES) {
				refused++ // a broadcast address, without SO_BROADCAST
			}
		} else {
			sent++
			bytes += len(p)
		}
	}
	b.out, b.to = b.out[:0], b.to[:0]
	return sent, failed, refused, bytes
}

// lendToProgram does nothing here: no option is set for the loop.
func (b *batchIO) lendToProgram(on bool) error { return nil }

// reportedBufferScale: SO_RCVBUF and SO_SNDBUF read back as they were set.
const reportedBufferScale = 1
