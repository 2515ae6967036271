// Package proxy implements the proxy factory: each connection is forwarded
// to an upstream, as xinetd's redirect does, optionally announcing the
// client with a PROXY protocol header and optionally over TLS.
//
// Name: proxy. Attributes:
//
//	service "proxy" "web" {
//	  upstream            = "10.0.0.5:8080"     # or a list, tried in order
//	  connect_timeout     = "5s"                # for each upstream (TLS handshake included)
//	  send_proxy_protocol = "v2"                # or "v1"; default: no header
//	  upstream_tls {                            # default: plain TCP
//	    server_name          = "web.internal"   # default: the upstream's host
//	    ca_file              = "internal-ca.pem" # default: the system's roots
//	    insecure_skip_verify = false
//	  }
//	  endpoint "tcp" { address = "0.0.0.0:80" }
//	}
//
// While the upstream is being reached nothing is read from the client. The
// upstreams are tried in order, each within connect_timeout; when none
// answers, the client's connection is aborted and counted as
// superd_connections_dropped_total{reason="upstream"} (so is a connection
// whose upstream fails with an error, such as a reset, later on). The
// PROXY header carries the client's address and the address it connected
// to (v1 UNKNOWN, or v2 LOCAL, for a client on a unix socket); it goes
// before the TLS handshake, as HAProxy sends it.
//
// Both directions are flow-controlled: reading from the client pauses while
// more than 64 KiB of its data waits for the upstream, and reading from the
// upstream pauses while the client has 64 KiB of unsent output, so a peer
// that does not read holds a bounded amount of superd's memory whatever the
// other sends. An end of stream is passed on as a half-close in each
// direction (a FIN, or a close_notify and a FIN over TLS); the connection
// closes once both directions have ended. A reset on either side resets
// the other.
//
// The client side is a connection like any other: its bytes are counted in
// superd_received_bytes_total and superd_sent_bytes_total, and the common
// attributes apply (idle_timeout counts what the client sends only).
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/zclconf/go-cty/cty"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
)

// DefaultConnectTimeout is connect_timeout's default.
const DefaultConnectTimeout = 5 * time.Second

const (
	// queueHigh: client bytes waiting for the upstream above which reading
	// from the client pauses; it resumes at queueLow.
	queueHigh = framework.HighWaterMark
	queueLow  = queueHigh / 2
	// readSize is what one read from the upstream takes at most.
	readSize = 32 << 10
	// maxPooled: buffers that grew larger go back to the garbage collector.
	maxPooled = 256 << 10
)

var (
	readBufs  = sync.Pool{New: func() any { b := make([]byte, readSize); return &b }}
	queueBufs = sync.Pool{New: func() any { b := make([]byte, 0, readSize); return &b }}
)

func init() {
	framework.Register(framework.Spec{
		Name:        "proxy",
		Description: "forwards each connection to an upstream (xinetd's redirect), optionally with a PROXY header and over TLS",
		Serves:      framework.Streams,
		Config:      Config{ConnectTimeout: framework.Duration(DefaultConnectTimeout)},
		New:         framework.Typed(New),
	})
}

// Config is the configuration of a proxy service.
type Config struct {
	Upstream          cty.Value          `hcl:"upstream" doc:"\"host:port\", or a list of them tried in order"`
	ConnectTimeout    framework.Duration `hcl:"connect_timeout,optional" doc:"how long each upstream has to accept the connection (and finish the TLS handshake)"`
	SendProxyProtocol string             `hcl:"send_proxy_protocol,optional" doc:"\"v1\" or \"v2\": send the client's address in a PROXY protocol header first (default: none)"`
	UpstreamTLS       *TLSConfig         `hcl:"upstream_tls,block" doc:"block { server_name, ca_file, insecure_skip_verify = false }: speak TLS to the upstream"`
}

// TLSConfig is the upstream_tls block.
type TLSConfig struct {
	ServerName         string         `hcl:"server_name,optional"`
	CAFile             framework.Path `hcl:"ca_file,optional" contents:"true"`
	InsecureSkipVerify bool           `hcl:"insecure_skip_verify,optional"`
}

// upstream is one address to forward to.
type upstream struct {
	addr string
	tls  *tls.Config // nil: plain TCP
}

