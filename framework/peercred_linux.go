package framework

import (
	"net"

	"golang.org/x/sys/unix"
)

func peerCred(uc *net.UnixConn) (PeerCred, bool) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return PeerCred{}, false
	}
	var uerr error
	var u *unix.Ucred
	if err := raw.Control(func(fd uintptr) {
		u, uerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || uerr != nil {
		return PeerCred{}, false
	}
	return PeerCred{UID: u.Uid, GID: u.Gid, PID: u.Pid}, true
}
