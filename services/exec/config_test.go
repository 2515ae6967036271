//go:build linux

package exec

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

// parseExec decodes one exec service block (named "x") whose attributes are
// body, through the real configuration loader, into superd.hcl in a fresh
// folder; the service's endpoint is a tcp one unless body has its own.
func parseExec(t *testing.T, body string) (*config.File, error) {
	t.Helper()
	return servicetest.Block{Factory: "exec", Name: "x", Body: "  " + body}.File(t)
}

// TestValidateDiagnostics: every bad case of SPEC section 9 is reported
// by validate (config.Parse calls the factory's New) with the position of
// the attribute at fault, as FILE:LINE,COL-COL, its summary and its cause.
func TestValidateDiagnostics(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, body string
		pos        string // LINE,COL-COL
		summary    string
		detail     string
	}{
		{"empty command", `command = []`, "2,3-15", `Invalid value for "command"`, "command needs at least the program"},
		{"empty program", `command = [""]`, "2,3-17", `Invalid value for "command"`, "command needs at least the program"},
		{"missing program", `command = ["/nonexistent/prog"]`, "2,3-34", `Invalid value for "command"`,
			`the program "/nonexistent/prog" cannot be used: no such file or directory`},
		{"program not in PATH", `command = ["no-such-program-xyz"]`, "2,3-36", `Invalid value for "command"`,
			`the program "no-such-program-xyz" is not in PATH`},
		{"relative program", `command = ["./prog"]`, "2,3-23", `Invalid value for "command"`,
			`must be an absolute path or a name looked up in PATH`},
		{"program not executable", `command = ["` + notExec + `"]`, "2,3-" + strconv.Itoa(17+len(notExec)), `Invalid value for "command"`,
			"is not executable (mode -rw-r--r--)"},
		{"program is a directory", `command = ["/tmp"]`, "2,3-21", `Invalid value for "command"`, `"/tmp" is not a regular file`},
		{"NUL in the program", `command = ["/bin/c\u0000at"]`, "2,3-31", `Invalid value for "command"`, "an argument holds a NUL character"},
		{"unknown user", "command = [\"/bin/cat\"]\n  user = \"no-such-user-xyz\"", "3,3-28", `Invalid value for "user"`,
			`there is no user "no-such-user-xyz" on this system`},
		// (uid_t)-1 and (gid_t)-1 mean "unchanged" to the system: no
		// program can run as them (setgroups refuses, at every start).
		{"user (uid_t)-1", "command = [\"/bin/cat\"]\n  user = \"4294967295\"", "3,3-22", `Invalid value for "user"`,
			`there is no user "4294967295" on this system (it is (uid_t)-1`},
		{"group (gid_t)-1", "command = [\"/bin/cat\"]\n  user = \"0\"\n  group = \"4294967295\"", "4,3-23", `Invalid value for "group"`,
			`there is no group "4294967295" on this system (it is (gid_t)-1`},
		{"unknown group", "command = [\"/bin/cat\"]\n  user = \"root\"\n  group = \"no-such-group-xyz\"", "4,3-30",
			`Invalid value for "group"`, `there is no group "no-such-group-xyz" on this system`},
		{"unknown supplementary group", "command = [\"/bin/cat\"]\n  user = \"root\"\n  groups = [\"root\", \"no-such-group-xyz\"]",
			"4,3-41", `Invalid value for "groups"`, `there is no group "no-such-group-xyz" on this system`},
		{"group without user", "command = [\"/bin/cat\"]\n  group = \"root\"", "3,3-17", `Invalid value for "group"`, "group needs user as well"},
		{"groups without user", "command = [\"/bin/cat\"]\n  groups = [\"root\"]", "3,3-20", `Invalid value for "groups"`, "groups needs user as well"},
		{"env name starting with a digit", "command = [\"/bin/cat\"]\n  env = { \"1BAD\" = \"x\" }", "3,3-25", `Invalid value for "env"`,
			`"1BAD" is not a valid variable name`},
		{"env name with a dash", "command = [\"/bin/cat\"]\n  env = { \"A-B\" = \"x\" }", "3,3-24", `Invalid value for "env"`,
			`"A-B" is not a valid variable name`},
		{"env name with '='", "command = [\"/bin/cat\"]\n  env = { \"A=B\" = \"x\" }", "3,3-24", `Invalid value for "env"`,
			`"A=B" is not a valid variable name`},
		{"pass_env name", "command = [\"/bin/cat\"]\n  pass_env = [\"A-B\"]", "3,3-21", `Invalid value for "pass_env"`,
			`"A-B" is not a valid variable name`},
		{"env setting a connection fact", "command = [\"/bin/cat\"]\n  env = { PROTO = \"UDP\" }", "3,3-26", `Invalid value for "env"`,
			"PROTO is set by superd for each program (one of the connection's facts, listed in the README under exec); env cannot set it"},
		{"pass_env passing a connection fact", "command = [\"/bin/cat\"]\n  pass_env = [\"TZ\", \"TCPREMOTEIP\"]", "3,3-35", `Invalid value for "pass_env"`,
			"TCPREMOTEIP is set by superd for each program (one of the connection's facts, listed in the README under exec); pass_env cannot pass it"},
		{"unknown rlimit", "command = [\"/bin/cat\"]\n  rlimits {\n    nofiles = 1\n  }", "4,5-16", `Invalid value for "rlimits.nofiles"`,
			`"nofiles" is not a resource limit; known: as, core, cpu,`},
		{"fractional rlimit", "command = [\"/bin/cat\"]\n  rlimits {\n    nofile = 1.5\n  }", "4,5-17", `Invalid value for "rlimits.nofile"`,
			"nofile must be a whole number of at least 0, not 1.5"},
		{"negative rlimit", "command = [\"/bin/cat\"]\n  rlimits {\n    core = -1\n  }", "4,5-14", `Invalid value for "rlimits.core"`,
			"core must be a whole number of at least 0, not -1"},
		{"bad stderr", "command = [\"/bin/cat\"]\n  stderr = \"syslog\"", "3,3-20", `Invalid value for "stderr"`,
			`"syslog" is not one of "log", "discard" or "inherit"`},
		{"unknown stop_signal", "command = [\"/bin/cat\"]\n  stop_signal = \"SIGFOO\"", "3,3-25", `Invalid value for "stop_signal"`,
			`"SIGFOO" is not a signal name`},
		{"stop_signal out of range", "command = [\"/bin/cat\"]\n  stop_signal = \"65\"", "3,3-21", `Invalid value for "stop_signal"`,
			`"65" is not a signal name`},
		{"listen_fds without wait", "command = [\"/bin/cat\"]\n  listen_fds = true", "3,3-20", `Invalid value for "listen_fds"`,
			"only wait mode does: set wait = true as well"},
		{"wait with a tls endpoint", "command = [\"/bin/cat\"]\n  wait = true\n  endpoint \"tls\" {\n    address     = \"127.0.0.1:2\"\n    self_signed = true\n  }",
			"4,12-17", "Endpoint kind not served", `Service "x" cannot use a tls endpoint: exec in wait mode hands the listening socket itself to the program`},
		{"deny in wait mode", "command = [\"/bin/cat\"]\n  wait = true\n  deny = [\"0.0.0.0/0\"]", "4,3-7", "Limit not applied in wait mode",
			`Service "x" hands its listening sockets to its program (wait mode), which takes the connections and datagrams itself: superd sees none of them, so deny would apply to nothing`},
		{"rate_limit_per_ip in wait mode", "command = [\"/bin/cat\"]\n  wait = true\n  rate_limit_per_ip {\n    rate = 1\n  }", "4,3-20",
			"Limit not applied in wait mode", "so rate_limit_per_ip would apply to nothing"},
		{"max_connections_per_ip in wait mode", "command = [\"/bin/cat\"]\n  wait = true\n  max_connections_per_ip = 2", "4,3-25",
			"Limit not applied in wait mode", "so max_connections_per_ip would apply to nothing"},
		// superd accepts nothing in wait mode: max_connections bounds
		// nothing (the program takes as many as it likes at once), and a
		// PROXY header is not read but handed to the program as data.
		{"max_connections in wait mode", "command = [\"/bin/cat\"]\n  wait = true\n  max_connections = 1", "4,3-18",
			"Limit not applied in wait mode", "so max_connections would apply to nothing"},
		{"idle_timeout in wait mode", "command = [\"/bin/cat\"]\n  wait = true\n  idle_timeout = \"10s\"", "4,3-15",
			"Limit not applied in wait mode", "superd holds none of them, so idle_timeout would apply to nothing"},
		{"max_pending_output in wait mode", "command = [\"/bin/cat\"]\n  wait = true\n  max_pending_output = 100000", "4,3-21",
			"Limit not applied in wait mode", "so max_pending_output would apply to nothing"},
		{"proxy_protocol in wait mode", "command = [\"/bin/cat\"]\n  wait = true\n  endpoint \"tcp\" {\n    address = \"127.0.0.1:2\"\n    proxy_protocol {\n      trusted = [\"127.0.0.1/32\"]\n    }\n  }",
			"6,5-19", "PROXY header not read in wait mode", "superd reads no PROXY header, so the program would get it as the first bytes of each connection"},
		{"proxy_protocol on udp in wait mode, said once", "command = [\"/bin/cat\"]\n  wait = true\n  endpoint \"udp\" {\n    address = \"127.0.0.1:2\"\n    proxy_protocol {\n      trusted = [\"127.0.0.1/32\"]\n    }\n  }",
			"6,5-19", "Unsupported block type", `Blocks of type "proxy_protocol" are not expected here`},
		{"umask not octal", "command = [\"/bin/cat\"]\n  umask = \"0999\"", "3,3-17", `Invalid value for "umask"`, `"0999" is not a umask`},
		{"umask too large", "command = [\"/bin/cat\"]\n  umask = \"01777\"", "3,3-18", `Invalid value for "umask"`, `"01777" is not a umask`},
		{"nice too large", "command = [\"/bin/cat\"]\n  nice = 20", "3,3-12", `Invalid value for "nice"`, "nice must be a whole number from -20 to 19"},
		{"fractional nice", "command = [\"/bin/cat\"]\n  nice = 1.5", "3,3-13", `Invalid value for "nice"`, "nice must be a whole number from -20 to 19"},
		{"missing dir", "command = [\"/bin/cat\"]\n  dir = \"/nonexistent\"", "3,3-23", `Invalid value for "dir"`,
			`the working directory "/nonexistent" cannot be used: no such file or directory`},
		{"dir not a directory", "command = [\"/bin/cat\"]\n  dir = \"/bin/sh\"", "3,3-18", `Invalid value for "dir"`, `"/bin/sh" is not a directory`},
		{"missing command", `stderr = "log"`, "1,20-20", "Missing required argument", `The argument "command" is required`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseExec(t, tt.body)
			if err == nil {
				t.Fatal("valid; want a diagnostic")
			}
			var de *config.DiagnosticsError
			if !errors.As(err, &de) {
				t.Fatalf("%T is not a *config.DiagnosticsError: %v", err, err)
			}
			first := strings.SplitN(err.Error(), "\n", 2)[0]
			want := "superd.hcl:" + tt.pos + ": " + tt.summary + "; "
			if i := strings.Index(first, "superd.hcl:"); i < 0 || !strings.HasPrefix(first[i:], want) || !strings.Contains(first, tt.detail) {
				t.Errorf("diagnostic:\n%s\nwant it to start with %q and hold %q", err, want, tt.detail)
			}
			if n := len(de.Diags); n != 1 {
				t.Errorf("%d diagnostics, want 1:\n%s", n, err)
			}
		})
	}
}

