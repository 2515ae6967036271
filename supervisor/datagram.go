package supervisor

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/metrics"
)

const (
	// batchSize is how many datagrams one system call reads or sends.
	batchSize = 32
	// maxDatagram is the largest UDP payload (IPv4), so nothing read is
	// ever cut short. The buffers are touched only as far as datagrams
	// fill them.
	maxDatagram = 65535
)

// dgramSocket is the datagram side of a udp socket: its batched I/O, and
// the send queue shared by every owner the socket has across reloads.
type dgramSocket struct {
	uc *net.UDPConn
	io *batchIO

	mu          sync.Mutex // guards io's send queue and dispatching
	dispatching bool       // the loop is delivering a batch: replies wait for its flush
	// lateBatch tells a closing socket's close that the loop started
	// delivering a batch after the close began (see socket.close).
	lateBatch chan struct{}
	// broadcast is the socket's SO_BROADCAST as last set (broadcastOn,
	// broadcastOff), or 0: Go's default (on).
	broadcast atomic.Int32
	// born is the socket's SO_RCVBUF and SO_SNDBUF as getsockopt told
	// them before any read_buffer or write_buffer (0: unknown): the
	// system's, or the service manager's for a passed socket. A reload
	// that leaves a size out gives it back (see service.setBuffers).
	born [2]int
}

const (
	broadcastOn = iota + 1
	broadcastOff
)

// allowBroadcast sets SO_BROADCAST unless it is set so already.
func (s *dgramSocket) allowBroadcast(on bool) error {
	want := int32(broadcastOff)
	if on {
		want = broadcastOn
	}
	if s.broadcast.Load() == want {
		return nil
	}
	if err := setBroadcast(s.uc, on); err != nil {
		return err
	}
	s.broadcast.Store(want)
	return nil
}

func newDgramSocket(uc *net.UDPConn, bio *batchIO, born [2]int) *dgramSocket {
	return &dgramSocket{uc: uc, io: bio, lateBatch: make(chan struct{}, 1), born: born}
}

// socketBuffers reads uc's SO_RCVBUF and SO_SNDBUF; 0 for a size it
// cannot read.
func socketBuffers(uc *net.UDPConn) (sizes [2]int) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return sizes
	}
	raw.Control(func(fd uintptr) {
		for i, opt := range []int{syscall.SO_RCVBUF, syscall.SO_SNDBUF} {
			if v, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt); err == nil {
				sizes[i] = v
			}
		}
	})
	return sizes
}

// dgramBinding is one udp endpoint of a service: its protocol, its
// transport and its counters.
type dgramBinding struct {
	sock     *dgramSocket
	svc      *service
	proto    framework.DatagramProtocol
	received prometheus.Counter
	sent     prometheus.Counter
	drops    map[string]prometheus.Counter
	guarded  bool // DatagramGuards: the reflection rule applies
}

// guardPorts holds the ports of every guarded udp endpoint of this superd
// (FreeBSD inetd's check_loop: two small services must never answer each
// other).
type guardPorts struct {
	p atomic.Pointer[map[uint16]bool]
}

func (g *guardPorts) has(port uint16) bool {
	m := g.p.Load()
	return m != nil && (*m)[port]
}

// WriteTo queues a reply; it goes out with the batch being delivered, or at
// once when none is (a write from another goroutine). It never blocks: a
// full socket buffer drops the datagram, counted as send_failed.
func (d *dgramBinding) WriteTo(b []byte, addr net.Addr) {
	to, ok := addrPort(addr)
	if !ok || !d.sock.io.reaches(to) {
		d.drops[metrics.DatagramSendFailed].Inc()
		return
	}
	if d.guarded && reflects(to, d.svc.guards) {
		d.drops[metrics.DatagramReflection].Inc()
		return
	}
	s := d.sock
	s.mu.Lock()
	if !s.io.queue(b, to) {
		d.flushLocked()
		s.io.queue(b, to)
	}
	if !s.dispatching {
		d.flushLocked()
	}
	s.mu.Unlock()
}

