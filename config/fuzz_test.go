package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary text to Parse: it must never panic, and must
// either return a usable File or a *DiagnosticsError whose every diagnostic
// has a position. The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validConfig))
	dir := f.TempDir()
	path := filepath.Join(dir, "superd.hcl")
	f.Fuzz(func(t *testing.T, src []byte) {
		file, err := Parse(src, path)
		if err != nil {
			var de *DiagnosticsError
			if !errors.As(err, &de) {
				t.Fatalf("error is %T, want *DiagnosticsError", err)
			}
			if !de.Diags.HasErrors() {
				t.Fatal("DiagnosticsError without an error")
			}
			for _, d := range de.Diags {
				if d.Subject == nil || d.Subject.Filename != path || d.Subject.Start.Line < 1 {
					t.Fatalf("diagnostic without a position: %#v", d)
				}
			}
			var b strings.Builder
			if err := de.Write(&b); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(b.String(), path+":") {
				t.Fatalf("output does not start with the position: %q", b.String())
			}
			return
		}
		if file == nil {
			t.Fatal("nil File and nil error")
		}
		for _, s := range file.Services {
			if s.Spec == nil || s.Fingerprint == "" || len(s.Endpoints) == 0 {
				t.Fatalf("incomplete service %+v", s)
			}
			for _, ep := range s.Endpoints {
				if ep.Label == "" {
					t.Fatalf("endpoint without label: %+v", ep)
				}
			}
		}
	})
}
