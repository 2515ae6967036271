package endpoint

import (
	"bytes"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Quiesce readies a tcp or tls listener that shares its port with other
// processes (reuse_port) for closing: from now on the kernel gives it no
// new connection, while those already queued, and handshakes already
// under way, stay for the caller to accept before it closes the listener.
// It does nothing to other listeners, or where the kernel moves a closing
// listener's connections itself.
//
// Why: the kernel spreads the connections of a SO_REUSEPORT group over its
// listeners by a hash of each connection's addresses and ports, and
// closing a listener resets (RST) what is in its accept queue and its
// half-open handshakes, although another listener of the group would have
// served them. Accepting what is queued before closing (the supervisor's
// sweep) narrows that window but cannot shut it: connections keep arriving
// until the very close. Measured on Linux 6.18, with two listeners, four
// clients connecting in a loop, and one listener closed 30 times after
// accepting all it had queued: 7 to 21 connections reset per run, some as
// an ECONNRESET from connect(2) itself. The ways out:
//
//   - net.ipv4.tcp_migrate_req = 1 (Linux 5.14): the kernel moves a closing
//     listener's connections to another listener of its group. It is the
//     operator's to set (per network namespace); when it is set, Quiesce
//     does nothing.
//   - an eBPF SO_ATTACH_REUSEPORT_EBPF program steering connections away
//     from a closing listener: it is shared by the whole group, so every
//     process in it (other superd, other versions) would have to agree on
//     it, and loading it needs privileges. Not done.
//   - what Quiesce does otherwise: a classic BPF socket filter on the
//     listener that drops every pure SYN (a new connection asking in),
//     and nothing else. A client whose SYN the group hashed here gets no
//     answer and sends its SYN again after its retransmission timeout
//     (1 s on Linux); by then this listener has left the group and
//     another one answers. Handshakes already under way complete (their
//     ACKs pass) and queue for the sweep. Cost: a client arriving during
//     the sweep waits about a second; none is reset. Measured the same
//     way: no reset in any run. (A filter on a listener is copied to the
//     connections accepted after it: they never receive a pure SYN of
//     their own, so it drops nothing of theirs.)
//
// Linux refuses socket filters on MPTCP sockets (EOPNOTSUPP), and Go
// listens with MPTCP by default (Go 1.24); so listenTCP makes a
// reuse_port listener plain TCP.
func Quiesce(ln net.Listener) error {
	var sc syscall.Conn
	switch l := ln.(type) {
	case *net.TCPListener:
		sc = l
	case *tcpListener:
		sc = l.TCPListener
	default:
		return nil
	}
	if migratesOnClose() {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: uint16(len(dropSYN)), Filter: &dropSYN[0]})
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_ATTACH_FILTER", serr)
}

// dropSYN is the filter Quiesce attaches. A TCP socket's filter sees the
// segment from its TCP header on: byte 13 holds the flags. A pure SYN
// (SYN without ACK) is dropped (0 bytes kept), anything else is kept whole.
var dropSYN = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 13},                  // A = flags
	{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0x12},               // A &= SYN|ACK
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x02, Jt: 0, Jf: 1}, // SYN alone?
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},                                 // drop
	{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},                        // keep
}

// migratesOnClose reports whether the kernel moves a closing listener's
// connections to another listener of its SO_REUSEPORT group
// (net.ipv4.tcp_migrate_req, Linux 5.14).
func migratesOnClose() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return err == nil && bytes.Equal(bytes.TrimSpace(b), []byte("1"))
}
