package config

import (
	"errors"
	"math/big"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// boundsConfig is testbounds' configuration: every field type the decoder
// knows, with constraints in tags and in Validate.
type boundsConfig struct {
	Timeout framework.Duration    `hcl:"timeout,optional" min:"1s" max:"1h"`
	File    framework.Path        `hcl:"file,optional"`
	Ratio   float64               `hcl:"ratio,optional" min:"0" max:"1"`
	Level   *int                  `hcl:"level,optional" min:"-3" max:"3"`
	Count   uint16                `hcl:"count,optional"`
	Limits  map[string]*big.Float `hcl:"limits,block"`
	Low     int                   `hcl:"low,optional"`
	High    int                   `hcl:"high,optional"`
}

// Validate: low below high, and low and high only together.
func (c *boundsConfig) Validate(set framework.IsSet) error {
	var errs []error
	if set(&c.Low) != set(&c.High) {
		errs = append(errs, framework.Errorf(&c.High, "low and high go together"))
	}
	if c.Low > c.High {
		errs = append(errs, framework.Errorf(&c.Low, "low is above high"), framework.Errorf(&c.High, "high is below low"))
	}
	return errors.Join(errs...)
}

func init() {
	framework.Register(framework.Spec{
		Name:        "testbounds",
		Description: "A test factory for typed configurations.",
		Config:      boundsConfig{Timeout: framework.Duration(5 * time.Second), Ratio: 0.5},
		New: framework.Typed(func(*framework.Env, *boundsConfig) (framework.Factory, error) {
			return framework.ForProtocol(func() framework.Protocol { return nil }), nil
		}),
	})
}

func TestTypedConfig(t *testing.T) {
	dir := t.TempDir()
	f, err := Parse([]byte(`service "testbounds" "b" {
  timeout = "1m30s"
  file    = "data/x"
  ratio   = 0.25
  level   = -2
  count   = "7"
  limits {
    a = 1
    b = 18446744073709551615
  }
  endpoint "tcp" { address = ":0" }
}
service "testbounds" "defaults" {
  level = null
  endpoint "tcp" { address = ":1" }
}
`), filepath.Join(dir, "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	c := f.Service("b").FactoryConfig.(*boundsConfig)
	if c.Timeout != framework.Duration(90*time.Second) || string(c.File) != filepath.Join(dir, "data/x") ||
		c.Ratio != 0.25 || c.Level == nil || *c.Level != -2 || c.Count != 7 {
		t.Errorf("decoded %+v", c)
	}
	if u, acc := c.Limits["b"].Uint64(); len(c.Limits) != 2 || u != 1<<64-1 || acc != big.Exact {
		t.Errorf("limits %v", c.Limits)
	}
	want := &boundsConfig{Timeout: framework.Duration(5 * time.Second), Ratio: 0.5}
	if d := f.Service("defaults").FactoryConfig; !reflect.DeepEqual(d, want) {
		t.Errorf("defaults %+v, want %+v", d, want)
	}
	if f.Service("b").Fingerprint == f.Service("defaults").Fingerprint {
		t.Error("two configurations, one fingerprint")
	}

	var listed []string
	spec, _ := framework.Lookup("testbounds")
	for _, a := range spec.Attributes() {
		listed = append(listed, a.Name+" "+a.Type.FriendlyName())
	}
	if got := strings.Join(listed, ", "); got != "timeout string, file string, ratio number, level number, count number, limits map of number, low number, high number" {
		t.Errorf("attributes: %s", got)
	}
	if d := spec.Attributes()[0].Default; d.AsString() != "5s" {
		t.Errorf("timeout's default %#v", d)
	}
}

func TestTypedConfigInvalid(t *testing.T) {
	tests := []struct {
		name, body string
		want       []wantDiag
	}{
		{"duration", `timeout = "soon"`, []wantDiag{{"2,3-19", `Invalid value for "timeout"`, `"soon" is not a duration`}}},
		{"duration too long", `timeout = "9999999999h"`, []wantDiag{{"2,3-26", `Invalid value for "timeout"`, `"9999999999h" is too long: a duration is at most 2562047h47m16.854775807s.`}}},
		{"duration below min", `timeout = "10ms"`, []wantDiag{{"2,3-19", `Invalid value for "timeout"`, `timeout must be at least 1s, not "10ms".`}}},
		{"duration above max", `timeout = "2h"`, []wantDiag{{"2,3-17", `Invalid value for "timeout"`, `at most 1h`}}},
		{"number above max", `ratio = 1.5`, []wantDiag{{"2,3-14", `Invalid value for "ratio"`, "ratio must be a number from 0 to 1, not 1.5."}}},
		{"fraction", `level = 1.5`, []wantDiag{{"2,3-14", `Invalid value for "level"`, "level must be a whole number from -3 to 3, not 1.5."}}},
		{"out of range for the type", `count = 70000`, []wantDiag{{"2,3-16", `Invalid value for "count"`, ""}}},
		{"wrong type in a map block", "limits {\n    a = \"x\"\n  }", []wantDiag{{"3,9-12", "Incorrect attribute value type", "a number is required"}}},
		{"Validate, about an unset attribute", `low = -1`, []wantDiag{{"1,1-25", `Invalid value for "high"`, "low and high go together."}}},
		{"Validate, joined errors", "low = 5\n  high = 2", []wantDiag{
			{"2,3-10", `Invalid value for "low"`, "low is above high."},
			{"3,3-11", `Invalid value for "high"`, "high is below low."},
		}},
		// An attribute that cannot be decoded hides nothing else.
		{"every mistake at once", "ratio = 1.5\n  low = 5\n  high = 2", []wantDiag{
			{"2,3-14", `Invalid value for "ratio"`, ""},
			{"3,3-10", `Invalid value for "low"`, "low is above high."},
			{"4,3-11", `Invalid value for "high"`, "high is below low."},
		}},
		// What Validate says about an attribute that failed is left out:
		// it may only follow from its default (high is 0 here).
		{"nothing said of what failed", "low = 5\n  high = \"x\"", []wantDiag{
			{"2,3-10", `Invalid value for "low"`, "low is above high."},
			{"3,10-13", "Incorrect attribute value type", ""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "superd.hcl")
			_, err := Parse([]byte("service \"testbounds\" \"b\" {\n  "+tt.body+"\n  endpoint \"tcp\" { address = \":0\" }\n}\n"), path)
			if err == nil {
				t.Fatal("accepted")
			}
			out := diagText(t, err)
			if n := strings.Count(out, path+":"); n != len(tt.want) {
				t.Errorf("%d diagnostics, want %d:\n%s", n, len(tt.want), out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, path+":"+w.pos+": "+w.summary) || !strings.Contains(out, w.detail) {
					t.Errorf("no %s %q %q in:\n%s", w.pos, w.summary, w.detail, out)
				}
			}
		})
	}
}

// TestRegisterBadTags: a mistake in a configuration's tags is a program
// error, caught when the factory registers.
func TestRegisterBadTags(t *testing.T) {
	bad := map[string]any{
		"bad name": struct {
			X string `hcl:"Bad"`
		}{},
		"duplicate": struct {
			A, B string `hcl:"a,optional"`
		}{},
		"unknown kind": struct {
			X string `hcl:"x,sometimes"`
		}{},
		"bound on string": struct {
			X string `hcl:"x,optional" min:"1"`
		}{},
		"bad bound": struct {
			X int `hcl:"x,optional" min:"one"`
		}{},
		"block of string": struct {
			X string `hcl:"x,block"`
		}{},
		"not a struct": "x",
	}
	for name, cfg := range bad {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("registered")
				}
			}()
			framework.Register(framework.Spec{Name: "testbadtags", Config: cfg,
				New: func(*framework.Env, any) (framework.Factory, error) { return nil, nil }})
		})
	}
}
