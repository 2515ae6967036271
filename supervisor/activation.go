package supervisor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/endpoint"
)

// inherited is a socket passed by the service manager (systemd's socket
// activation: LISTEN_FDS). superd never shuts it down or unlinks it; a
// service that lets go of it returns it here, open, for a later reload.
type inherited struct {
	file   *os.File
	name   string           // its LISTEN_FDNAMES entry ("" when it has none)
	stream bool             // SOCK_STREAM (tcp, tls, unix); otherwise datagrams (udp)
	typ    int              // SO_TYPE, for messages
	addr   endpoint.Address // what it is bound to, as an endpoint's address
	inUse  atomic.Bool
	// held is the socket made of it while inUse: a reload hands it to
	// the endpoint that the same rule (name, then address) gives it to,
	// as a socket of superd's own goes to the endpoint at its address.
	held atomic.Pointer[socket]
}

// Inherit records the sockets passed by the service manager, to be taken
// by the endpoints whose name or address they match. Call it before Start.
func (s *Supervisor) Inherit(files []*os.File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range files {
		in, err := describeInherited(f)
		if err != nil {
			s.log.Warn("ignoring a passed socket", "fd", f.Fd(), "name", f.Name(), "err", err)
			f.Close()
			continue
		}
		s.inherited = append(s.inherited, in)
		s.log.Info("socket passed by the service manager", "name", in.name, "socket", in.addr.Key())
	}
}

// CloseUnclaimedInherited closes the passed sockets no endpoint took at
// start (logged: an activation unit and the configuration disagree).
func (s *Supervisor) CloseUnclaimedInherited() {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.inherited[:0]
	for _, in := range s.inherited {
		if in.inUse.Load() {
			kept = append(kept, in)
			continue
		}
		s.log.Warn("no endpoint takes a passed socket; closing it", "name", in.name, "socket", in.addr.Key())
		in.file.Close()
	}
	s.inherited = kept
}

// takeInheritedLocked finds the passed socket for ep: by name first, then
// by address (the same socket by endpoint.Address's Key). Among several
// sockets with ep's name (systemd's FileDescriptorName= names every socket
// of its unit), the one bound to ep's address comes first. It reports an
// error when the match is of the wrong kind.
//
// A passed socket in use is a candidate too, when the service that holds
// it may let it go in the reload under way (see heldTakeableLocked): the
// returned one's held socket is then set, for the caller to carry over.
func (s *Supervisor) takeInheritedLocked(ep *endpoint.Config) (*inherited, error) {
	var byName, byAddr *inherited
	key := ep.Addr.Key()
	for _, in := range s.inherited {
		if in.inUse.Load() && !s.heldTakeableLocked(in) {
			continue
		}
		sameAddr := key != "" && in.addr.Key() == key
		if ep.Name != "" && in.name == ep.Name {
			if sameAddr {
				byName = in
				break
			}
			if byName == nil {
				byName = in
			}
		}
		// A socket another endpoint asks for by name is that one's
		// (SPEC section 11: the name first, then the address).
		if byAddr == nil && sameAddr && (in.name == "" || in.name == ep.Name || !s.endpointNames[in.name]) {
			byAddr = in
		}
	}
	match := byName
	if match == nil {
		match = byAddr
	}
	if match == nil {
		return nil, nil
	}
	if wantStream := endpoint.IsStream(ep.Kind); wantStream != match.stream {
		return nil, fmt.Errorf("the socket passed by the service manager (%s, name %q) is %s socket, which a %s endpoint cannot use", match.addr.Key(), match.name, socketTypeName(match.typ), ep.Kind)
	}
	if match.inUse.Load() {
		match.held.Load().round = s.round
		return match, nil
	}
	match.inUse.Store(true)
	return match, nil
}

// heldTakeableLocked reports whether the passed socket in, in use, may go
// to an endpoint prepared now: its socket is open, and not taken already
// in this start or reload (by an endpoint prepared before, or by a service
// the reload keeps).
func (s *Supervisor) heldTakeableLocked(in *inherited) bool {
	k := in.held.Load()
	return k != nil && !k.closed.Load() && k.round != s.round
}

