package supervisor

import (
	"errors"
	"net"
	"time"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/metrics"
)

// logRejection writes a refused connection to the access log; c is the
// stream after its PROXY header, if any (peer: the client it names). t is
// the connection's record when it has one, whose peer credentials are
// used; without it they are read from c, which must still be open.
func (s *service) logRejection(c net.Conn, b *binding, reason string, t *tracked) {
	if !s.cfg.AccessLog {
		return
	}
	e := accesslog.Entry{
		Service: s.cfg.Name, Factory: s.cfg.Factory, Endpoint: b.ep.Label,
		Peer: plainPeer(c.RemoteAddr()), Reason: reason, Rejected: true,
	}
	if proxy, ok := proxyOf(c); ok {
		e.Proxy = plainPeer(proxy)
	}
	cred, ok := framework.PeerCred{}, false
	if t != nil {
		cred, ok = t.cred, t.hasCred
	} else {
		cred, ok = framework.PeerCredentials(c)
	}
	setPeerCred(&e, cred, ok)
	s.alog.Load().Log(e)
}

// logEnd writes a connection that ended, after d, to the access log; nc
// is the stream after superd's layers (TLS), for its facts, and t its
// record.
func (s *service) logEnd(nc net.Conn, t *tracked, d time.Duration, reason error, in, out int64, pid int, exit string) {
	e := accesslog.Entry{
		Service: s.cfg.Name, Factory: s.cfg.Factory, Endpoint: t.b.ep.Label,
		Peer: plainPeer(nc.RemoteAddr()), Duration: d,
		BytesIn: in, BytesOut: out, Reason: endReason(reason), PID: pid, Exit: exit,
	}
	if proxy, ok := proxyOf(nc); ok {
		e.Proxy = plainPeer(proxy)
	}
	if st, ok := framework.TLSState(nc); ok {
		e.TLSVersion = framework.TLSVersionName(st.Version)
		e.SNI = st.ServerName
	}
	setPeerCred(&e, t.cred, t.hasCred)
	s.alog.Load().Log(e)
}

// setPeerCred gives e a unix peer's credentials, if ok.
func setPeerCred(e *accesslog.Entry, cred framework.PeerCred, ok bool) {
	if ok {
		e.HasPeerCred, e.PeerUID, e.PeerGID, e.PeerPID = true, cred.UID, cred.GID, cred.PID
	}
}

// endReason names why a connection ended, as the access log says it.
func endReason(reason error) string {
	switch {
	case reason == nil || framework.IsClean(reason):
		return "clean"
	case errors.Is(reason, framework.ErrIdleTimeout):
		return metrics.DropIdleTimeout
	case errors.Is(reason, framework.ErrSlowConsumer):
		return metrics.DropSlowConsumer
	case errors.Is(reason, framework.ErrShutdownTimeout):
		return metrics.DropShutdownTimeout
	case errors.Is(reason, framework.ErrUpstream):
		return metrics.DropUpstream
	case errors.Is(reason, framework.ErrConnectionAborted):
		return "aborted"
	}
	return "lost"
}
