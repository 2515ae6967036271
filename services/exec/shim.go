//go:build linux

package exec

import (
	"encoding/hex"
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
//
// The shim starts with superd's privileges and takes on the program's
// user, group and supplementary groups itself, last: a negative nice or a
// hard limit above superd's can only be set before they are dropped (as
// inetd and systemd do). It enters the working directory after that, as
// the user, as a child started directly does: a directory the user may
// not enter is refused rather than entered with superd's privileges.

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
	// cred is the program's user, group and groups, taken on after the
	// rest (nil: superd's own).
	cred *syscall.Credential
	// dir is the working directory, entered once cred is taken on.
	dir string
	// report is the shim's descriptor of the pipe it says why it failed
	// on (-1: none, stderr then): close-on-exec once the program runs, so
	// superd reads either the reason or, at the program's exec, the end.
	report int
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
// "report=3,umask=18,nice=5,rlimit=7:256,listen_pid,gid=65534,groups=4.0,uid=65534,dir=2f7372762f6674"
// (groups left out: superd's kept; dir in hex, since a path may hold
// commas).
func (s *setup) encode() string {
	var parts []string
	if s.report >= 0 { // first: whatever fails after it is reported there
		parts = append(parts, "report="+strconv.Itoa(s.report))
	}
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
	if c := s.cred; c != nil {
		parts = append(parts, "gid="+strconv.FormatUint(uint64(c.Gid), 10))
		if !c.NoSetGroups {
			gs := make([]string, len(c.Groups))
			for i, g := range c.Groups {
				gs[i] = strconv.FormatUint(uint64(g), 10)
			}
			parts = append(parts, "groups="+strings.Join(gs, "."))
		}
		parts = append(parts, "uid="+strconv.FormatUint(uint64(c.Uid), 10))
	}
	if s.dir != "" {
		parts = append(parts, "dir="+hex.EncodeToString([]byte(s.dir)))
	}
	return strings.Join(parts, ",")
}

// runShim is the shim: args are the settings, the program, then its argv.
// It never returns; a failure is written to the report pipe (or, without
// one, to stderr, the child's fd 2) and exits 127, as a shell does for a
// program it cannot run.
func runShim(args []string) {
	// nice is a property of the thread on Linux: set it on the thread
	// that calls execve, which becomes the program's only thread.
	runtime.LockOSThread()
	report := os.Stderr
	fail := func(format string, a ...any) {
		if report == os.Stderr {
			format = "superd exec: " + format + "\n"
		}
		fmt.Fprintf(report, format, a...)
		os.Exit(127)
	}
	if len(args) < 3 {
		fail("shim started without a program")
	}
	env := os.Environ()
	var nproc *unix.Rlimit // see below
	uid, gid := -1, -1
	var groups []int
	setGroups := false
	dir := ""
	id := func(s string) int {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			fail("bad id %q", s)
		}
		return int(n)
	}
	for _, part := range strings.Split(args[0], ",") {
		name, value, _ := strings.Cut(part, "=")
		switch name {
		case "":
		case "report":
			fd, err := strconv.Atoi(value)
			if err != nil || fd < 3 {
				fail("bad report descriptor %q", value)
			}
			report = os.NewFile(uintptr(fd), "report")
			unix.CloseOnExec(fd) // the program never sees it
		case "umask":
			n, _ := strconv.Atoi(value)
			syscall.Umask(n)
		case "nice":
			n, _ := strconv.Atoi(value)
			if err := unix.Setpriority(unix.PRIO_PROCESS, 0, n); err != nil {
				fail("nice %d: %v", n, err)
			}
			autogroupNice(n)
		case "rlimit":
			res, v, _ := strings.Cut(value, ":")
			r, _ := strconv.Atoi(res)
			n, _ := strconv.ParseUint(v, 10, 64)
			lim := unix.Rlimit{Cur: n, Max: n}
			if r == unix.RLIMIT_NPROC {
				// Set once the user is taken on: setuid marks the
				// shim as over a limit it already holds when the
				// user's processes, the shim's own threads
				// included, pass it, and execve then fails
				// (EAGAIN), so a small nproc ("may not fork")
				// could never run. Only a hard limit above
				// superd's is raised now, while that is allowed.
				var cur unix.Rlimit
				if unix.Getrlimit(r, &cur) == nil && cur.Max != unix.RLIM_INFINITY && n > cur.Max {
					if err := unix.Setrlimit(r, &lim); err != nil {
						fail("resource limit %s = %d: %v", rlimitName(r), n, err)
					}
				}
				nproc = &lim
				continue
			}
			if err := unix.Setrlimit(r, &lim); err != nil {
				fail("resource limit %s = %d: %v", rlimitName(r), n, err)
			}
		case "listen_pid":
			env = append(env, "LISTEN_PID="+strconv.Itoa(os.Getpid()))
		case "uid":
			uid = id(value)
		case "gid":
			gid = id(value)
		case "groups":
			setGroups = true
			if value != "" {
				for _, g := range strings.Split(value, ".") {
					groups = append(groups, id(g))
				}
			}
		case "dir":
			b, err := hex.DecodeString(value)
			if err != nil {
				fail("bad directory %q", value)
			}
			dir = string(b)
		default:
			fail("unknown setting %q", part)
		}
	}
	// The user last, in the order that leaves nothing of root behind:
	// supplementary groups, group, user.
	if setGroups {
		if err := syscall.Setgroups(groups); err != nil {
			fail("setgroups %v: %v", groups, err)
		}
	}
	if gid >= 0 {
		if err := syscall.Setgid(gid); err != nil {
			fail("setgid %d: %v", gid, err)
		}
	}
	if uid >= 0 {
		if err := syscall.Setuid(uid); err != nil {
			fail("setuid %d: %v", uid, err)
		}
	}
	if nproc != nil {
		if err := unix.Setrlimit(unix.RLIMIT_NPROC, nproc); err != nil {
			fail("resource limit %s = %d: %v", rlimitName(unix.RLIMIT_NPROC), nproc.Cur, err)
		}
	}
	if dir != "" {
		if err := syscall.Chdir(dir); err != nil {
			fail("cannot enter the working directory %s: %v", dir, err)
		}
	}
	err := syscall.Exec(args[1], args[2:], env)
	fail("cannot run %s: %v", args[1], err)
}

