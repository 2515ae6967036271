//go:build !linux

package engine

// inqRequest is the ioctl that tells the bytes waiting to be read:
// FIONREAD, _IOR('f', 127, int) on macOS and the BSDs (neither syscall nor
// x/sys/unix names it there).
const inqRequest = 0x4004667f

// tcpState returns -1: only Linux tells a socket's TCP state here.
func tcpState(uintptr) int { return -1 }

// unacknowledged returns -1: not told here (the tests that ask need
// Linux's idle poller too, and skip before).
func unacknowledged(uintptr) int { return -1 }

// acknowledged returns -1: not told here.
func acknowledged(uintptr) int64 { return -1 }
