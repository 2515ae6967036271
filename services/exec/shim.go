package exec

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Go starts a child with fork and exec and runs no code of ours in
// between, so what must be set in the child itself before its program
// runs (umask, nice, resource limits, and LISTEN_PID, which must be the
// child's own pid) is set by a shim: superd re-executes itself under the
// name shimName, the shim applies the settings and executes the program in
// the same process. Children that need none of it are started directly.

// shimName is argv[0] of the shim: any binary that links this package
// becomes the shim when started under it.
const shimName = "superd-exec-shim"

func init() {
	if len(os.Args) > 0 && os.Args[0] == shimName {
		runShim(os.Args[1:])
	}
}

// setup is what the shim does before exec.
type setup struct {
	umask     int  // -1: leave it
	nice      *int // nil: leave it
	rlimits   []rlimit
	listenPID bool // set LISTEN_PID to the child's own pid
}

type rlimit struct {
	name     string
	resource int
	value    uint64
}

func (s *setup) needed() bool {
	return s.umask >= 0 || s.nice != nil || len(s.rlimits) > 0 || s.listenPID
}

// encode writes the settings as the shim's first argument:
// "umask=18,nice=5,rlimit=7:256,listen_pid".
func (s *setup) encode() string {
	var parts []string
	if s.umask >= 0 {
		parts = append(parts, "umask="+strconv.Itoa(s.umask))
	}
	if s.nice != nil {
		parts = append(parts, "nice="+strconv.Itoa(*s.nice))
	}
	for _, r := range s.rlimits {
		parts = append(parts, fmt.Sprintf("rlimit=%d:%d", r.resource, r.value))
	}
	if s.listenPID {
		parts = append(parts, "listen_pid")
	}
	return strings.Join(parts, ",")
}

// runShim is the shim: args are the settings, the program, then its argv.
// It never returns; a failure is written to stderr (the child's fd 2) and
// exits 127, as a shell does for a program it cannot run.
func runShim(args []string) {
	// nice is a property of the thread on Linux: set it on the thread
	// that calls execve, which becomes the program's only thread.
	runtime.LockOSThread()
	fail := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "superd exec: "+format+"\n", a...)
		os.Exit(127)
	}
	if len(args) < 3 {
		fail("shim started without a program")
	}
	env := os.Environ()
	for _, part := range strings.Split(args[0], ",") {
		name, value, _ := strings.Cut(part, "=")
		switch name {
		case "":
		case "umask":
			n, _ := strconv.Atoi(value)
			syscall.Umask(n)
		case "nice":
			n, _ := strconv.Atoi(value)
			if err := unix.Setpriority(unix.PRIO_PROCESS, 0, n); err != nil {
				fail("nice %d: %v", n, err)
			}
		case "rlimit":
			res, v, _ := strings.Cut(value, ":")
			r, _ := strconv.Atoi(res)
			n, _ := strconv.ParseUint(v, 10, 64)
			lim := unix.Rlimit{Cur: n, Max: n}
			if err := unix.Setrlimit(r, &lim); err != nil {
				fail("resource limit %d = %d: %v", r, n, err)
			}
		case "listen_pid":
			env = append(env, "LISTEN_PID="+strconv.Itoa(os.Getpid()))
		default:
			fail("unknown setting %q", part)
		}
	}
	err := syscall.Exec(args[1], args[2:], env)
	fail("cannot run %s: %v", args[1], err)
}
