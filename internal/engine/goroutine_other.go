//go:build !amd64 && !arm64

// This file owns curG where the engine has no assembly for it: the
// goroutine's number, read from the first line of its stack trace. Correct,
// but it costs microseconds where the assembly costs a nanosecond.

package engine

import "runtime"

// curG identifies the calling goroutine (see goroutine.go).
func curG() uintptr {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	var id uintptr
	for _, b := range buf[len("goroutine "):n] {
		if b < '0' || b > '9' {
			break
		}
		id = id*10 + uintptr(b-'0')
	}
	return id
}
