// Command superd is the superserver: it runs the services of an HCL file
// (`superd run`), checks such a file (`superd validate`), and lists the
// factories it knows (`superd factories`).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"

	"github.com/zclconf/go-cty/cty"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/textwidth"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // invalid configuration, a service that cannot start, a forced exit
	exitUsage   = 2
)

// version is set at build time with -ldflags "-X main.version=..."; else the
// module version is used.
var version = ""

const usage = `usage:
  superd run      [-config FILE] [-log-format text|json] [-log-level debug|info|warn|error]
  superd validate [-config FILE]
  superd factories
  superd status   [-address HOST:PORT] [-json] [-connections]
  superd version
`

func main() {
	os.Exit(superd(os.Args[1:], os.Stdout, os.Stderr))
}

func superd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		return cmdRun(rest, stderr)
	case "validate":
		return cmdValidate(rest, stdout, stderr)
	case "factories":
		if len(rest) == 1 && isHelp(rest[0]) {
			fmt.Fprint(stderr, usage)
			return exitOK
		}
		if len(rest) > 0 {
			fmt.Fprintf(stderr, "superd factories: unexpected argument %q\n%s", rest[0], usage)
			return exitUsage
		}
		printFactories(stdout)
		return exitOK
	case "status":
		return cmdStatus(rest, stdout, stderr)
	case "version":
		if len(rest) == 1 && isHelp(rest[0]) {
			fmt.Fprint(stderr, usage)
			return exitOK
		}
		if len(rest) > 0 {
			fmt.Fprintf(stderr, "superd version: unexpected argument %q\n%s", rest[0], usage)
			return exitUsage
		}
		fmt.Fprintf(stdout, "superd %s %s\n", buildVersion(), runtime.Version())
		return exitOK
	case "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		if isHelp(cmd) {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		fmt.Fprintf(stderr, "superd: unknown command %q\n%s", cmd, usage)
		return exitUsage
	}
}

// isHelp reports whether arg asks for help, as the flag package takes it.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "--h"
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// newFlagSet returns a flag set that reports errors to stderr and returns
// them (exit 2), with the config flag every command shares.
func newFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("superd "+name, flag.ContinueOnError)
	setUsage(fs, stderr)
	cfg := fs.String("config", "superd.hcl", "configuration `FILE`")
	return fs, cfg
}

// setUsage makes -h (and a flag error) print the usage, then the
// command's flags with their defaults.
func setUsage(fs *flag.FlagSet, stderr io.Writer) {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "%s\nflags of %s:\n", usage, fs.Name())
		fs.PrintDefaults()
	}
}

func parseFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n%s", fs.Name(), fs.Arg(0), usage)
		return exitUsage
	}
	if f := fs.Lookup("config"); f != nil && f.Value.String() == "" {
		fmt.Fprintf(fs.Output(), "%s: -config names no file\n%s", fs.Name(), usage)
		return exitUsage
	}
	return -1
}

// noConfigHelp follows the message that the configuration file does not
// exist.
const noConfigHelp = `Name the file with -config FILE (the default is superd.hcl in the working
folder). To try superd, examples.hcl in its source tree runs every built-in
service on loopback: make run (which builds bin/superd, then runs superd
run -config examples.hcl).
`

// loadConfig loads path, printing diagnostics to stderr on failure.
func loadConfig(path string, stderr io.Writer) (*config.File, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		var de *config.DiagnosticsError
		if errors.As(err, &de) {
			de.Write(stderr)
		} else if errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stderr, "superd: %v.\n%s", err, noConfigHelp)
		} else {
			fmt.Fprintf(stderr, "superd: %v\n", err)
		}
		return nil, false
	}
	return cfg, true
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs, path := newFlagSet("validate", stderr)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitFailure
	}
	endpoints := 0
	for _, s := range cfg.Services {
		endpoints += len(s.Endpoints)
	}
	fmt.Fprintf(stdout, "%s: valid: %s, %s\n", *path, count(len(cfg.Services), "service"), count(endpoints, "endpoint"))
	return exitOK
}

func printFactories(w io.Writer) {
	for _, s := range framework.Specs() {
		fmt.Fprintf(w, "%s\n    %s\n", s.Name, s.Description)
		printAttributes(w, s.Attributes())
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "Every service also accepts:")
	printAttributes(w, config.CommonAttributes)
	fmt.Fprintln(w, `    endpoint "tcp"|"tls"|"unix"|"udp" { ... } blocks, at least one (see the README)`)
}

// count is "1 service", "2 services".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// printAttributes lists attributes in columns: name, type, default and
// description, each column as wide as its widest entry (at least 22, 20
// and 22 terminal columns, so that most factories line up with the others).
func printAttributes(w io.Writer, attrs []framework.Attribute) {
	rows := make([][]string, 0, len(attrs))
	for _, a := range attrs {
		typ := a.Type.FriendlyName()
		switch {
		case a.TypeName != "":
			typ = a.TypeName
		case a.Type == cty.DynamicPseudoType:
			typ = "any"
		case a.Type.IsObjectType():
			names := make([]string, 0, len(a.Type.AttributeTypes()))
			for n := range a.Type.AttributeTypes() {
				names = append(names, n)
			}
			sort.Strings(names)
			typ = "block {" + strings.Join(names, ", ") + "}"
		case a.Block:
			typ = "block of " + a.Type.ElementType().FriendlyName() + "s"
		}
		rows = append(rows, []string{a.Name, typ, attrDefault(a), a.Description})
	}
	widths := []int{22, 20, 22}
	for _, r := range rows {
		for i := range widths {
			widths[i] = max(widths[i], textwidth.String(r[i]))
		}
	}
	for _, r := range rows {
		line := "   "
		for i, c := range r {
			line += " " + c
			if i < len(widths) {
				line += strings.Repeat(" ", widths[i]-textwidth.String(c))
			}
		}
		fmt.Fprintln(w, line)
	}
}

func attrDefault(a framework.Attribute) string {
	switch {
	case a.Required:
		return "(required)"
	case a.Default == cty.NilVal || a.Default.IsNull():
		return "(none)"
	case a.Default.Type() == cty.String:
		return fmt.Sprintf("default %q", a.Default.AsString())
	case a.Default.Type() == cty.Number:
		return "default " + a.Default.AsBigFloat().Text('f', -1)
	case a.Default.Type() == cty.Bool:
		return fmt.Sprintf("default %t", a.Default.True())
	default:
		return "default " + strings.TrimSpace(a.Default.GoString())
	}
}

// newLogger builds the slog logger of `run`.
func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %q is not one of debug, info, warn, error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format: %q is not text or json", format)
}
