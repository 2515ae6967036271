package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestHelpShowsFlagDefaults: `superd CMD -h` shows, after the usage, the
// command's flags with the defaults the README states (-config
// superd.hcl, -log-format text, -log-level info, status's -address
// 127.0.0.1:9464), so that help alone answers what a flag left out means.
func TestHelpShowsFlagDefaults(t *testing.T) {
	for cmd, want := range map[string][]string{
		"run":      {`-config FILE`, `(default "superd.hcl")`, `-log-format`, `(default "text")`, `-log-level`, `(default "info")`},
		"validate": {`-config FILE`, `(default "superd.hcl")`},
		"status":   {`-address`, `(default "127.0.0.1:9464")`, `-json`, `-connections`},
	} {
		var out, errb bytes.Buffer
		if code := superd([]string{cmd, "-h"}, &out, &errb); code != exitOK {
			t.Errorf("%s -h: exit %d, want 0", cmd, code)
		}
		help := errb.String()
		if !strings.HasPrefix(help, usage) {
			t.Errorf("%s -h does not start with the usage:\n%s", cmd, help)
		}
		for _, w := range want {
			if !strings.Contains(help, w) {
				t.Errorf("%s -h does not show %q:\n%s", cmd, w, help)
			}
		}
	}
}
