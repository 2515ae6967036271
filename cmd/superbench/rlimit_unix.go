//go:build unix

package main

import (
	"fmt"
	"io"
	"syscall"
)

// raiseNoFile raises the soft limit of open files to the hard limit (each
// connection is a file) and reports it on w.
func raiseNoFile(w io.Writer) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintf(w, "superbench: RLIMIT_NOFILE: %v\n", err)
		return
	}
	soft := rl.Cur
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			fmt.Fprintf(w, "superbench: RLIMIT_NOFILE: raising soft limit %d to %d: %v\n", soft, rl.Max, err)
			return
		}
	}
	fmt.Fprintf(w, "superbench: RLIMIT_NOFILE soft %d (was %d), hard %d\n", rl.Cur, soft, rl.Max)
}
