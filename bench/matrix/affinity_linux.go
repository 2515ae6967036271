package main

import (
	"fmt"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// startOn starts cmd confined to the CPUs listed (none: wherever the kernel
// likes). A child inherits the CPU affinity of the thread that forks it, so
// the fork happens on a thread of its own, confined first; the thread ends
// with its goroutine, and the matrix's other threads are not confined. The
// child is confined from its first instruction, so a Go server sizes
// GOMAXPROCS to those CPUs.
func startOn(cmd *exec.Cmd, cpus []int) error {
	if len(cpus) == 0 {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends a locked thread whose goroutine
		// exits, so the confined thread is not reused.
		runtime.LockOSThread()
		var set unix.CPUSet
		for _, c := range cpus {
			set.Set(c)
		}
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("confining to CPUs %v: %w", cpus, err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}
