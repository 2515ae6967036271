//go:build linux

package exec

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/metrics"
)

// ServeConn runs the program for one connection and returns once it has
// exited and the connection is closed.
func (f *Factory) ServeConn(hc *framework.HandedConn) error {
	env := connEnv(hc)
	switch c := hc.Conn.(type) {
	case *net.TCPConn:
		return f.serveDirect(hc, c, env, true)
	case *net.UnixConn:
		return f.serveDirect(hc, c, env, false)
	case bareConn:
		return f.serveDirect(hc, c, env, !c.IsUnix())
	default:
		return f.serveRelayed(hc, env)
	}
}

// bareConn is a socket superd accepted as a bare descriptor (see
// framework.HandedConn): the program gets it as it gets one of net's.
type bareConn interface {
	net.Conn
	syscall.Conn
	IsUnix() bool
}

// serveDirect gives the child the socket itself: superd copies nothing,
// and keeps a TCP socket's descriptor only, to read the byte counts from
// at the end.
func (f *Factory) serveDirect(hc *framework.HandedConn, c interface {
	net.Conn
	syscall.Conn
}, env []string, isTCP bool) error {
	peer := peerString(hc.Conn)
	fd, err := dupBlocking(c)
	c.Close()
	if err != nil {
		return &framework.RejectError{Reason: metrics.RejectSpawn, Err: err}
	}
	ch, err := f.start([]int{fd, fd}, env, peer, false)
	if !isTCP || err != nil {
		// Only a TCP socket's copy is kept, for its byte counts: a unix
		// socket's would hold the connection open after the program has
		// closed its own (its client would see no end of stream).
		unix.Close(fd)
	} else {
		defer liveTCPBytes(hc, fd)()
	}
	if err != nil {
		f.spawnLog.failed(f.log, f.path, peer, err)
		return &framework.RejectError{Reason: metrics.RejectSpawn, Err: err}
	}
	f.spawnLog.started(f.log, f.path)
	hc.Served()
	hc.SetRunningPID(ch.pid)
	unwatch := ch.watch(hc.Stopping, hc.Killed)
	ws, werr := ch.wait()
	unwatch()
	recordExit(hc, ch.pid, ws, werr)
	if isTCP {
		countTCP(fd, hc)
	}
	if ch.wasKilled() {
		return framework.ErrShutdownTimeout
	}
	return werr
}

// liveTCPBytes has the status view read the bytes of the socket handed
// over from the kernel (TCP_INFO: received, and acknowledged by the
// client) while the program runs; the returned func stops that and closes
// fd, which it reads.
func liveTCPBytes(hc *framework.HandedConn, fd int) (closeFD func()) {
	var mu sync.Mutex
	open := true
	hc.SetLiveBytes(func() (in, out int64) {
		mu.Lock()
		defer mu.Unlock()
		if !open {
			return 0, 0
		}
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return 0, 0
		}
		return int64(info.Bytes_received), int64(info.Bytes_acked)
	})
	return func() {
		hc.SetLiveBytes(nil)
		mu.Lock()
		open = false
		mu.Unlock()
		unix.Close(fd)
	}
}

// dupBlocking duplicates the connection's descriptor for the child, in
// blocking mode (what a program expects of its stdin and stdout; the mode
// belongs to the socket, which superd closes at once). It is what
// conn.File does, without making the duplicate an *os.File in the
// runtime's poller only to take it out again.
func dupBlocking(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("dup", derr)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return fd, nil
}

