package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runOnce runs the binary with args to its end (at most a minute) and
// returns its exit status and outputs.
func runOnce(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(superdBin, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("superd %s did not exit within a minute\n%s", strings.Join(args, " "), errb.String())
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// TestPortClashMessage: a port another process holds stops the start with
// a message that names the service and the endpoint, says who is in the
// way and how to find it; and the services prepared before it are undone
// without a word about aborting connections, since none was ever open.
func TestPortClashMessage(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().String()
	_, port, _ := net.SplitHostPort(taken)
	path, _ := writeConfig(t, fmt.Sprintf(`
metrics { address = "METRICS" }
service "echo" "first" {
  endpoint "tcp" { address = %q }
}
service "echo" "clash" {
  endpoint "tcp" { address = %q }
}
`, freeAddr(t), taken))
	code, _, stderr := runOnce(t, t.TempDir(), "run", "-config", path)
	if code != 1 {
		t.Fatalf("exit status %d, want 1\n%s", code, stderr)
	}
	for _, want := range []string{
		`service \"clash\"`,
		"endpoint tcp:" + taken,
		"address already in use: another process holds port " + port,
		"ss -ltnp",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "aborted") {
		t.Errorf("a start that served nothing logs aborted connections:\n%s", stderr)
	}
}

// TestNoConfigFile: run and validate without a file name the file they
// looked for (absolute, so it is clear which folder) and say how to give
// one, with no made-up position such as "superd.hcl:1,1-1".
func TestNoConfigFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args      []string
		lookedFor string
	}{
		{[]string{"run"}, filepath.Join(dir, "superd.hcl")},
		{[]string{"validate"}, filepath.Join(dir, "superd.hcl")},
		{[]string{"run", "-config", "conf/mine.hcl"}, filepath.Join(dir, "conf", "mine.hcl")},
	} {
		code, stdout, stderr := runOnce(t, dir, tc.args...)
		if code != 1 || stdout != "" {
			t.Errorf("superd %s: exit status %d, stdout %q; want 1 and nothing", strings.Join(tc.args, " "), code, stdout)
		}
		for _, want := range []string{tc.lookedFor + " does not exist", "-config FILE", "examples.hcl"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("superd %s: stderr lacks %q:\n%s", strings.Join(tc.args, " "), want, stderr)
			}
		}
		if strings.Contains(stderr, ":1,1") {
			t.Errorf("superd %s: stderr shows a position in a file that does not exist:\n%s", strings.Join(tc.args, " "), stderr)
		}
	}
}

// TestNoConfigHelpMatchesMakefile: what the missing-file help says `make
// run` does is what the Makefile's run target does (it once said that make
// run writes certificates, which it does not: examples.hcl's TLS endpoints
// are self_signed).
func TestNoConfigHelpMatchesMakefile(t *testing.T) {
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	var recipe []string
	in := false
	for _, line := range strings.Split(string(makefile), "\n") {
		switch {
		case strings.HasPrefix(line, "run:"):
			in = true
		case in && strings.HasPrefix(line, "\t"):
			recipe = append(recipe, strings.TrimSpace(line))
		case in:
			in = false
		}
	}
	if len(recipe) == 0 {
		t.Fatal("the Makefile has no run target")
	}
	help := strings.Join(strings.Fields(noConfigHelp), " ")
	if !strings.Contains(help, "superd run -config examples.hcl") {
		t.Errorf("the help does not name what make run runs:\n%s", noConfigHelp)
	}
	runs := strings.Join(recipe, "\n")
	if strings.Contains(help, "certificate") && !strings.Contains(runs, "selfsigned") {
		t.Errorf("the help says make run writes certificates; its recipe does not:\n%s\nhelp:\n%s", runs, noConfigHelp)
	}
	if !strings.Contains(runs, "superd run -config examples.hcl") {
		t.Errorf("make run no longer runs superd run -config examples.hcl; update noConfigHelp:\n%s", runs)
	}
}
