package config

import (
	"path/filepath"
	"testing"
)

// TestBlock: a block decodes into its struct (unset attributes keep their
// zero value, paths resolve against the file's folder), and a missing
// block leaves the pointer nil.
func TestBlock(t *testing.T) {
	dir := writeFiles(t, map[string]string{"superd.hcl": `service "testneeds" "e" {
  target = "x"
  opts {
    name   = "n"
    verify = true
    file   = "f.pem"
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
	cfg := f.Service("e").FactoryConfig.(*needsConfig)
	if o := cfg.Opts; o == nil || o.Name != "n" || !o.Verify || string(o.File) != filepath.Join(dir, "f.pem") {
		t.Errorf("opts = %+v", o)
	}
	if cfg := f.Service("none").FactoryConfig.(*needsConfig); cfg.Opts != nil || cfg.Target != "x" {
		t.Errorf("without the block: %+v", cfg)
	}
}