// countTCP adds the bytes the kernel moved on a socket superd handed over.
// The program may exit with much of what it wrote still queued (sent
// after the close, not acknowledged yet), so sent is what was acknowledged
// plus what is queued (SIOCOUTQ), unless the program left input unread:
// the socket then still holds it, superd's close resets the connection
// (a close with unread input sends RST) and the kernel drops what it has
// not sent yet (tcpi_notsent_bytes), so only what it has sent counts
// (acknowledged, or on its way: a receiver may acknowledge late, up to a
// delayed acknowledgement's time, and still hand it to the client). The kernel counts a FIN as one byte of
// sequence space: the peer's, received, and superd's (the program's
// shutdown), queued or acknowledged, are taken off.
//
// The two are read by two system calls, and the peer may acknowledge
// between them (it is still reading what the program left queued), which
// moves bytes from queued to acknowledged: the queue read after the
// acknowledged count would miss them. So the queue is read between two
// TCP_INFO reads, and kept only when nothing was acknowledged meanwhile.
//
// A connection that has ended (TCP_CLOSE: both sides shut down and
// acknowledged, or a reset) sends nothing more: what is still queued was
// never delivered. Its state no longer tells which FINs were exchanged
// (see finAcknowledged for superd's). After superd's FIN was acknowledged,
// the peer's came too unless the socket holds an error; a reset in
// CLOSE_WAIT (EPIPE) came after the peer's FIN; another reset counts no
// FIN in, though the peer may have sent one first. A program that read the
// error took it away: for a peer that reset after superd's FIN without
// sending its own, one byte in too few. No socket option tells more.
func countTCP(fd int, hc *framework.HandedConn) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return
	}
	var queued int
	for range maxCountTries {
		queued = 0
		if q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err == nil {
			queued = q
		}
		again, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			break
		}
		stable := again.Bytes_acked == info.Bytes_acked
		info = again
		if stable {
			break
		}
	}
	received, sent := info.Bytes_received, info.Bytes_acked
	var finIn, finOut bool
	if info.State == tcpClose {
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		clean := err == nil && soErr == 0
		finOut = finAcknowledged(info, queued, clean)
		finIn = finOut && clean || err == nil && soErr == int(unix.EPIPE)
	} else {
		finUnsent := false
		if holdsInput(fd) {
			// The close resets: of the queue, what the kernel has not
			// sent yet is dropped; what it sent may have arrived. A FIN
			// queued is the queue's last byte: if anything is unsent,
			// so is the FIN, already out of the count.
			queued -= int(info.Notsent_bytes)
			finUnsent = info.Notsent_bytes > 0
		}
		if queued > 0 {
			sent += uint64(queued)
		}
		finIn = info.State == tcpCloseWait || info.State == tcpClosing || info.State == tcpLastAck
		finOut = !finUnsent && (info.State == tcpFinWait1 || info.State == tcpFinWait2 || info.State == tcpClosing || info.State == tcpLastAck)
	}
	if finIn && received > 0 {
		received--
	}
	if finOut && sent > 0 {
		sent--
	}
	hc.BytesIn, hc.BytesOut = int64(received), int64(sent)
	if hc.Received != nil {
		hc.Received.Add(float64(received))
	}
	if hc.Sent != nil {
		hc.Sent.Add(float64(sent))
	}
}

// finAcknowledged tells whether superd's FIN was acknowledged on a
// connection that has ended: one byte more was acknowledged than the data
// sent, each byte once (tcpi_bytes_sent less tcpi_bytes_retrans). Those two
// count too much where the host's queueing discipline refused a segment
// (TCP sends it again as new data, not as a retransmission), and read 0
// before Linux 4.19: when they claim more data than was ever acknowledged
// or queued, or nothing, the end tells instead: nothing queued and no
// error is a clean end, whose FIN was acknowledged.
func finAcknowledged(info *unix.TCPInfo, queued int, clean bool) bool {
	if info.Bytes_sent > 0 && info.Bytes_sent >= info.Bytes_retrans {
		data := info.Bytes_sent - info.Bytes_retrans
		if data <= info.Bytes_acked+uint64(max(queued, 0)) {
			return info.Bytes_acked > data
		}
	}
	return queued == 0 && clean
}

// holdsInput reports whether the socket has received bytes nobody read
// (SIOCINQ).
func holdsInput(fd int) bool {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && n > 0
}

// recordExit tells the access log and the status view how the program
// serving hc ended (err: it could not be waited for).
func recordExit(hc *framework.HandedConn, pid int, ws syscall.WaitStatus, err error) {
	hc.SetRunningPID(0)
	hc.PID = pid
	if err != nil {
		return
	}
	if ws.Signaled() {
		hc.Exit = unix.SignalName(ws.Signal())
	} else {
		hc.Exit = strconv.Itoa(ws.ExitStatus())
	}
}

// maxCountTries bounds countTCP's reads: acknowledgements that keep
// arriving between them (each read takes microseconds) would have to
// outlast them all; then the count is off by the last one at most.
const maxCountTries = 100

// TCP states (tcpi_state) in which a FIN has been received or queued, and
// the state of a connection that has ended.
const (
	tcpFinWait1  = 4
	tcpFinWait2  = 5
	tcpClose     = 7
	tcpCloseWait = 8
	tcpLastAck   = 9
	tcpClosing   = 11
)

