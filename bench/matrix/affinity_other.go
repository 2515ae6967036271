//go:build !linux

package main

import (
	"fmt"
	"os/exec"
	"runtime"
)

// startOn starts cmd; confining it to CPUs is implemented for Linux only.
func startOn(cmd *exec.Cmd, cpus []int) error {
	if len(cpus) > 0 {
		return fmt.Errorf("confining a process to CPUs %v is not supported on %s", cpus, runtime.GOOS)
	}
	return cmd.Start()
}
