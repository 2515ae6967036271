package endpoint

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrReplaced: a unix socket file's path no longer names the socket file
// bound there.
var ErrReplaced = errors.New("is no longer the socket superd bound there (something replaced it)")

// ErrSocketFileLeft: a unix listener closed, but its socket file could not
// be removed.
var ErrSocketFileLeft = errors.New("the socket file is left behind")

// probeTimeout bounds the dial that tells a stale unix socket from a live one.
const probeTimeout = time.Second

// ListenError reports that an endpoint's listener could not be opened. Its
// message names the endpoint and the cause, and what to do about it when
// that is known, e.g.
//
//	listen tcp:127.0.0.1:7007: address already in use: another process holds port 7007 (`ss -ltnp 'sport = :7007'` shows which)
//
// and it unwraps to the underlying error, so errors.Is(err,
// syscall.EADDRINUSE) works.
type ListenError struct {
	Label string // the endpoint's label, e.g. "unix:/run/echo.sock"
	Err   error
	Hint  string // what the operator can do, or ""
}

func (e *ListenError) Error() string {
	msg := "listen " + e.Label + ": " + cause(e.Err).Error()
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	return msg
}

func (e *ListenError) Unwrap() error { return e.Err }

// cause strips the layers of *net.OpError and *os.SyscallError, whose
// messages repeat the network, address and system call ("listen tcp
// 127.0.0.1:7007: bind: ..."), leaving what went wrong.
func cause(err error) error {
	for {
		var op *net.OpError
		var sc *os.SyscallError
		switch {
		case errors.As(err, &op) && op.Err != nil:
			err = op.Err
		case errors.As(err, &sc) && sc.Err != nil:
			err = sc.Err
		default:
			return err
		}
	}
}

// labelOf returns cfg.Label, or when it is empty (a Config made by hand)
// "KIND:ADDRESS" with the address as parsed.
func labelOf(cfg Config) string {
	if cfg.Label != "" {
		return cfg.Label
	}
	return cfg.Kind + ":" + cfg.Addr.String()
}

// Listen opens the listening socket of one endpoint.
//
// For tcp and tls it is a TCP listener on cfg.Addr. TLS is not terminated
// here: the caller performs the handshake on each accepted connection (see
// TLSConfig), so it can bound it with a timeout and count failures.
//
// For unix it is a *UnixListener on cfg.Addr's path:
//   - a stale socket file (one where connecting is refused: its server is
//     dead) is removed and replaced; a socket where a live server answers,
//     or a path that is not a socket, is an error and is never deleted;
//   - the socket file gets cfg's owner and group (cfg.SocketOwner) and
//     cfg.UnixMode() before the socket starts listening, so no client can
//     connect while it has any others (see bindUnix);
//   - owner and mode are never set through a symbolic link, and only on the
//     socket file bound (see UnixListener);
//   - the socket file is removed when the listener is closed, if the path
//     still names it.
//
// For an abstract unix socket ("@NAME", Linux) it is a *net.UnixListener:
// no file, so nothing to replace, give an owner or mode to, or remove; the
// name is free again once the socket is closed.
//
// Errors are *ListenError values naming the endpoint and the cause.
func Listen(cfg Config) (net.Listener, error) {
	label := labelOf(cfg)
	var (
		ln  net.Listener
		err error
	)
	switch err = cfg.Addr.check(cfg.Kind); {
	case err != nil:
	case cfg.Kind == KindUDP:
		err = errors.New("a udp endpoint has no listener (see ListenUDP)")
	case cfg.Kind == KindUnix:
		ln, err = listenUnix(cfg)
	default:
		ln, err = listenTCP(cfg)
	}
	if err != nil {
		return nil, &ListenError{Label: label, Err: err, Hint: hint(cfg, err)}
	}
	return ln, nil
}

