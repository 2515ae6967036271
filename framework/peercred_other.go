//go:build !linux

package framework

import "net"

// peerCred: SO_PEERCRED is Linux's; elsewhere no credentials are read.
func peerCred(*net.UnixConn) (PeerCred, bool) { return PeerCred{}, false }
