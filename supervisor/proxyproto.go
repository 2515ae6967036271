package supervisor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/superd-dev/superd/endpoint"
)

// errNoHeader: a trusted peer sent none where one is required.
var errNoHeader = errors.New("no PROXY protocol header")

// A v2 header's length field is 16 bits: go-proxyproto refuses more than
// 4 KiB of addresses and TLVs unless told otherwise, so a trusted proxy
// sending a well-formed header with larger TLVs (certificate details,
// several of them) would have every connection refused. The whole
// length is taken: only trusted peers' headers are read, within the
// header timeout, at most 64 KiB each.
func init() { proxyproto.MaxV2HeaderSize = math.MaxUint16 }

// proxiedConn is a connection whose PROXY header has been read: its
// RemoteAddr is the client the header names (the real one), and what
// followed the header in the same reads is delivered first.
type proxiedConn struct {
	net.Conn
	r     *bufio.Reader // bytes read past the header; nil once drained
	peer  net.Addr      // the client, from the header
	proxy net.Addr      // the proxy's own address
}

func (c *proxiedConn) Read(b []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(b)
		}
		c.r = nil
	}
	return c.Conn.Read(b)
}

func (c *proxiedConn) RemoteAddr() net.Addr { return c.peer }

// SetLinger passes an abort's reset (SetLinger(0)) on to the TCP
// connection.
func (c *proxiedConn) SetLinger(sec int) error {
	if tc, ok := c.Conn.(interface{ SetLinger(int) error }); ok {
		return tc.SetLinger(sec)
	}
	return nil
}

// SyscallConn is the socket's, so a drain can tell whether the kernel
// holds bytes of the peer's not read yet (what follows the header in this
// connection's own buffer is read first, whatever it says).
func (c *proxiedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	return sc.SyscallConn()
}

// CloseWrite passes a half-close on to the TCP connection.
func (c *proxiedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// readProxyHeader reads the PROXY protocol header (v1 or v2) a trusted
// peer sends before anything else, within pp.Timeout. It returns the
// connection to serve: with the header's client as its peer, or c itself
// (no header where none is required, or a LOCAL command, or an address
// family the header does not give: the connection's own address stays).
// A missing (when required), malformed, over-long or late header is an
// error.
//
// Silence until the timeout is no header, not a late one: a direct
// client of a server-speaks-first service (qotd, daytime) waits for the
// service to talk, so where no header is required it is served once the
// timeout has passed. Bytes a signature begins with and then nothing are
// a late header.
func readProxyHeader(c net.Conn, pp *endpoint.ProxyProtocol) (net.Conn, error) {
	c.SetReadDeadline(time.Now().Add(pp.Timeout))
	defer c.SetReadDeadline(time.Time{})
	// v1 headers are at most 107 bytes; v2 at most 16 + 65535.
	br := bufio.NewReaderSize(c, 512)
	h, err := readHeader(br)
	switch {
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		if pp.Required {
			return nil, errNoHeader
		}
		if br.Buffered() == 0 {
			return c, nil
		}
		return &proxiedConn{Conn: c, r: br, peer: c.RemoteAddr(), proxy: c.RemoteAddr()}, nil
	case err != nil:
		if isTimeout(err) {
			return nil, fmt.Errorf("PROXY header not complete within %v", pp.Timeout)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("connection closed inside the PROXY header")
		}
		return nil, fmt.Errorf("malformed PROXY header: %w", err)
	}
	pc := &proxiedConn{Conn: c, r: br, peer: c.RemoteAddr(), proxy: c.RemoteAddr()}
	if h.Command.IsProxy() {
		if src, ok := h.SourceAddr.(*net.TCPAddr); ok && (h.TransportProtocol.IsStream()) {
			pc.peer = src
		}
	}
	if br.Buffered() == 0 {
		pc.r = nil
	}
	return pc, nil
}

// proxyOf returns the proxy's address when nc (or the connection under
// its TLS) came through a PROXY header.
func proxyOf(nc net.Conn) (net.Addr, bool) {
	for range 2 {
		if pc, ok := nc.(*proxiedConn); ok && pc.peer != pc.proxy {
			return pc.proxy, true
		}
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = u.NetConn()
	}
	return nil, false
}

// maxV1Header is the longest v1 header, CRLF included (the spec's worst
// case).
const maxV1Header = 107

// readHeader reads a v1 or v2 header from br. go-proxyproto parses both,
// but refuses a v1 header that does not arrive in one read; the spec
// recommends tolerance (a header can be split on its way), so the v1 line
// is gathered here, bounded, and then parsed by the library.
//
// No header (ErrNoProxyProtocol) is nothing at all until the end or the
// read deadline, or bytes no signature begins with: told at the first
// such byte, however few came, where the library would wait for a
// signature's length. Bytes a signature begins with and then the end or
// the deadline are a header cut short or late.
func readHeader(br *bufio.Reader) (*proxyproto.Header, error) {
	for n := 1; ; n++ {
		sig, err := br.Peek(n)
		if !bytes.HasPrefix(proxyproto.SIGV1, sig) && !bytes.HasPrefix(proxyproto.SIGV2, sig) {
			return nil, proxyproto.ErrNoProxyProtocol
		}
		if err != nil {
			if len(sig) == 0 && (errors.Is(err, io.EOF) || isTimeout(err)) {
				return nil, proxyproto.ErrNoProxyProtocol
			}
			return nil, err
		}
		if bytes.Equal(sig, proxyproto.SIGV2) {
			return proxyproto.Read(br)
		}
		if bytes.Equal(sig, proxyproto.SIGV1) {
			break
		}
	}
	line := make([]byte, 0, maxV1Header)
	for {
		b, err := br.ReadByte()
		if err != nil {
			return nil, err
		}
		line = append(line, b)
		if b == '\n' {
			break
		}
		if len(line) >= maxV1Header {
			return nil, errors.New("a version 1 header longer than 107 bytes")
		}
	}
	return proxyproto.Read(bufio.NewReader(bytes.NewReader(line)))
}