// listenTCP opens a tcp or tls endpoint's listener with its socket
// options: SO_REUSEPORT and IPV6_V6ONLY before bind, the backlog, and the
// keepalive and Nagle settings of every accepted connection.
func listenTCP(cfg Config) (net.Listener, error) {
	o := cfg.TCP
	lc := net.ListenConfig{
		Control: func(network, address string, c syscall.RawConn) error {
			// v6only concerns IPv6 sockets: [::] or every address.
			return setListenerOptions(c, cfg.ReusePort, o.V6Only && network == "tcp6")
		},
		KeepAliveConfig: keepaliveConfig(o),
	}
	if !lc.KeepAliveConfig.Enable {
		lc.KeepAlive = -1
	}
	if cfg.ReusePort {
		// Plain TCP, so that Quiesce can put a filter on it.
		lc.SetMultipathTCP(false)
	}
	ln, err := lc.Listen(context.Background(), NetworkTCP, cfg.Addr.String())
	if err != nil {
		return nil, err
	}
	tl := ln.(*net.TCPListener)
	if err := setAcceptedOptions(tl, o.Nagle, lc.KeepAliveConfig); err != nil {
		ln.Close()
		return nil, err
	}
	if o.Backlog > 0 {
		if err := setBacklog(tl, o.Backlog); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return &tcpListener{TCPListener: tl, birth: acceptedOptions{nagle: o.Nagle}}, nil
}

// keepaliveConfig is the keepalive of the connections of an endpoint with
// options o: an idle time of 0 is DefaultKeepalive, a negative one none,
// and an interval or count left at 0 the kernel's (-1 to net).
func keepaliveConfig(o TCPOptions) net.KeepAliveConfig {
	if o.Keepalive < 0 {
		return net.KeepAliveConfig{Enable: false}
	}
	ka := net.KeepAliveConfig{Enable: true, Idle: o.Keepalive, Interval: o.KeepaliveInterval, Count: o.KeepaliveCount}
	if ka.Idle == 0 {
		ka.Idle = DefaultKeepalive
	}
	if ka.Interval == 0 {
		ka.Interval = -1 // the kernel's
	}
	if ka.Count == 0 {
		ka.Count = -1
	}
	return ka
}

// tcpListener is a tcp or tls endpoint's listener: it gives each
// connection net accepts the options net does not (Nagle's algorithm,
// which net turns off; keepalive, for a listener the service manager
// passed), and, once Retune changed them for a reload that kept the
// socket, the new ones.
type tcpListener struct {
	*net.TCPListener
	birth   acceptedOptions
	adopted bool // passed by the service manager: options set one by one (see RawListener)
	retuned atomic.Pointer[acceptedOptions]
}

// acceptedOptions are what tcpListener sets on each accepted connection.
type acceptedOptions struct {
	nagle     bool
	keepalive *net.KeepAliveConfig // nil: as net set it
}

func (l *tcpListener) Accept() (net.Conn, error) {
	c, err := l.TCPListener.AcceptTCP()
	if err != nil {
		return nil, err
	}
	o := &l.birth
	if r := l.retuned.Load(); r != nil {
		o = r
	}
	if ka := o.keepalive; ka != nil {
		if ka.Enable {
			err = c.SetKeepAliveConfig(*ka)
		} else {
			err = c.SetKeepAlive(false) // net's would also set its default times
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	if o.nagle {
		c.SetNoDelay(false)
	}
	return c, nil
}

// Retune gives a tcp or tls endpoint's listener new per-connection
// options (nodelay, keepalive, keepalive_interval, keepalive_count) and a
// new backlog, for a reload that keeps the socket: the connections it
// accepts from now on get them, whether through net or as bare
// descriptors (which copy the listening socket's). reuse_port and v6only
// count only at bind, and are not Retune's. A listener of another kind is
// left as it is.
func Retune(ln net.Listener, old, o TCPOptions) error {
	l, ok := ln.(*tcpListener)
	if !ok {
		return nil
	}
	ka, err := explicitKeepalive(keepaliveConfig(o))
	if err != nil {
		return err
	}
	if err := setAcceptedOptions(l.TCPListener, o.Nagle, ka); err != nil {
		return err
	}
	if o.Backlog != old.Backlog {
		backlog := o.Backlog
		if backlog <= 0 {
			backlog = math.MaxInt32 // the kernel caps it at somaxconn, net's own
		}
		if err := setBacklog(l.TCPListener, backlog); err != nil {
			return err
		}
	}
	l.retuned.Store(&acceptedOptions{nagle: o.Nagle, keepalive: &ka})
	return nil
}

// hint says what to do about a listen error, where there is something to
// say: a TCP port in use is held by another process, and ss names it. (The
// configuration never binds one address twice; when a reload asks for an
// address a socket of superd's own overlaps, the supervisor says so
// instead.)
func hint(cfg Config, err error) string {
	var pe *fs.PathError
	if cfg.Kind == KindUnix && errors.As(err, &pe) && pe.Op == "chown" && errors.Is(err, fs.ErrPermission) {
		return fmt.Sprintf("giving the socket file another owner or group needs root (or CAP_CHOWN), and superd runs as uid %d", os.Geteuid())
	}
	if (cfg.Kind != KindTCP && cfg.Kind != KindTLS) || !errors.Is(err, syscall.EADDRINUSE) {
		return ""
	}
	return fmt.Sprintf("another process holds port %d (`ss -ltnp 'sport = :%d'` shows which)", cfg.Addr.Port, cfg.Addr.Port)
}

func listenUnix(cfg Config) (net.Listener, error) {
	path := cfg.Addr.Path
	if cfg.Addr.Abstract() {
		if cfg.Owner != "" || cfg.Group != "" {
			return nil, errors.New("an abstract socket has no file to give an owner or group")
		}
		// Who may connect is up to the protocol (peer credentials): an
		// abstract socket has no permissions. Go's listener never unlinks
		// an "@" name.
		return net.ListenUnix(NetworkUnix, &net.UnixAddr{Name: path, Net: NetworkUnix})
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	return bindUnix(path, cfg.fileAttrs())
}

// removeStale makes way for a new socket at path: nothing there is fine; a
// socket whose server is gone (connecting is refused) is removed; anything
// else is an error and is left alone.
//
// A symbolic link counts as "not a socket", even one pointing at a socket:
// replacing it would change what the link's owner set up.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s); not removing it", path, describeType(fi.Mode()))
	}
	c, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		c.Close()
		return fmt.Errorf("a server is already listening on %s; not removing it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// Permission denied, a full backlog, a timeout...: possibly live.
		return fmt.Errorf("%s exists and could not be probed (%v); not removing it", path, cause(err))
	}
	// Stale: its listener is gone. It is removed only if it is still the
	// file probed. Whoever removes it first wins; if someone binds in
	// between, our bind reports "address already in use".
	if err := removeIfSame(path, fi); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

func describeType(m fs.FileMode) string {
	switch t := m.Type(); {
	case t == 0:
		return "a regular file"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeSymlink != 0:
		return "a symbolic link"
	case t&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case t&fs.ModeDevice != 0:
		return "a device"
	default:
		return "mode " + m.String()
	}
}

// ListenUDP opens the socket of a udp endpoint: bound to cfg.Addr, with
// SO_REUSEPORT when cfg.ReusePort (several processes then share the port),
// and the buffer sizes asked for. Errors are *ListenError values.
//
// A socket bound to every address gets IP_PKTINFO or IPV6_RECVPKTINFO
// from the supervisor's datagram loop, not here: the loop reads the
// address each datagram was sent to and answers from it, and it does so
// for a socket the service manager passed too.
func ListenUDP(cfg Config) (*net.UDPConn, error) {
	label := labelOf(cfg)
	if err := cfg.Addr.check(KindUDP); err != nil {
		return nil, &ListenError{Label: label, Err: err}
	}
	lc := net.ListenConfig{}
	if cfg.ReusePort {
		lc.Control = reusePort
	}
	pc, err := lc.ListenPacket(context.Background(), NetworkUDP, cfg.Addr.String())
	if err != nil {
		return nil, &ListenError{Label: label, Err: err}
	}
	uc := pc.(*net.UDPConn)
	if err := SetBuffers(uc, cfg); err != nil {
		uc.Close()
		return nil, err
	}
	return uc, nil
}

// SetBuffers gives a udp socket cfg's read_buffer and write_buffer (a size
// left at 0 keeps the socket's): ListenUDP does, and so does the
// supervisor to a socket the service manager passed. The kernel caps what
// it is asked for at net.core.rmem_max and wmem_max, then doubles it (its
// bookkeeping). Errors are *ListenError values.
func SetBuffers(uc *net.UDPConn, cfg Config) error {
	if cfg.ReadBuffer > 0 {
		if err := uc.SetReadBuffer(cfg.ReadBuffer); err != nil {
			return &ListenError{Label: labelOf(cfg), Err: fmt.Errorf("read_buffer: %w", err)}
		}
	}
	if cfg.WriteBuffer > 0 {
		if err := uc.SetWriteBuffer(cfg.WriteBuffer); err != nil {
			return &ListenError{Label: labelOf(cfg), Err: fmt.Errorf("write_buffer: %w", err)}
		}
	}
	return nil
}

// AdoptTCP applies a tcp or tls endpoint's socket options to a listener
// it did not open (one passed by the service manager): the backlog now,
// keepalive and Nagle on every connection it accepts. Options that count
// only before bind (reuse_port, v6only) are the socket unit's to set.
func AdoptTCP(ln *net.TCPListener, o TCPOptions) (net.Listener, error) {
	if o.Backlog > 0 {
		if err := setBacklog(ln, o.Backlog); err != nil {
			return nil, err
		}
	}
	ka := keepaliveConfig(o)
	return &tcpListener{TCPListener: ln, adopted: true, birth: acceptedOptions{nagle: o.Nagle, keepalive: &ka}}, nil
}
