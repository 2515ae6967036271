//go:build !linux

package engine

import "syscall"

// inqScratch: TCP_INQ is Linux's (see inq_linux.go).
type inqScratch struct{}

func enableInq(int) bool { return false }

func (r *reader) recvInq(fd int, b []byte) (n, left int, err error) {
	n, err = syscall.Read(fd, b)
	return n, -1, err
}
