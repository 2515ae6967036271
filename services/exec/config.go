// Package exec runs a program per connection, as inetd, xinetd, ucspi-tcp's
// tcpserver and systemd's socket units do (SPEC section 9).
//
// Name: exec.
//
//	service "exec" "finger" {
//	  command = ["/usr/sbin/in.fingerd", "-w"]
//	  user    = "nobody"
//	  endpoint "tcp" { address = "127.0.0.1:7079" }
//	}
//
// In nowait mode (the default) every connection gets its own child, whose
// fd 0 and fd 1 are the connection: the socket itself for tcp and unix
// endpoints (superd copies nothing), or one end of a socket pair that
// superd relays to and from a TLS connection. In wait mode (wait = true)
// superd does not accept: it hands the listening socket to one child at a
// time (fd 0 and 1, or fd 3 with LISTEN_FDS under listen_fds = true).
//
// Every child runs in its own session with a clean environment holding the
// connection's facts (TCPREMOTEIP, REMOTE_ADDR, ...), is reaped the moment
// it exits, and is logged and counted. A draining service sends its
// children stop_signal, and SIGKILL when shutdown_timeout runs out; a
// relayed connection ended by idle_timeout does the same to its child on
// its own (stop_signal, then SIGKILL after shutdown_timeout).
//
// It runs on Linux only (pidfds, waitid, SCM_CREDENTIALS, TCP_INFO); on
// other systems New refuses with that reason, and every other factory
// runs.
package exec

import (
	"math/big"

	"github.com/superd-dev/superd/framework"
)

// DefaultPath is the child's PATH unless env sets one (systemd's default).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Exit results of superd_exec_exits_total.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
	ResultSignal  = "signal"
)

func init() {
	framework.Register(framework.Spec{
		Name:        "exec",
		Description: "runs a program per connection (inetd style): its stdin and stdout are the connection",
		Config:      Config{Dir: "/", Stderr: StderrLog, StopSignal: "SIGTERM"},
		New:         framework.Typed(New),
		Serves:      framework.Streams | framework.Datagrams, // udp in wait mode only (CheckEndpoint)
	})
}

// Config is the configuration of an exec service.
type Config struct {
	Command    []string              `hcl:"command" doc:"the program and its arguments; the program is an absolute path or found in PATH at validate"`
	User       string                `hcl:"user,optional" doc:"run the program as this user (name or number; superd must run as root)"`
	Group      string                `hcl:"group,optional" doc:"its group (default: the user's primary group)"`
	Groups     []string              `hcl:"groups,optional" doc:"its supplementary groups (default: none)"`
	Dir        framework.Path        `hcl:"dir,optional" doc:"its working directory"`
	Env        map[string]string     `hcl:"env,optional" doc:"variables added to its clean environment (not one superd sets itself: PROTO, TCPREMOTEIP, ...)"`
	PassEnv    []string              `hcl:"pass_env,optional" doc:"variables copied from superd's environment when set (not one superd sets itself)"`
	Umask      string                `hcl:"umask,optional" doc:"its umask, in octal such as \"0022\" (default: superd's)"`
	Nice       *int                  `hcl:"nice,optional" min:"-20" max:"19" doc:"its nice value, -20 to 19 (default: superd's)"`
	Rlimits    map[string]*big.Float `hcl:"rlimits,block" doc:"block of resource limits: as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, sigpending, stack (soft and hard)"`
	Stderr     string                `hcl:"stderr,optional" doc:"its fd 2: \"log\" (each line logged with service and pid), \"discard\" or \"inherit\" (superd's own stderr)"`
	StopSignal string                `hcl:"stop_signal,optional" doc:"sent to its process group when the service drains, or when idle_timeout ends a relayed connection (SIGKILL follows after shutdown_timeout)"`
	Wait       bool                  `hcl:"wait,optional" doc:"wait mode: one child at a time receives the listening socket instead of a connection"`
	ListenFDs  bool                  `hcl:"listen_fds,optional" doc:"in wait mode, pass the socket as fd 3 with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES (systemd style) instead of fd 0 and 1"`
}

// Values of the stderr attribute.
const (
	StderrLog     = "log"
	StderrDiscard = "discard"
	StderrInherit = "inherit"
)