// rlimitName is the name of resource r in the rlimits block, so that a
// limit the shim cannot set is reported as the file names it (nofile, not
// the kernel's 7).
func rlimitName(r int) string {
	for name, res := range rlimits {
		if res == r {
			return name
		}
	}
	return strconv.Itoa(r)
}

// autogroupNice gives the shim's scheduler autogroup the nice n too. With
// autogroups (CONFIG_SCHED_AUTOGROUP, kernel.sched_autogroup_enabled = 1)
// the child's setsid made it an autogroup of its own, and a nice weighs
// only against the tasks of the same autogroup (sched(7)): alone in it,
// the child would compete with superd and every other process as the
// group does, at nice 0, whatever its own nice. A new autogroup starts at
// nice 0, so 0 is not written (the kernel's rate limit below is shared by
// the whole system). Nor is anything written unless the shim leads its
// session: only then is the autogroup the child's own, not superd's.
//
// A write that fails leaves the child with its own nice, as on a kernel
// without autogroups, and never fails the start (a program that started
// before this was written must still start): no /proc/self/autogroup (no
// autogroups), EAGAIN (a writer without CAP_SYS_ADMIN may write once per
// 100 ms, system-wide, so a burst of connections meets it), EPERM (a
// negative value needs CAP_SYS_NICE or RLIMIT_NICE, which setpriority
// does not need where superd's own nice is already below n).
func autogroupNice(n int) {
	if n == 0 {
		return
	}
	if sid, err := unix.Getsid(0); err != nil || sid != os.Getpid() {
		return
	}
	fd, err := unix.Open("/proc/self/autogroup", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	unix.Write(fd, []byte(strconv.Itoa(n)))
	unix.Close(fd)
}
