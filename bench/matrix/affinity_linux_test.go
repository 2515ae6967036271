package main

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStartOnConfinesTheChild: the child reports the one CPU it was given,
// and the matrix itself stays free to run anywhere.
func TestStartOnConfinesTheChild(t *testing.T) {
	var before unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	cpu := -1
	for i := range 1024 {
		if before.IsSet(i) {
			cpu = i // the last CPU we may use: a confinement shows
		}
	}
	cmd := exec.Command("grep", "^Cpus_allowed_list:", "/proc/self/status")
	var out strings.Builder
	cmd.Stdout = &out
	if err := startOn(cmd, []int{cpu}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(strings.TrimPrefix(out.String(), "Cpus_allowed_list:")); got != strconv.Itoa(cpu) {
		t.Errorf("child's CPUs %q, want %d", got, cpu)
	}
	for range 4 { // the matrix's threads stay unconfined
		var after unix.CPUSet
		if err := unix.SchedGetaffinity(0, &after); err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Fatalf("the matrix's own CPU set changed from %v to %v CPUs", before.Count(), after.Count())
		}
	}
}