// TestValidateReportsEveryMistake: a block with several mistakes gets one
// diagnostic for each, at its own attribute, so the file is fixed in one
// pass (SPEC section 2: validate prints every diagnostic).
func TestValidateReportsEveryMistake(t *testing.T) {
	_, err := parseExec(t, `command     = ["/bin/cat"]
  stop_signal = "SIGFOO"
  stderr      = "file"
  env         = { "1BAD" = "x", "ALSO-BAD" = "y" }
  rlimits { nofle = 3 }
  umask       = "999"
  dir         = "/nonexistent"
  user        = "nosuchuser"
  group       = "nosuchgroup"
  groups      = ["0", "nosuchgroup2"]`)
	var de *config.DiagnosticsError
	if !errors.As(err, &de) {
		t.Fatalf("%v is not a *config.DiagnosticsError", err)
	}
	want := []string{
		`superd.hcl:3,3-25: Invalid value for "stop_signal"; "SIGFOO" is not a signal name`,
		`superd.hcl:4,3-23: Invalid value for "stderr"; "file" is not one of`,
		`superd.hcl:5,3-51: Invalid value for "env"; "1BAD" is not a valid variable name`,
		`superd.hcl:5,3-51: Invalid value for "env"; "ALSO-BAD" is not a valid variable name`,
		`superd.hcl:6,13-22: Invalid value for "rlimits.nofle"; "nofle" is not a resource limit`,
		`superd.hcl:7,3-22: Invalid value for "umask"; "999" is not a umask`,
		`superd.hcl:8,3-31: Invalid value for "dir"; the working directory "/nonexistent" cannot be used`,
		`superd.hcl:9,3-29: Invalid value for "user"; there is no user "nosuchuser"`,
		`superd.hcl:10,3-30: Invalid value for "group"; there is no group "nosuchgroup"`,
		`superd.hcl:11,3-38: Invalid value for "groups"; there is no group "nosuchgroup2"`,
	}
	if len(de.Diags) != len(want) {
		t.Errorf("%d diagnostics, want %d:\n%s", len(de.Diags), len(want), err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("no diagnostic %q in:\n%s", w, err)
		}
	}
}

