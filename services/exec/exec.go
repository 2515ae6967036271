//go:build linux

package exec

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	osexec "os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/osuser"
)

// rlimits maps the names of the rlimits block to resources.
var rlimits = map[string]int{
	"as":         unix.RLIMIT_AS,
	"core":       unix.RLIMIT_CORE,
	"cpu":        unix.RLIMIT_CPU,
	"data":       unix.RLIMIT_DATA,
	"fsize":      unix.RLIMIT_FSIZE,
	"locks":      unix.RLIMIT_LOCKS,
	"memlock":    unix.RLIMIT_MEMLOCK,
	"msgqueue":   unix.RLIMIT_MSGQUEUE,
	"nice":       unix.RLIMIT_NICE,
	"nofile":     unix.RLIMIT_NOFILE,
	"nproc":      unix.RLIMIT_NPROC,
	"rss":        unix.RLIMIT_RSS,
	"rtprio":     unix.RLIMIT_RTPRIO,
	"sigpending": unix.RLIMIT_SIGPENDING,
	"stack":      unix.RLIMIT_STACK,
}

func rlimitNames() []string {
	names := make([]string, 0, len(rlimits))
	for n := range rlimits {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Factory is the exec factory of one service.
type Factory struct {
	service string
	log     *slog.Logger
	metrics prometheus.Registerer

	path       string   // the program, resolved
	argv       []string // command as written
	dir        string
	cred       *syscall.Credential // nil: superd's own
	userName   string
	runAs      *framework.Identity // superd's identity once it serves (nil: the one it has)
	env        []string            // env attribute, as NAME=value, sorted
	passEnv    []string
	setup      setup // what the shim applies before exec (umask, nice, rlimits)
	stderr     string
	stopSignal syscall.Signal
	wait       bool
	listenFDs  bool

	// Set by StartFactory.
	procs   prometheus.Gauge
	results map[string]prometheus.Counter
	baseEnv []string
	devNull *os.File
	// stderrLog reads the stderr of every child under stderr = "log".
	stderrLog *stderrLog

	children sync.WaitGroup // every child, until reaped
	spawnLog spawnLog       // connections whose program could not start

	restartsMu sync.Mutex
	restarts   map[string]*restarts // wait mode, by endpoint label
}

var (
	_ framework.Factory         = (*Factory)(nil)
	_ framework.ConnHandler     = (*Factory)(nil)
	_ framework.ListenerHandler = (*Factory)(nil)
	_ framework.EndpointChecker = (*Factory)(nil)
	_ framework.FactoryStarter  = (*Factory)(nil)
	_ framework.FactoryStopper  = (*Factory)(nil)
)

// New builds an exec factory from its configuration: it finds the
// program and checks everything that can be checked before start.
func New(env *framework.Env, cfg *Config) (framework.Factory, error) {
	f := &Factory{
		service:   env.Service,
		log:       env.Log,
		metrics:   env.Metrics,
		argv:      cfg.Command,
		dir:       string(cfg.Dir),
		stderr:    cfg.Stderr,
		wait:      cfg.Wait,
		listenFDs: cfg.ListenFDs,
		runAs:     env.RunAs,
		setup:     setup{umask: -1, nice: cfg.Nice, report: -1},
	}
	// Every mistake is reported, not only the first: validate lists them
	// all, so a file is fixed in one go.
	var errs []error
	switch {
	case len(f.argv) == 0 || f.argv[0] == "":
		errs = append(errs, framework.Errorf(&cfg.Command, "command needs at least the program, such as [\"/bin/cat\"]"))
	case slices.ContainsFunc(f.argv, func(a string) bool { return strings.ContainsRune(a, 0) }):
		errs = append(errs, framework.Errorf(&cfg.Command, "an argument holds a NUL character"))
	default:
		path, err := findProgram(f.argv[0])
		if err != nil {
			errs = append(errs, framework.Errorf(&cfg.Command, "%v", err))
		}
		f.path = path
	}

	if st, err := os.Stat(f.dir); err != nil {
		errs = append(errs, framework.Errorf(&cfg.Dir, "the working directory %q cannot be used: %v", f.dir, unwrapPath(err)))
	} else if !st.IsDir() {
		errs = append(errs, framework.Errorf(&cfg.Dir, "%q is not a directory", f.dir))
	}

	errs = append(errs, f.decodeCredentials(cfg), f.decodeEnv(cfg), f.decodeSetup(cfg))

	switch f.stderr {
	case StderrLog, StderrDiscard, StderrInherit:
	default:
		errs = append(errs, framework.Errorf(&cfg.Stderr, "%q is not one of \"log\", \"discard\" or \"inherit\"", f.stderr))
	}
	if sig, err := parseSignal(cfg.StopSignal); err != nil {
		errs = append(errs, framework.Errorf(&cfg.StopSignal, "%v", err))
	} else {
		f.stopSignal = sig
	}
	if f.listenFDs && !f.wait {
		errs = append(errs, framework.Errorf(&cfg.ListenFDs, "listen_fds passes the listening socket, which only wait mode does: set wait = true as well"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return f, nil
}

// findProgram checks the program: an absolute path must be an executable
// file; a bare name is looked up in superd's PATH.
func findProgram(name string) (string, error) {
	if !strings.Contains(name, "/") {
		p, err := osexec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("the program %q is not in PATH (%s); write its absolute path", name, os.Getenv("PATH"))
		}
		return p, nil
	}
	if !strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("the program %q must be an absolute path or a name looked up in PATH", name)
	}
	st, err := os.Stat(name)
	if err != nil {
		return "", fmt.Errorf("the program %q cannot be used: %v", name, unwrapPath(err))
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("the program %q is not a regular file", name)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("the program %q is not executable (mode %v)", name, st.Mode().Perm())
	}
	return name, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func (f *Factory) decodeCredentials(cfg *Config) error {
	name, groupName, groupNames := cfg.User, cfg.Group, cfg.Groups
	if name == "" {
		switch {
		case groupName != "":
			return framework.Errorf(&cfg.Group, "group needs user as well")
		case len(groupNames) > 0:
			return framework.Errorf(&cfg.Groups, "groups needs user as well")
		}
		return nil
	}
	// user, group and each of groups are looked up apart: every one
	// missing is reported.
	var errs []error
	var uid, gid uint64
	if u, err := osuser.LookupUser(name); err != nil {
		errs = append(errs, framework.Errorf(&cfg.User, "%v", err))
	} else {
		uid, _ = strconv.ParseUint(u.Uid, 10, 32)
		gid, _ = strconv.ParseUint(u.Gid, 10, 32)
	}
	if groupName != "" {
		id, err := osuser.LookupGroup(groupName)
		if err != nil {
			errs = append(errs, framework.Errorf(&cfg.Group, "%v", err))
		}
		gid = uint64(id)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	for _, g := range groupNames {
		id, err := osuser.LookupGroup(g)
		if err != nil {
			errs = append(errs, framework.Errorf(&cfg.Groups, "%v", err))
			continue
		}
		cred.Groups = append(cred.Groups, id)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	f.cred = cred
	f.userName = name
	return nil
}

// superdVars are the variables superd sets in a child's environment
// itself (SPEC section 9: the connection's facts, the service, and wait
// mode's LISTEN_ variables): env and pass_env may not set them, since a
// second value would hide superd's from the program (getenv takes the
// first).
var superdVars = []string{
	"PROTO", "TCPREMOTEIP", "TCPREMOTEPORT", "TCPLOCALIP", "TCPLOCALPORT", "TCPCONNNUM",
	"REMOTE_ADDR", "REMOTE_PORT", "SUPERD_SERVICE",
	"IPCREMOTEEUID", "IPCREMOTEEGID", "IPCREMOTEPID",
	"SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI_SERVERNAME", "SSL_PEER_CERT_SUBJECT",
	"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
}

func (f *Factory) decodeEnv(cfg *Config) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(cfg.Env)) {
		value := cfg.Env[name]
		switch {
		case !envName.MatchString(name):
			errs = append(errs, framework.Errorf(&cfg.Env, "%q is not a valid variable name (letters, digits and _, not starting with a digit)", name))
		case slices.Contains(superdVars, name):
			errs = append(errs, framework.Errorf(&cfg.Env, "%s is set by superd for each program (one of the connection's facts, listed in the README under exec); env cannot set it", name))
		case strings.ContainsRune(value, 0):
			errs = append(errs, framework.Errorf(&cfg.Env, "the value of %s holds a NUL character", name))
		default:
			f.env = append(f.env, name+"="+value)
		}
	}
	for _, name := range cfg.PassEnv {
		switch {
		case !envName.MatchString(name):
			errs = append(errs, framework.Errorf(&cfg.PassEnv, "%q is not a valid variable name (letters, digits and _, not starting with a digit)", name))
		case slices.Contains(superdVars, name):
			errs = append(errs, framework.Errorf(&cfg.PassEnv, "%s is set by superd for each program (one of the connection's facts, listed in the README under exec); pass_env cannot pass it", name))
		default:
			f.passEnv = append(f.passEnv, name)
		}
	}
	return errors.Join(errs...)
}

func (f *Factory) decodeSetup(cfg *Config) error {
	var errs []error
	if s := cfg.Umask; s != "" {
		m, err := strconv.ParseUint(s, 8, 32)
		if err != nil || m > 0o777 {
			errs = append(errs, framework.Errorf(&cfg.Umask, "%q is not a umask: write it in octal, such as \"0022\"", s))
		} else {
			f.setup.umask = int(m)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Rlimits)) {
		res, ok := rlimits[name]
		if !ok {
			errs = append(errs, framework.Errorf(framework.MapEntry{Map: &cfg.Rlimits, Key: name}, "%q is not a resource limit; known: %s", name, strings.Join(rlimitNames(), ", ")))
			continue
		}
		bf := cfg.Rlimits[name]
		n, acc := bf.Uint64()
		if !bf.IsInt() || bf.Sign() < 0 || acc != 0 {
			errs = append(errs, framework.Errorf(framework.MapEntry{Map: &cfg.Rlimits, Key: name}, "%s must be a whole number of at least 0, not %s", name, bf.Text('g', -1)))
			continue
		}
		f.setup.rlimits = append(f.setup.rlimits, rlimit{name: name, resource: res, value: n})
	}
	return errors.Join(errs...)
}

// parseSignal accepts "SIGTERM", "TERM" or a number.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("%q is not a signal name, such as \"SIGTERM\" or \"SIGHUP\"", s)
}

// CheckEndpoint: wait mode hands over a listening socket, which a tls
// endpoint cannot be.
func (f *Factory) CheckEndpoint(kind string) error {
	switch {
	case f.wait && kind != "tcp" && kind != "unix" && kind != "udp":
		return fmt.Errorf("exec in wait mode hands the listening socket itself to the program, so it serves tcp, unix and udp endpoints, not %s", kind)
	case !f.wait && kind == "udp":
		return errors.New("exec serves udp endpoints in wait mode only (set wait = true): a datagram socket has no connections to hand over")
	}
	return nil
}

// BuildProtocol is never used: exec serves connections itself
// (ServeConn).
func (f *Factory) BuildProtocol(net.Addr) framework.Protocol { return nil }

// ServesListeners reports whether the service runs in wait mode.
func (f *Factory) ServesListeners() bool { return f.wait }

// StartFactory checks what can only be checked at start, resolves the
// environment and creates the metric series.
func (f *Factory) StartFactory() error {
	// Programs are started by superd as it serves: after it has dropped
	// privileges, when a top-level user says so.
	uid, gid, as := os.Geteuid(), os.Getegid(), ""
	if f.runAs != nil {
		uid, gid, as = f.runAs.UID, f.runAs.GID, " once it has dropped privileges"
	}
	if f.cred != nil && uid != 0 {
		if int(f.cred.Uid) != uid {
			return fmt.Errorf("user = %q needs superd to run as root (it runs as uid %d%s)", f.userName, uid, as)
		}
		// superd's own user: setting the supplementary groups (setgroups)
		// needs privilege even to change nothing, so the child keeps
		// superd's; another group cannot be set at all.
		if int(f.cred.Gid) != gid || len(f.cred.Groups) > 0 {
			return fmt.Errorf("user = %q with group %d and %d supplementary groups needs superd to run as root (it runs as uid %d, gid %d%s)",
				f.userName, f.cred.Gid, len(f.cred.Groups), uid, gid, as)
		}
		cred := *f.cred
		cred.NoSetGroups = true
		f.cred = &cred
	}
	procs, err := framework.RegisterCollector(f.metrics, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "superd_exec_processes",
		Help: "Programs started by exec services that are running now.",
	}))
	if err != nil {
		return err
	}
	exits, err := framework.RegisterCollector(f.metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "superd_exec_exits_total",
		Help: "Programs started by exec services that have exited, by result (success: status 0; failure: another status; signal: killed by a signal).",
	}, []string{"result"}))
	if err != nil {
		return err
	}
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	f.devNull = devNull
	f.procs = procs
	if f.stderr == StderrLog {
		if f.stderrLog, err = newStderrLog(f.log); err != nil {
			devNull.Close()
			return err
		}
	}
	closeInheritedOnExec()
	defaultSignalsForChildren()
	f.baseEnv = f.buildBaseEnv()
	f.results = map[string]prometheus.Counter{}
	for _, r := range []string{ResultSuccess, ResultFailure, ResultSignal} {
		f.results[r] = exits.WithLabelValues(r)
	}
	return nil
}

// StopFactory waits for every child (the supervisor has already ended
// them, or they have exited), then lets go of what StartFactory opened.
func (f *Factory) StopFactory() error {
	f.children.Wait()
	if f.stderrLog != nil {
		f.stderrLog.close()
	}
	if f.devNull != nil {
		f.devNull.Close()
	}
	return nil
}

// buildBaseEnv is the part of every child's environment that does not
// depend on the connection: PATH, pass_env, env, SUPERD_SERVICE.
func (f *Factory) buildBaseEnv() []string {
	env := []string{"PATH=" + DefaultPath}
	for _, name := range f.passEnv {
		if v, ok := os.LookupEnv(name); ok {
			env = setEnv(env, name, v)
		}
	}
	for _, kv := range f.env {
		name, v, _ := strings.Cut(kv, "=")
		env = setEnv(env, name, v)
	}
	return setEnv(env, "SUPERD_SERVICE", f.service)
}

// setEnv sets name in env, replacing an earlier value.
func setEnv(env []string, name, value string) []string {
	prefix := name + "="
	for i, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			env[i] = prefix + value
			return env
		}
	}
	return append(env, prefix+value)
}
