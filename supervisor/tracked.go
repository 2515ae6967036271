package supervisor

import (
	"net"
	"time"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/engine"
)

// tracked is one connection a service has accepted and not yet released:
// everything its limits, its drain, the status view and the access log
// need of it, in one record on one list (service.conns), so that an idle
// connection costs the supervisor 80 bytes and one small closure (its end
// callback). Its source key (max_connections_per_ip) is not kept: it is
// made again from the peer's address on release (see release). Its
// service is b.svc.
type tracked struct {
	prev, next *tracked // the service's list, under its mu
	c          net.Conn // the accepted socket
	b          *binding
	// Set under the service's mu once the connection is served: by a
	// protocol (fc), or by its factory (handed, then hc once built).
	fc    *engine.Conn
	hc    *framework.HandedConn
	since int64 // when it was served (monoNow)
	// A unix socket's peer, read at accept when the access log or
	// max_connections_per_uid needs it (the socket is closed by the time
	// the access log line is made). It fits in the 80 bytes, so a tcp
	// connection pays nothing for it.
	cred       framework.PeerCred
	hasCred    bool
	uidCounted bool // counted against max_connections_per_uid as cred.UID
	handed     bool // handed to the factory (framework.ConnHandler)
}

// epoch is the origin of monoNow.
var epoch = time.Now()

// monoNow is the monotonic time since the process started, in 8 bytes
// where a time.Time takes 24.
func monoNow() int64 { return int64(time.Since(epoch)) }

// servedFor is how long t has been served.
func (t *tracked) servedFor() time.Duration { return time.Duration(monoNow() - t.since) }

// servedSince is when t was served, as a time.
func (t *tracked) servedSince() time.Time { return epoch.Add(time.Duration(t.since)) }

// trackLocked puts t on the service's list.
func (s *service) trackLocked(t *tracked) {
	t.next = s.conns
	if s.conns != nil {
		s.conns.prev = t
	}
	s.conns = t
}

// untrackLocked takes t off the service's list.
func (s *service) untrackLocked(t *tracked) {
	if t.prev != nil {
		t.prev.next = t.next
	} else if s.conns == t {
		s.conns = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	}
	t.prev, t.next = nil, nil
}

// connEnded is the end callback of a connection served by a protocol
// (engine.Conn.Run's onDone): the metrics, the limits, then the access
// log line, once the connection no longer counts against any limit (a
// client that saw the line may connect again at once), and before a
// drain waiting for it may go on (and close the log).
func (t *tracked) connEnded(reason error) {
	s, fc := t.b.svc, t.fc
	s.ended(t.servedFor(), reason)
	s.unlimit(t, fc.PeerAddr())
	if s.cfg.AccessLog {
		s.logEnd(fc.NetConn(), t, t.servedFor(), reason, fc.BytesIn(), fc.BytesOut(), 0, "")
	}
	s.connWG.Done()
}