// connEnv is the connection's part of the child's environment: what
// ucspi-tcp's tcpserver and systemd's Accept=yes set.
func connEnv(hc *framework.HandedConn) []string {
	var env []string
	set := func(k, v string) { env = append(env, k+"="+v) }
	nc := hc.Conn
	switch ra := nc.RemoteAddr().(type) {
	case *net.TCPAddr:
		set("PROTO", "TCP")
		ip, port := plainAddr(ra)
		set("TCPREMOTEIP", ip)
		set("TCPREMOTEPORT", port)
		if la, ok := nc.LocalAddr().(*net.TCPAddr); ok {
			lip, lport := plainAddr(la)
			set("TCPLOCALIP", lip)
			set("TCPLOCALPORT", lport)
		}
		set("TCPCONNNUM", strconv.Itoa(hc.SourceConns))
		set("REMOTE_ADDR", ip)
		set("REMOTE_PORT", port)
	default:
		set("PROTO", "IPC")
		if cred, ok := framework.PeerCredentials(nc); ok {
			set("IPCREMOTEEUID", strconv.FormatUint(uint64(cred.UID), 10))
			set("IPCREMOTEEGID", strconv.FormatUint(uint64(cred.GID), 10))
			set("IPCREMOTEPID", strconv.FormatInt(int64(cred.PID), 10))
		}
	}
	if st, ok := framework.TLSState(nc); ok {
		set("SSL_PROTOCOL", framework.TLSVersionName(st.Version))
		set("SSL_CIPHER", tls.CipherSuiteName(st.CipherSuite))
		if st.ServerName != "" {
			set("SSL_TLS_SNI_SERVERNAME", st.ServerName)
		}
		if len(st.PeerCertificates) > 0 {
			set("SSL_PEER_CERT_SUBJECT", certSubject(st.PeerCertificates[0]))
		}
	}
	return env
}

// certSubject is a certificate's subject as RFC 2253 writes it (and
// openssl's -nameopt RFC2253, and mod_ssl's SSL_CLIENT_S_DN): its relative
// distinguished names as the certificate holds them, the last first, the
// values of a multi-valued one joined by "+", and DC and UID by name.
// pkix.Name's String is not that: it keeps one value of each common
// attribute (of CN=alice,CN=Users,DC=example,DC=com, CN=Users is lost),
// writes them in an order of its own, and DC and UID as numbers.
func certSubject(cert *x509.Certificate) string {
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(cert.RawSubject, &rdns); err != nil || len(rest) > 0 {
		return cert.Subject.String()
	}
	var b strings.Builder
	for i := len(rdns) - 1; i >= 0; i-- {
		if i < len(rdns)-1 {
			b.WriteByte(',')
		}
		for j, atv := range rdns[i] {
			if j > 0 {
				b.WriteByte('+')
			}
			b.WriteString(attributeString(atv))
		}
	}
	return b.String()
}

// The attributes RFC 2253 names that pkix does not, and one it does.
var (
	oidDC  = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
	oidUID = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
	oidCN  = asn1.ObjectIdentifier{2, 5, 4, 3}
)

// attributeString writes one TYPE=value of a subject, escaped as pkix
// escapes it.
func attributeString(atv pkix.AttributeTypeAndValue) string {
	if _, ok := atv.Value.(string); ok {
		for name, oid := range map[string]asn1.ObjectIdentifier{"DC": oidDC, "UID": oidUID} {
			if atv.Type.Equal(oid) {
				cn := pkix.RDNSequence{{{Type: oidCN, Value: atv.Value}}}.String()
				return name + strings.TrimPrefix(cn, "CN")
			}
		}
	}
	return pkix.RDNSequence{{atv}}.String()
}

// plainAddr gives an address as its IP (IPv4-mapped IPv6 as plain IPv4)
// and port.
func plainAddr(a *net.TCPAddr) (string, string) {
	if ip, ok := netip.AddrFromSlice(a.IP); ok {
		return ip.Unmap().WithZone(a.Zone).String(), strconv.Itoa(a.Port)
	}
	return a.IP.String(), strconv.Itoa(a.Port)
}

func peerString(nc net.Conn) string {
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		ip, port := plainAddr(ta)
		return net.JoinHostPort(ip, port)
	}
	if cred, ok := framework.PeerCredentials(nc); ok {
		return "pid " + strconv.FormatInt(int64(cred.PID), 10) + " uid " + strconv.FormatUint(uint64(cred.UID), 10)
	}
	return nc.RemoteAddr().String()
}