// inheritedSocket makes a socket of a passed one; closing it leaves the
// passed descriptor open and returns it to the pool.
func (s *Supervisor) inheritedSocket(in *inherited, ep *endpoint.Config) (*socket, error) {
	// No key: a passed socket is found through s.inherited, by the
	// endpoint's name or address, never by the address of the endpoint
	// that holds it (a named endpoint's may be another).
	k := &socket{addr: in.addr, label: ep.Label, log: s.log, done: make(chan struct{}), inherited: true, round: s.round}
	k.onClose = func() {
		in.held.Store(nil)
		in.inUse.Store(false)
	}
	if in.stream {
		ln, err := net.FileListener(in.file) // a duplicate: closing it keeps in.file
		if err != nil {
			return nil, err
		}
		if tl, ok := ln.(*net.TCPListener); ok {
			// As for udp below: what counts only before bind is the
			// socket unit's to set.
			if ep.ReusePort && !reusesPort(tl) {
				s.log.Warn("reuse_port cannot be set on a socket passed by the service manager (it is bound already); set ReusePort= in the socket unit",
					"endpoint", ep.Label)
			}
			if ep.TCP.V6Only && !v6Only(tl) {
				s.log.Warn("v6only cannot be set on a socket passed by the service manager (it is bound already): IPv4 clients can connect; set BindIPv6Only=ipv6-only in the socket unit",
					"endpoint", ep.Label)
			}
			if ln, err = endpoint.AdoptTCP(tl, ep.TCP); err != nil {
				tl.Close()
				return nil, err
			}
		}
		if ep.Kind == endpoint.KindUnix && (ep.Mode != 0 || ep.Owner != "" || ep.Group != "") {
			// The socket file is the service manager's: changing it
			// behind its back would outlive superd and fight the unit.
			s.log.Warn("mode, owner and group are not applied to a socket passed by the service manager; set SocketMode=, SocketUser= and SocketGroup= in the socket unit",
				"endpoint", ep.Label)
		}
		k.ln, k.tcp = ln, ep.TCP
		return k, nil
	}
	pc, err := net.FilePacketConn(in.file)
	if err != nil {
		return nil, err
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("the passed datagram socket is not a UDP socket")
	}
	// read_buffer and write_buffer apply to a passed socket as to one of
	// superd's own (they act on the socket, shared with the service
	// manager, whose ReceiveBuffer= and SendBuffer= they override).
	// reuse_port cannot: SO_REUSEPORT counts only before bind (systemd's
	// ReusePort=).
	born := socketBuffers(uc) // the service manager's
	if err := endpoint.SetBuffers(uc, *ep); err != nil {
		uc.Close()
		return nil, err
	}
	if ep.ReusePort && !reusesPort(uc) {
		s.log.Warn("reuse_port cannot be set on a socket passed by the service manager (it is bound already); set ReusePort= in the socket unit",
			"endpoint", ep.Label)
	}
	bio, err := newBatchIO(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	k.dgram = newDgramSocket(uc, bio, born)
	return k, nil
}

// describeInherited reads a passed socket's type and address.
func describeInherited(f *os.File) (*inherited, error) {
	fd := int(f.Fd())
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("not a socket: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, err
	}
	in := &inherited{file: f, stream: typ == unix.SOCK_STREAM, typ: typ}
	if in.stream {
		// A connection rather than a listener (a socket unit with
		// Accept=yes passes one per instance): its address would match
		// the endpoint's, and every accept on it would fail.
		if listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && listening == 0 {
			return nil, errors.New("it is a stream socket that is not listening: a connection, as a socket unit with Accept=yes passes; superd accepts connections itself and needs Accept=no")
		}
	}
	if n := f.Name(); n != "" && !isDefaultFDName(n) {
		in.name = n
	}
	// Its address as an endpoint of its kind would write it: one parser,
	// so the address matches the endpoint's however either is spelled.
	kind, addr := endpoint.KindTCP, ""
	if !in.stream {
		kind = endpoint.KindUDP
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		addr = net.JoinHostPort(netip.AddrFrom4(a.Addr).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrInet6:
		addr = net.JoinHostPort(netip.AddrFrom16(a.Addr).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrUnix:
		if a.Name == "" || a.Name == "@" {
			// Unnamed (reported as "@": an all-NUL address): no address
			// matches it (Key ""), only an endpoint name can take it.
			in.addr = endpoint.Address{Network: endpoint.NetworkUnix}
			return in, nil
		}
		// A path, or an abstract socket, which the system call reports
		// as "@NAME" (its leading NUL written as @), as an endpoint's path
		// = "@NAME" is written: the address match takes it.
		kind, addr = endpoint.KindUnix, a.Name
	default:
		return nil, fmt.Errorf("unsupported socket family")
	}
	if in.addr, err = endpoint.ParseAddress(kind, addr); err != nil {
		return nil, err
	}
	return in, nil
}

// endpointNames are the names of cfg's endpoints (the name attribute).
func endpointNames(cfg *config.File) map[string]bool {
	names := map[string]bool{}
	for _, sc := range cfg.Services {
		for _, ep := range sc.Endpoints {
			if ep.Name != "" {
				names[ep.Name] = true
			}
		}
	}
	return names
}

// socketTypeName names a socket type (SO_TYPE) with its article.
func socketTypeName(typ int) string {
	switch typ {
	case unix.SOCK_STREAM:
		return "a stream"
	case unix.SOCK_DGRAM:
		return "a datagram"
	case unix.SOCK_SEQPACKET:
		return "a seqpacket"
	case unix.SOCK_RAW:
		return "a raw"
	}
	return fmt.Sprintf("a type %d", typ)
}

// isDefaultFDName reports the names go-systemd gives sockets passed without
// LISTEN_FDNAMES.
func isDefaultFDName(n string) bool {
	return len(n) > len("LISTEN_FD_") && n[:len("LISTEN_FD_")] == "LISTEN_FD_" || n == "unknown"
}

// reusesPort reports whether SO_REUSEPORT is set on c's socket.
func reusesPort(c syscall.Conn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	v := 0
	raw.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT) })
	return v == 1
}

// v6Only reports whether c's socket is IPv6 only: an IPv6 socket with
// IPV6_V6ONLY, or an IPv4 one (no IPv6 client can reach it either way).
func v6Only(c syscall.Conn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	v := 0
	raw.Control(func(fd uintptr) {
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			if _, ok := sa.(*unix.SockaddrInet6); !ok {
				v = 1
				return
			}
		}
		v, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
	})
	return v == 1
}