func (d *dgramBinding) flushLocked() {
	sent, failed, refused, bytes := d.sock.io.flush()
	if sent > 0 {
		d.sent.Add(float64(sent))
		d.svc.m.Sent.Add(float64(bytes))
	}
	if failed > refused {
		d.drops[metrics.DatagramSendFailed].Add(float64(failed - refused))
	}
	if refused > 0 {
		// Replies to a broadcast address the kernel refused: a guarded
		// service's socket has no SO_BROADCAST, so that it never answers
		// a directed broadcast source (see claimBatch).
		d.drops[metrics.DatagramReflection].Add(float64(refused))
	}
}

// LocalAddr is the socket's address.
func (d *dgramBinding) LocalAddr() net.Addr { return d.sock.uc.LocalAddr() }

// reflects reports whether a reply to to would feed a loop or an
// amplification: a privileged or zero source port, the port of a guarded
// endpoint, or an address that is not one host.
func reflects(to netip.AddrPort, guards *guardPorts) bool {
	a := to.Addr().Unmap()
	return to.Port() < 1024 || guards.has(to.Port()) ||
		a.IsMulticast() || a.IsUnspecified() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// addrPort converts a datagram address, its IPv6 zone included, without
// allocating.
func addrPort(addr net.Addr) (netip.AddrPort, bool) {
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.Port < 0 || a.Port > 65535 {
			return netip.AddrPort{}, false
		}
		if a.Zone != "" && ip.Is6() && !ip.Is4In6() {
			ip = ip.WithZone(a.Zone) // a link-local peer: the reply leaves by its interface
		}
		return netip.AddrPortFrom(ip, uint16(a.Port)), true
	case interface{ AddrPort() netip.AddrPort }:
		ap := a.AddrPort()
		return ap, ap.IsValid()
	}
	return netip.AddrPort{}, false
}

// datagramLoop reads the socket in batches and delivers each datagram to
// the socket's current owner, until the socket closes (false) or the
// owner switches to wait mode (true). A datagram queued during a reload is
// read by the same loop and goes to the new owner, or stays queued for a
// new owner in wait mode: none is lost.
func (k *socket) datagramLoop() bool {
	k.waiting.Store(false)
	s := k.dgram
	s.io.claim, s.io.settle = k.claimBatch, k.settleBatch // every socket, however it was made
	for {
		n, err := s.io.read()
		if err != nil {
			if k.closed.Load() {
				return false
			}
			if err == errYield {
				return true
			}
			if isTimeout(err) {
				k.clearDeadline()
				if k.closed.Load() {
					return false
				}
				if b := k.owner.Load(); b != nil && b.svc.waits() {
					return true
				}
				continue
			}
			k.log.Warn("udp read failed; retrying", "endpoint", k.label, "err", err)
			time.Sleep(minAcceptDelay)
			continue
		}
		d := k.batch // claimed by claimBatch, right before the read
		k.batch = nil
		if d == nil {
			continue
		}
		s.mu.Lock()
		s.dispatching = true
		s.mu.Unlock()
		if k.closed.Load() {
			select {
			case s.lateBatch <- struct{}{}:
			default:
			}
		}
		now := time.Now() // one clock read per batch for the rate limits
		for i := range n {
			data, from, truncated := s.io.datagram(i)
			if truncated {
				continue
			}
			s.io.delivering(i) // a reply to from leaves from the address it wrote to
			d.deliver(data, from, now)
		}
		s.io.delivering(-1) // replies written from now on are to no datagram's source
		s.mu.Lock()
		s.dispatching = false
		d.flushLocked()
		s.mu.Unlock()
		d.svc.connWG.Done()
	}
}

// errYield: the socket's owner serves it in wait mode; the loop reads
// nothing more and lets it.
var errYield = errors.New("the owner serves the socket in wait mode")

