package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// examples/superd.service and superd.socket pass `systemd-analyze verify` (with the binary
// path pointing at the binary under test). systemd before 253 does not know
// Type=notify-reload and ReloadSignal=; there, those two lines are the only
// complaints allowed.
func TestUnitFileVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd)")
	}
	out, err := exec.Command(analyze, "--version").Output()
	if err != nil {
		t.Skipf("systemd-analyze --version: %v", err)
	}
	version := 0
	if m := regexp.MustCompile(`systemd (\d+)`).FindSubmatch(out); m != nil {
		version, _ = strconv.Atoi(string(m[1]))
	}
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"superd.service", "superd.socket"} {
		unit, err := os.ReadFile(filepath.Join("../../examples", name))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		text := strings.ReplaceAll(string(unit), "/usr/local/bin/superd", superdBin)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
	}
	cmd := exec.Command(analyze, append([]string{"verify", "--man=no"}, paths...)...)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, res)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(res)), "\n") {
		if line == "" {
			continue
		}
		old := version > 0 && version < 253 &&
			(strings.Contains(line, "notify-reload") || strings.Contains(line, "ReloadSignal"))
		if !old {
			t.Errorf("systemd-analyze verify (systemd %d) complains: %s", version, line)
		}
	}
}

// A unix socket that examples/superd.socket holds for superd survives
// superd's stop: systemd removes a service's RuntimeDirectory= when it
// stops, unless RuntimeDirectoryPreserve= says otherwise, and the socket
// file in it would go (the socket unit still listens, but no client finds
// it, so a restart refuses the unix clients).
func TestUnitFilesKeepActivatedUnixSockets(t *testing.T) {
	values := func(name, key string) []string {
		text, err := os.ReadFile(filepath.Join("../../examples", name))
		if err != nil {
			t.Fatal(err)
		}
		var vs []string
		for _, line := range strings.Split(string(text), "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && k == key {
				vs = append(vs, strings.TrimSpace(v))
			}
		}
		return vs
	}
	var paths []string
	for _, key := range []string{"ListenStream", "ListenDatagram", "ListenSequentialPacket"} {
		for _, v := range values("superd.socket", key) {
			if strings.HasPrefix(v, "/") {
				paths = append(paths, v)
			}
		}
	}
	preserve := values("superd.service", "RuntimeDirectoryPreserve")
	kept := len(preserve) > 0 && (preserve[len(preserve)-1] == "yes" || preserve[len(preserve)-1] == "true")
	for _, dirs := range values("superd.service", "RuntimeDirectory") {
		for _, dir := range strings.Fields(dirs) {
			for _, p := range paths {
				if strings.HasPrefix(p, "/run/"+dir+"/") && !kept {
					t.Errorf("superd.socket listens on %s, in superd.service's RuntimeDirectory=%s, which systemd removes when superd stops (RuntimeDirectoryPreserve=%v)", p, dir, preserve)
				}
			}
		}
	}
	if len(paths) == 0 {
		t.Log("superd.socket has no unix socket")
	}
}