// TestValidConfig: what a valid block decodes to.
func TestValidConfig(t *testing.T) {
	f, err := parseExec(t, `command     = ["cat", "-u"]
  user        = "root"
  group       = "0"
  groups      = ["root"]
  dir         = "."
  env         = { B = "2", A = "1" }
  pass_env    = ["TZ"]
  umask       = "077"
  nice        = -5
  stderr      = "discard"
  stop_signal = "HUP"
  rlimits {
    nofile = 64
    core   = 0
  }`)
	if err != nil {
		t.Fatal(err)
	}
	svc := f.Service("x")
	fac, err := servicetest.Build(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	x := fac.(*Factory)
	cat, err := exec.LookPath("cat")
	if err != nil {
		t.Skip("no cat in PATH")
	}
	if x.path != cat || !slices.Equal(x.argv, []string{"cat", "-u"}) {
		t.Errorf("program %q argv %q; want %q, [cat -u]", x.path, x.argv, cat)
	}
	if x.dir != f.Dir {
		t.Errorf("dir %q: a relative dir resolves against the file's folder %q", x.dir, f.Dir)
	}
	if x.cred == nil || x.cred.Uid != 0 || x.cred.Gid != 0 || !slices.Equal(x.cred.Groups, []uint32{0}) {
		t.Errorf("credential %+v", x.cred)
	}
	if !slices.Equal(x.env, []string{"A=1", "B=2"}) || !slices.Equal(x.passEnv, []string{"TZ"}) {
		t.Errorf("env %q pass_env %q", x.env, x.passEnv)
	}
	if x.stderr != StderrDiscard || x.stopSignal != syscall.SIGHUP || x.wait || x.listenFDs {
		t.Errorf("stderr %q stop_signal %v wait %v listen_fds %v", x.stderr, x.stopSignal, x.wait, x.listenFDs)
	}
	if got, want := x.setup.encode(), "umask=63,nice=-5,rlimit=4:0,rlimit=7:64"; got != want {
		t.Errorf("shim settings %q, want %q", got, want)
	}

	// Defaults: no user, dir "/", stderr to the log, SIGTERM, no shim.
	f, err = parseExec(t, `command = ["/bin/cat"]`)
	if err != nil {
		t.Fatal(err)
	}
	svc = f.Service("x")
	fac, err = servicetest.Build(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	x = fac.(*Factory)
	if x.cred != nil || x.dir != "/" || x.stderr != StderrLog || x.stopSignal != syscall.SIGTERM || x.setup.needed() {
		t.Errorf("defaults: cred %v dir %q stderr %q stop_signal %v shim needed %v", x.cred, x.dir, x.stderr, x.stopSignal, x.setup.needed())
	}
}
