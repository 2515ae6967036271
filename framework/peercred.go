package framework

import "net"

// PeerCred is the identity of the process at the other end of a unix
// socket, as the kernel recorded it when that process connected
// (SO_PEERCRED): it cannot be forged by the peer.
type PeerCred struct {
	UID, GID uint32
	PID      int32
}

// PeerCredentials returns the peer's credentials of a unix socket
// connection (a net.Conn, or a Transport superd gave a protocol); ok is
// false for other connections.
//
//	func (p *myProto) ConnectionMade(t framework.Transport) {
//		if cred, ok := framework.PeerCredentials(t); ok && cred.UID != 0 { ... }
//	}
func PeerCredentials(c any) (cred PeerCred, ok bool) {
	if t, ok := c.(peerCredentialer); ok {
		return t.PeerCredentials()
	}
	uc, isUnix := c.(*net.UnixConn)
	if !isUnix {
		return PeerCred{}, false
	}
	return peerCred(uc)
}

// peerCredentialer is implemented by superd's transports, which know the
// socket beneath them.
type peerCredentialer interface {
	PeerCredentials() (PeerCred, bool)
}
