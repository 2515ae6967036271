//go:build unix

package main

import (
	"fmt"
	"log"
	"os"
	"syscall"
)

// raiseNoFile raises the soft limit of open files to the hard limit (each
// connection is a file) and reports it on stderr.
func raiseNoFile() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		log.Printf("RLIMIT_NOFILE: %v", err)
		return
	}
	soft := rl.Cur
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			log.Printf("RLIMIT_NOFILE: raising %d to %d: %v", soft, rl.Max, err)
			return
		}
	}
	fmt.Fprintf(os.Stderr, "baseline: RLIMIT_NOFILE soft %d (was %d), hard %d\n", rl.Cur, soft, rl.Max)
}