// Factory is the proxy factory of one service.
type Factory struct {
	upstreams []upstream
	timeout   time.Duration
	version   byte // PROXY protocol version to send; 0: none

	log *slog.Logger
	wg  sync.WaitGroup // the goroutines of every connection
}

// New builds a proxy factory from its configuration.
func New(env *framework.Env, cfg *Config) (framework.Factory, error) {
	f := &Factory{log: env.Log, timeout: time.Duration(cfg.ConnectTimeout)}
	// Every mistake is reported, not only the first (validate lists them).
	addrs, uerr := upstreamList(cfg)
	errs := []error{uerr}
	if f.timeout <= 0 {
		errs = append(errs, framework.Errorf(&cfg.ConnectTimeout, "connect_timeout must be more than zero"))
	}
	switch v := cfg.SendProxyProtocol; v {
	case "":
	case "v1":
		f.version = 1
	case "v2":
		f.version = 2
	default:
		errs = append(errs, framework.Errorf(&cfg.SendProxyProtocol, "%q is not \"v1\" or \"v2\"", v))
	}
	var base *tls.Config
	if b := cfg.UpstreamTLS; b != nil {
		var err error
		base, err = tlsConfig(b)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, a := range addrs {
		u := upstream{addr: a}
		if base != nil {
			u.tls = base.Clone()
			if u.tls.ServerName == "" {
				host, _, _ := net.SplitHostPort(a)
				u.tls.ServerName = host
			}
		}
		f.upstreams = append(f.upstreams, u)
	}
	return f, nil
}

// withArticle is "a number", "an object".
func withArticle(noun string) string {
	if strings.ContainsAny(noun[:1], "aeiou") {
		return "an " + noun
	}
	return "a " + noun
}

// upstreamList reads upstream: one "host:port" or a list of them.
func upstreamList(cfg *Config) ([]string, error) {
	v := cfg.Upstream
	var elems []cty.Value
	switch t := v.Type(); {
	case t == cty.String:
		elems = []cty.Value{v}
	case t.IsTupleType() || t.IsListType():
		elems = v.AsValueSlice()
	default:
		return nil, framework.Errorf(&cfg.Upstream, "upstream must be \"host:port\" or a list of them, not %s", withArticle(t.FriendlyName()))
	}
	if len(elems) == 0 {
		return nil, framework.Errorf(&cfg.Upstream, "upstream needs at least one \"host:port\"")
	}
	// Each bad element is reported.
	var out []string
	var errs []error
	for i, e := range elems {
		if e.Type() != cty.String {
			errs = append(errs, framework.Errorf(&cfg.Upstream, "element %d of upstream is %s, not a \"host:port\" string", i+1, withArticle(e.Type().FriendlyName())))
			continue
		}
		a := e.AsString()
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			errs = append(errs, framework.Errorf(&cfg.Upstream, "%q is not \"host:port\"", a))
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			errs = append(errs, framework.Errorf(&cfg.Upstream, "%q: the port must be a number from 1 to 65535", a))
			continue
		}
		out = append(out, a)
	}
	return out, errors.Join(errs...)
}

