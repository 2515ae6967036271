package engine

import "golang.org/x/sys/unix"

// inqRequest is the ioctl that tells the bytes waiting to be read.
const inqRequest = unix.SIOCINQ

// tcpState returns the TCP state of the socket fd (tcpi_state), or -1
// where the system does not tell it.
func tcpState(fd uintptr) int {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return -1
	}
	return int(info.State)
}

// unacknowledged returns the bytes of the socket fd that its peer has not
// acknowledged yet (SIOCOUTQ), or -1.
func unacknowledged(fd uintptr) int {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
	if err != nil {
		return -1
	}
	return n
}

// acknowledged returns the bytes of the socket fd that its peer has
// acknowledged (tcpi_bytes_acked), or -1.
func acknowledged(fd uintptr) int64 {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return -1
	}
	return int64(info.Bytes_acked)
}
