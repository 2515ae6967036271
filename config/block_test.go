package config

import (
	"path/filepath"
	"testing"

	"github.com/zclconf/go-cty/cty"
)

// TestObjectBlock: an object-typed block attribute decodes to an object
// (unset attributes null), its attributes' ranges are kept, and
// Config.Block reads it with the usual methods.
func TestObjectBlock(t *testing.T) {
	dir := writeFiles(t, map[string]string{"superd.hcl": `service "testneeds" "e" {
  target = "x"
  opts {
    name   = "n"
    verify = true
  }
  endpoint "tcp" { address = "127.0.0.1:0" }
}
service "testneeds" "none" {
  target = "x"
  endpoint "tcp" { address = "127.0.0.1:0" }
}
`})
	f, err := Load(filepath.Join(dir, "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.Service("e").FactoryConfig
	want := cty.ObjectVal(map[string]cty.Value{
		"name": cty.StringVal("n"), "verify": cty.True, "file": cty.NullVal(cty.String),
	})
	if got := cfg.Values["opts"]; !got.RawEquals(want) {
		t.Errorf("opts = %#v, want %#v", got, want)
	}
	for name, line := range map[string]int{"opts": 3, "opts.name": 4, "opts.verify": 5} {
		if r, ok := cfg.Ranges[name]; !ok || r.Start.Line != line {
			t.Errorf("Ranges[%q] = %v, want line %d", name, r, line)
		}
	}
	if _, ok := cfg.Ranges["opts.file"]; ok {
		t.Error("a range for opts.file, which is not set")
	}
	b := cfg.Block("opts")
	if b == nil {
		t.Fatal("Block(opts) is nil")
	}
	if b.String("name") != "n" || !b.Bool("verify") || b.String("file") != "" || b.Path("file") != "" {
		t.Errorf("Block(opts): name %q verify %v file %q", b.String("name"), b.Bool("verify"), b.String("file"))
	}
	if !b.IsSet("name") || b.IsSet("file") {
		t.Errorf("Block(opts): IsSet(name) %v IsSet(file) %v", b.IsSet("name"), b.IsSet("file"))
	}
	if e := b.Errorf("file", "x"); e.Error() != "opts.file: x" {
		t.Errorf("Block(opts).Errorf: %q", e)
	}
	if f.Service("none").FactoryConfig.Block("opts") != nil {
		t.Error("Block(opts) is not nil without the block")
	}
}