// tlsConfig builds the client configuration of upstream_tls; ca_file is
// read now, so `superd validate` reports a missing or empty one.
func tlsConfig(b *TLSConfig) (*tls.Config, error) {
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         b.ServerName,
		InsecureSkipVerify: b.InsecureSkipVerify,
	}
	if p := string(b.CAFile); p != "" {
		// As a tls endpoint's client_ca_file: a regular file (a FIFO
		// would hang validate and reload), bounded, every certificate
		// in it parsed (none skipped).
		pem, err := endpoint.ReadTLSFile(p)
		if err != nil {
			return nil, framework.Errorf(&b.CAFile, "cannot read the CA file: %v", err)
		}
		pool, err := endpoint.ParseCertPool(pem)
		if errors.Is(err, endpoint.ErrNoCertificate) {
			return nil, framework.Errorf(&b.CAFile, "%s holds no PEM certificate", p)
		}
		if err != nil {
			return nil, framework.Errorf(&b.CAFile, "%s: %v", p, err)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// StopFactory waits for the goroutines of the connections, which end with
// them.
func (f *Factory) StopFactory() error {
	f.wg.Wait()
	return nil
}

// BuildProtocol builds the protocol of one client connection.
func (f *Factory) BuildProtocol(net.Addr) framework.Protocol {
	p := &Proxy{f: f}
	p.cond.L = &p.mu
	return p
}

// dial reaches the first upstream that answers, each within the connect
// timeout: TCP, then the PROXY header, then the TLS handshake.
func (f *Factory) dial(ctx context.Context, header []byte) (net.Conn, error) {
	var errs []string
	for _, u := range f.upstreams {
		c, err := f.dialOne(ctx, u, header)
		if err == nil {
			return c, nil
		}
		var oe *net.OpError
		if !errors.As(err, &oe) {
			err = fmt.Errorf("%s: %w", u.addr, err) // a TLS error names no address
		}
		errs = append(errs, err.Error())
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.New(strings.Join(errs, "; "))
}

func (f *Factory) dialOne(ctx context.Context, u upstream, header []byte) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	if len(header) > 0 {
		c.SetWriteDeadline(deadline)
		if _, err := c.Write(header); err != nil {
			c.Close()
			return nil, err
		}
		c.SetWriteDeadline(time.Time{})
	}
	if u.tls == nil {
		return c, nil
	}
	tc := tls.Client(c, u.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			// Not crypto/tls's bare "context deadline exceeded".
			err = fmt.Errorf("no answer within connect_timeout (%s)", f.timeout)
		}
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// Proxy is the protocol of one client connection: it forwards the client's
// bytes to the upstream (through a bounded queue and a writer goroutine)
// and the upstream's to the client (a reader goroutine, registered as the
// client transport's producer, so it pauses while the client's output is
// backed up).
type Proxy struct {
	f      *Factory
	t      framework.Transport
	cancel context.CancelFunc

	mu   sync.Mutex
	cond sync.Cond // on mu: queue, end of stream, pause lifted, closed
	up   net.Conn  // set once reached

	// Client to upstream.
	queue        *[]byte // client bytes not yet taken by the writer
	inflight     int     // bytes the writer is writing
	clientPaused bool    // reading from the client is paused (by us)
	clientEOF    bool    // the client's end of stream arrived
	upShut       bool    // and was passed on to the upstream

	// Upstream to client.
	paused   bool // the client's output is backed up (producer paused)
	downShut bool // the upstream's end of stream was passed on

	// draining: superd reads nothing more from the client (a shutdown or
	// reload); the connection ends when the upstream has answered.
	draining bool

	closed bool // ConnectionLost ran
}

// ConnectionMade stops reading from the client and reaches the upstream.
func (p *Proxy) ConnectionMade(t framework.Transport) {
	p.t = t
	p.mu.Lock()
	p.clientPaused = true
	t.PauseProducing()
	p.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.f.wg.Add(1)
	go p.connect(ctx)
}

// connect reaches the upstream, then starts forwarding both ways.
func (p *Proxy) connect(ctx context.Context) {
	defer p.f.wg.Done()
	up, err := p.f.dial(ctx, p.header())
	if err != nil {
		if ctx.Err() == nil {
			p.f.log.Warn("no upstream answered; connection dropped", "peer", p.t.PeerAddr().String(), "err", err)
			p.abort()
		}
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		closeConn(up, false)
		return
	}
	p.up = up
	p.mu.Unlock()
	p.t.RegisterProducer(p)
	p.f.wg.Add(2)
	go p.writeLoop(up)
	go p.readLoop(up)
	p.mu.Lock()
	if p.clientPaused && !p.closed {
		p.clientPaused = false
		p.t.ResumeProducing()
	}
	p.mu.Unlock()
}

// header is the PROXY protocol header to send, if any: the client's
// address and the one it connected to; v1 UNKNOWN or v2 LOCAL for a client
// that is not on TCP.
func (p *Proxy) header() []byte {
	if p.f.version == 0 {
		return nil
	}
	h := &proxyproto.Header{Version: p.f.version, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if src, ok := p.t.PeerAddr().(*net.TCPAddr); ok {
		if dst, ok := p.t.LocalAddr().(*net.TCPAddr); ok {
			src, dst = sameFamily(src, dst)
			h = proxyproto.HeaderProxyFromAddrs(p.f.version, src, dst)
		}
	}
	b, err := h.Format()
	if err != nil {
		h = &proxyproto.Header{Version: p.f.version, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
		b, _ = h.Format()
	}
	return b
}

// sameFamily gives the header's two addresses one family, as PROXY
// requires, the client's: IPv4 clients stay IPv4 (SPEC: a mapped address
// is its IPv4 one). A client a PROXY header named by its IPv4 address on
// an IPv6 socket would otherwise go upstream as ::ffff:a.b.c.d (the
// library maps both to IPv6); where superd's own address has the other
// family, the header names the unspecified address of the client's
// family, with superd's port.
func sameFamily(src, dst *net.TCPAddr) (*net.TCPAddr, *net.TCPAddr) {
	s, d := src.AddrPort(), dst.AddrPort()
	sa, da := s.Addr().Unmap(), d.Addr().Unmap()
	if sa.Is4() != da.Is4() {
		if sa.Is4() {
			da = netip.IPv4Unspecified()
		} else {
			da = netip.IPv6Unspecified()
		}
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(sa, s.Port())), net.TCPAddrFromAddrPort(netip.AddrPortFrom(da, d.Port()))
}

// abort ends the client's connection, counted as dropped because of the
// upstream.
func (p *Proxy) abort() {
	if a, ok := p.t.(framework.Aborter); ok {
		a.Abort(framework.ErrUpstream)
		return
	}
	p.t.AbortConnection()
}

// upstreamFailed aborts the client's connection after an error on the
// upstream's, unless the connection is over already.
func (p *Proxy) upstreamFailed(err error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return
	}
	p.f.log.Debug("upstream failed; connection dropped", "peer", p.t.PeerAddr().String(), "err", err)
	p.abort()
}

// DataReceived queues the client's bytes for the writer, pausing the
// client while the queue is above queueHigh.
func (p *Proxy) DataReceived(data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if p.queue == nil {
		p.queue = queueBufs.Get().(*[]byte)
	}
	*p.queue = append(*p.queue, data...)
	if !p.clientPaused && len(*p.queue)+p.inflight > queueHigh {
		p.clientPaused = true
		p.t.PauseProducing()
	}
	p.cond.Broadcast()
}

// ReadConnectionLost: the client's end of stream, passed on once the queue
// has been written.
func (p *Proxy) ReadConnectionLost() {
	p.mu.Lock()
	p.clientEOF = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// ConnectionDraining (a shutdown or reload): superd reads no more from the
// client. What the proxy took is still written to the upstream, without an
// end of stream (the client did not end its stream: an upload cut here
// must not look complete), and the upstream's answer is relayed; its end
// of stream ends the connection. An upstream that waits for more is cut
// at shutdown_timeout (a reset, as for any connection then).
func (p *Proxy) ConnectionDraining() {
	p.mu.Lock()
	p.draining = true
	// The upstream had ended (only the client's end was awaited) and has
	// every byte taken from the client; else writeLoop ends it once it has.
	done := p.drainedLocked()
	p.mu.Unlock()
	if done {
		p.t.LoseConnection()
	}
}

// drainedLocked reports whether a draining connection is over: the
// upstream has ended its stream and every byte taken from the client has
// been written to it (an upstream that half-closed may still be reading
// the client's upload: ending now would reset it and lose that).
func (p *Proxy) drainedLocked() bool {
	return p.draining && p.downShut && p.queue == nil && p.inflight == 0
}

// writeLoop writes the queue to the upstream, then its end of stream.
func (p *Proxy) writeLoop(up net.Conn) {
	defer p.f.wg.Done()
	for {
		p.mu.Lock()
		for p.queue == nil && !p.clientEOF && !p.closed {
			p.cond.Wait()
		}
		if p.closed {
			p.mu.Unlock()
			return
		}
		if p.queue == nil { // the client's end of stream, all written
			p.mu.Unlock()
			if err := closeWrite(up); err != nil {
				p.upstreamFailed(err)
				return
			}
			p.mu.Lock()
			p.upShut = true
			both := p.downShut
			p.mu.Unlock()
			if both {
				p.t.LoseConnection()
			}
			return
		}
		batch := p.queue
		p.queue = nil
		p.inflight = len(*batch)
		p.mu.Unlock()
		_, err := up.Write(*batch)
		if cap(*batch) <= maxPooled {
			*batch = (*batch)[:0]
			queueBufs.Put(batch)
		}
		p.mu.Lock()
		p.inflight = 0
		if err == nil && p.clientPaused && !p.closed && (p.queue == nil || len(*p.queue) <= queueLow) {
			p.clientPaused = false
			p.t.ResumeProducing()
		}
		drained := err == nil && !p.closed && p.drainedLocked()
		p.mu.Unlock()
		if err != nil {
			p.upstreamFailed(err)
			return
		}
		if drained {
			p.t.LoseConnection()
		}
	}
}

// readLoop copies the upstream's bytes to the client while the client's
// output is not backed up, then passes the upstream's end of stream on.
func (p *Proxy) readLoop(up net.Conn) {
	defer p.f.wg.Done()
	r := newReader(up)
	for {
		p.mu.Lock()
		for p.paused && !p.closed {
			p.cond.Wait()
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
		buf, n, err := r.read()
		if n > 0 {
			p.t.Write((*buf)[:n])
		}
		if buf != nil {
			readBufs.Put(buf)
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			p.mu.Lock()
			p.downShut = true
			// Draining, no end of stream of the client's will be read:
			// the upstream's ends the connection, once what was taken
			// from the client is written (else writeLoop ends it then).
			both := p.upShut || p.drainedLocked()
			p.mu.Unlock()
			if hc, ok := p.t.(framework.HalfCloser); ok && !both {
				hc.LoseWriteConnection()
			} else {
				p.t.LoseConnection()
			}
			return
		}
		p.upstreamFailed(err)
		return
	}
}

// PauseProducing: the client's output is backed up; stop reading the
// upstream.
func (p *Proxy) PauseProducing() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// ResumeProducing: the client's output has drained.
func (p *Proxy) ResumeProducing() {
	p.mu.Lock()
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// StopProducing: the connection is ending; ConnectionLost cleans up.
func (p *Proxy) StopProducing() {}

// ConnectionLost closes the upstream: gracefully once the client's end of
// stream has been passed on to it, else with a reset (the client's stream
// was cut short).
func (p *Proxy) ConnectionLost(reason error) {
	p.mu.Lock()
	p.closed = true
	// Gracefully also when draining ended with the upstream's end of
	// stream and all the client's bytes written: the exchange is over.
	up, graceful := p.up, p.upShut || p.drainedLocked()
	if p.queue != nil {
		*p.queue = (*p.queue)[:0]
		queueBufs.Put(p.queue)
		p.queue = nil
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	if p.cancel != nil {
		p.cancel()
	}
	if up != nil {
		closeConn(up, graceful)
	}
}

// closeWrite sends the upstream our end of stream: a FIN, after a
// close_notify over TLS.
func closeWrite(c net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		c = tc.NetConn()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// closeConn closes the upstream's socket (beneath TLS: a close_notify could
// wait on a peer that does not read), with a reset unless graceful.
func closeConn(c net.Conn, graceful bool) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok && !graceful {
		tc.SetLinger(0)
	}
	c.Close()
}

// reader reads from the upstream into pooled buffers. On a TCP socket it
// takes a buffer only once the socket is readable, so an idle connection
// holds none.
type reader struct {
	conn net.Conn
	raw  syscall.RawConn // nil: read through conn (TLS)
	fn   func(fd uintptr) bool
	buf  *[]byte
	n    int
	err  error
}

func newReader(c net.Conn) *reader {
	r := &reader{conn: c}
	if tc, ok := c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			r.raw = rc
			r.fn = r.rawRead
		}
	}
	return r
}

func (r *reader) read() (*[]byte, int, error) {
	if r.raw == nil {
		b := readBufs.Get().(*[]byte)
		n, err := r.conn.Read(*b)
		return b, n, err
	}
	r.buf, r.n, r.err = nil, 0, nil
	if err := r.raw.Read(r.fn); err != nil {
		if r.buf != nil {
			readBufs.Put(r.buf)
		}
		return nil, 0, err
	}
	return r.buf, r.n, r.err
}

func (r *reader) rawRead(fd uintptr) bool {
	b := readBufs.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			readBufs.Put(b)
			return false // wait for readability without holding a buffer
		case err != nil:
			readBufs.Put(b)
			r.err = os.NewSyscallError("read", err)
		case n == 0:
			readBufs.Put(b)
			r.err = io.EOF
		default:
			r.buf, r.n = b, n
		}
		return true
	}
}

// Interface guards.
var (
	_ framework.Factory               = (*Factory)(nil)
	_ framework.FactoryStopper        = (*Factory)(nil)
	_ framework.HalfCloseableProtocol = (*Proxy)(nil)
	_ framework.Drainer               = (*Proxy)(nil)
	_ framework.Producer              = (*Proxy)(nil)
)