// claimBatch runs on the loop right before it reads a batch (never before
// it waits for one): the batch goes to the owner of that moment, counted
// in its service's connWG until delivered, so that a service a reload
// replaced stops its factory only after its last DatagramReceived. It
// reports false when the owner serves the socket in wait mode: the
// datagrams stay queued for its program. Otherwise it keeps swapMu until
// settleBatch, right after the read (a non-blocking system call): serve
// swaps owners under swapMu, so a datagram read after serve returned is
// the new owner's, even when the loop's thread was descheduled between
// the claim and the read.
func (k *socket) claimBatch() bool {
	k.swapMu.Lock()
	k.batch = nil
	b := k.owner.Load()
	if b != nil && b.svc.waits() {
		k.swapMu.Unlock()
		return false
	}
	if b == nil {
		b = k.last.Load() // released: its last owner gets what is read
	}
	if b == nil || b.dgram == nil {
		return true // read and dropped: nobody serves datagrams here
	}
	svc := b.svc
	svc.mu.Lock()
	if !svc.closing {
		svc.connWG.Add(1)
		k.batch = b.dgram
	}
	svc.mu.Unlock()
	if k.batch != nil {
		// The batch's replies go out under its owner's rule (see
		// activateDatagrams); the previous batch's have gone out.
		if err := k.dgram.allowBroadcast(!k.batch.guarded); err != nil {
			k.log.Warn("cannot set SO_BROADCAST", "endpoint", k.label, "err", err)
		}
	}
	return true
}

// settleBatch ends claimBatch's hold on the owner once the read is done,
// and undoes the claim when the read found nothing.
func (k *socket) settleBatch(read bool) {
	if !read && k.batch != nil {
		k.batch.svc.connWG.Done()
		k.batch = nil
	}
	k.swapMu.Unlock()
}

// deliver applies the service's checks to one datagram and hands it to the
// protocol.
func (d *dgramBinding) deliver(data []byte, from *net.UDPAddr, now time.Time) {
	d.received.Inc()
	svc := d.svc
	svc.m.Received.Add(float64(len(data)))
	ip, ok := netip.AddrFromSlice(from.IP)
	if !ok {
		return
	}
	ip = ip.Unmap()
	if !svc.allowed(ip) {
		d.drops[metrics.DatagramDenied].Inc()
		return
	}
	if reason := svc.takeDatagramTokens(ip, now); reason != "" {
		d.drops[reason].Inc()
		return
	}
	d.call(data, from)
}

// call runs the protocol; a panic there loses only that datagram.
func (d *dgramBinding) call(data []byte, from *net.UDPAddr) {
	defer func() {
		if v := recover(); v != nil {
			d.svc.log.Error("DatagramReceived panicked; datagram dropped", "peer", from.String(), "panic", v)
		}
	}()
	d.proto.DatagramReceived(data, from)
}

// takeDatagramTokens applies rate_limit and rate_limit_per_ip to one
// datagram; it returns the drop reason, or "".
func (s *service) takeDatagramTokens(ip netip.Addr, now time.Time) string {
	if s.rate == nil && s.sourceRates == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The service's token is spent only for a datagram the per-source
	// limit lets through too: one flooding source, held to its own rate,
	// must not empty the service's bucket for everyone else.
	if s.rate != nil && !s.rate.has(now) {
		return metrics.DatagramRateLimit
	}
	if s.sourceRates != nil {
		bits := 32
		if ip.Is6() {
			bits = s.cfg.Limits.IPv6Prefix
		}
		key, err := ip.Prefix(bits)
		if err != nil {
			key = netip.PrefixFrom(ip, ip.BitLen())
		}
		if !s.takeSourceToken(key, now) {
			return metrics.DatagramRateLimitPerIP
		}
	}
	if s.rate != nil {
		s.rate.spend()
	}
	return ""
}

// isTimeout reports whether err is a deadline's, wrapped or not (the
// PROXY header reader's come through go-proxyproto).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// setBroadcast allows or refuses sends to broadcast addresses on uc
// (SO_BROADCAST).
func setBroadcast(uc *net.UDPConn, on bool) error {
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, v)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_BROADCAST", serr)
}
