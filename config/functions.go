package config

import (
	"os"
	"path/filepath"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"

	"github.com/superd-dev/superd/internal/fsutil"
)

// MaxFunctionFileSize is the largest file file() reads.
const MaxFunctionFileSize = 16 << 20

// evalContext returns the context expressions of the file are evaluated in:
// no variables, and the functions env and file.
func evalContext(dir string) *hcl.EvalContext {
	return &hcl.EvalContext{
		Functions: map[string]function.Function{
			"env":  envFunc,
			"file": fileFunc(dir),
		},
	}
}

// envFunc is env("NAME") (an unset variable is an error) and
// env("NAME", "DEFAULT").
var envFunc = function.New(&function.Spec{
	Description: "Returns the value of an environment variable, or the default when it is unset.",
	Params: []function.Parameter{
		{Name: "name", Type: cty.String},
	},
	VarParam: &function.Parameter{Name: "default", Type: cty.String},
	Type: func(args []cty.Value) (cty.Type, error) {
		if len(args) > 2 {
			return cty.NilType, function.NewArgErrorf(2, "env takes a variable name and at most one default value")
		}
		return cty.String, nil
	},
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		name := args[0].AsString()
		if name == "" {
			return cty.NilVal, function.NewArgErrorf(0, "the variable name is empty")
		}
		v, ok := os.LookupEnv(name)
		if !ok {
			if len(args) == 2 {
				return args[1], nil
			}
			return cty.NilVal, function.NewArgErrorf(0, "the environment variable %s is not set; set it, or give a default as env(%q, \"DEFAULT\")", name, name)
		}
		if !utf8.ValidString(v) {
			return cty.NilVal, function.NewArgErrorf(0, "the environment variable %s is not valid UTF-8", name)
		}
		return cty.StringVal(v), nil
	},
})

// fileFunc is file("PATH"): the contents of a file, relative paths resolved
// against dir.
func fileFunc(dir string) function.Function {
	return function.New(&function.Spec{
		Description: "Returns the contents of a file (UTF-8 text); relative paths resolve against the configuration file's folder.",
		Params: []function.Parameter{
			{Name: "path", Type: cty.String},
		},
		Type: function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			path := resolvePath(dir, args[0].AsString())
			data, err := fsutil.ReadRegularFile(path, MaxFunctionFileSize)
			if err != nil {
				return cty.NilVal, function.NewArgError(0, err)
			}
			if !utf8.Valid(data) {
				return cty.NilVal, function.NewArgErrorf(0, "%s is not UTF-8 text", path)
			}
			return cty.StringVal(string(data)), nil
		},
	})
}

// resolvePath returns p, joined to dir when relative.
func resolvePath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(dir, p)
}
