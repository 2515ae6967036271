package framework

import (
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"reflect"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/gocty"
)

// Env is what superd hands a factory when it builds one for a service.
// Everything a service needs from superd comes in through it, so a service
// package keeps no globals and never logs through the global slog.
type Env struct {
	// Service is the service's name (the second block label).
	Service string
	// Log is the service's logger: every record carries service=NAME and
	// factory=FACTORY.
	Log *slog.Logger
	// Metrics adds the factory's own families, named superd_<factory>_...
	// Their series carry a service label with the service's name (add no
	// label of that name yourself) and are removed with the service.
	// Register in StartFactory, through RegisterCollector: building a
	// factory must have no side effects.
	Metrics prometheus.Registerer
	// Cluster reports whether the file has a top-level cluster block (a
	// factory that spans nodes needs one; it gets the running node from
	// package cluster in StartFactory).
	Cluster bool
	// RunAs is the identity superd serves as when a top-level user makes
	// it switch to one once every factory has started (StartFactory runs
	// before, with the privileges superd started with); nil when superd
	// keeps its own.
	RunAs *Identity
}

// Identity is a user, group and supplementary groups of a process.
type Identity struct {
	UID, GID int
	Groups   []int
}

// RegisterCollector registers c through reg (Env.Metrics) and returns the
// collector to count with: c, or the equal collector that an earlier
// instance of the same service registered. A reload that replaces a
// service starts the new instance before the old one has stopped, and both
// count into the same series (chat users leaving the old instance while
// others join the new one).
func RegisterCollector[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if old, ok := are.ExistingCollector.(C); ok {
			return old, nil
		}
	}
	return c, err
}

// Duration is a configuration attribute written as a Go duration string
// ("10s", "1m30s").
type Duration time.Duration

// String formats d as time.Duration does.
func (d Duration) String() string { return time.Duration(d).String() }

// Path is a configuration attribute naming a file: a relative path is
// resolved against the configuration file's folder when it is decoded.
type Path string

// Typed adapts a constructor that takes the factory's configuration as *C
// (C being the type of Spec.Config) to Spec.New.
func Typed[C any](newFactory func(env *Env, cfg *C) (Factory, error)) func(*Env, any) (Factory, error) {
	return func(env *Env, cfg any) (Factory, error) { return newFactory(env, cfg.(*C)) }
}

// IsSet reports whether the file set the attribute of a configuration
// field, given by its address (&cfg.Quote).
type IsSet func(field any) bool

// Validator is implemented by configurations with a check their tags
// cannot state, such as one attribute against another. Validate runs after
// decoding, once every tag's constraint holds, and before New.
type Validator interface {
	Validate(set IsSet) error
}

// FieldError is a configuration error about one attribute, named by the
// address of its field (&cfg.Quote, or &cfg.Block.Name inside a block);
// superd reports it at that attribute's line and column.
type FieldError struct {
	Field any
	Err   error
}

func (e *FieldError) Error() string { return e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Errorf returns a *FieldError about the attribute of field, a pointer to a
// field of the configuration New or Validate received, or a MapEntry.
func Errorf(field any, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// MapEntry names one attribute of a map block (a field map[string]T tagged
// hcl:"NAME,block") for Errorf, which is then reported at that attribute
// rather than at the block: Map is the address of the field, Key the
// attribute's name.
type MapEntry struct {
	Map any
	Key string
}

// Attribute describes one attribute of a factory's configuration, derived
// from a field of its Config struct. The field's tags say everything:
//
//	hcl:"NAME"           a required attribute (gohcl's tag)
//	hcl:"NAME,optional"  an optional one: unset (or null), it keeps the value Config gives it
//	hcl:"NAME,block"     an optional block, NAME { ... }: a pointer to a struct
//	                     (its own tagged fields) or a map (any attributes)
//	doc:"..."            the description `superd factories` prints
//	min:"N", max:"N"     bounds of a number or a Duration ("1s")
//	contents:"true"      on a Path: the factory reads the file when it is
//	                     built, so a reload that finds other contents
//	                     replaces the service (as a changed value would)
//
// Field types: string, Path, Duration, bool, the integer types (a
// fractional value is an error), float64, *int (unset: nil), []string,
// map[string]string, cty.Value (any value) and anything else gocty
// converts.
type Attribute struct {
	Name string
	Type cty.Type // cty.String, cty.Number, cty.List(cty.String), ...; a Duration or Path is a cty.String
	// TypeName is what a user is told the type is where Type undersells
	// it: "duration" and "path" for a Duration and a Path ("": Type's
	// own name).
	TypeName    string
	Default     cty.Value // cty.NilVal: none
	Required    bool
	Description string
	// Block makes the attribute a block: Type is then an object type (a
	// struct) or a map type.
	Block bool
	// Min and Max bound a number or a Duration, as written in the tags (""
	// when unbounded).
	Min, Max string
	// Contents: a Path whose file the factory reads when it is built; its
	// contents are part of what a reload compares.
	Contents bool
	// Index is the field's index in the struct; Nested are the attributes
	// of a block decoded into a struct.
	Index  int
	Nested []Attribute
}

var (
	durationType = reflect.TypeOf(Duration(0))
	pathType     = reflect.TypeOf(Path(""))
	ctyValueType = reflect.TypeOf(cty.Value{})
	bigFloatType = reflect.TypeOf((*big.Float)(nil))
)

// isInteger reports whether t is an integer type (or a pointer to one).
func isInteger(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return t != durationType
	}
	return false
}

// attributes derives the attributes of a configuration struct value; it
// panics on a program error (a bad tag or an unsupported field type).
func attributes(v reflect.Value) []Attribute {
	t := v.Type()
	if t.Kind() != reflect.Struct {
		panic(fmt.Sprintf("configuration %s is not a struct", t))
	}
	var out []Attribute
	seen := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag, ok := f.Tag.Lookup("hcl")
		if !ok {
			continue
		}
		name, kind, _ := strings.Cut(tag, ",")
		if !validName.MatchString(name) || seen[name] || !f.IsExported() {
			panic(fmt.Sprintf("%s.%s: bad attribute name %q", t, f.Name, name))
		}
		seen[name] = true
		a := Attribute{Name: name, Description: f.Tag.Get("doc"), Index: i, Min: f.Tag.Get("min"), Max: f.Tag.Get("max")}
		fv := v.Field(i)
		switch kind {
		case "":
			a.Required = true
		case "optional":
		case "block":
			a.Block = true
		default:
			panic(fmt.Sprintf("%s.%s: unknown hcl tag kind %q", t, f.Name, kind))
		}
		switch {
		case a.Block && f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct:
			a.Nested = attributes(reflect.New(f.Type.Elem()).Elem())
			types := map[string]cty.Type{}
			for _, n := range a.Nested {
				types[n.Name] = n.Type
			}
			a.Type = cty.Object(types)
		case a.Block && f.Type.Kind() == reflect.Map:
			a.Type = cty.Map(impliedType(f.Type.Elem(), t, f.Name))
		case a.Block:
			panic(fmt.Sprintf("%s.%s: a block is a pointer to a struct or a map", t, f.Name))
		default:
			a.Type = impliedType(f.Type, t, f.Name)
			switch f.Type {
			case durationType:
				a.TypeName = "duration"
			case pathType:
				a.TypeName = "path"
			}
			if !a.Required {
				a.Default = defaultOf(fv, a.Type)
			}
		}
		switch c := f.Tag.Get("contents"); {
		case c == "true" && f.Type == pathType:
			a.Contents = true
		case c != "":
			panic(fmt.Sprintf("%s.%s: contents:%q is only for a Path, as contents:\"true\"", t, f.Name, c))
		}
		checkBound(a.Min, f.Type, t, f.Name)
		checkBound(a.Max, f.Type, t, f.Name)
		out = append(out, a)
	}
	return out
}

func impliedType(ft reflect.Type, t reflect.Type, field string) cty.Type {
	switch ft {
	case durationType, pathType:
		return cty.String
	case ctyValueType:
		return cty.DynamicPseudoType
	case bigFloatType:
		return cty.Number
	}
	ty, err := gocty.ImpliedType(reflect.New(ft).Interface())
	if err != nil {
		panic(fmt.Sprintf("%s.%s: %v", t, field, err))
	}
	return ty
}

// defaultOf is the default an optional field holds in Config: none for a
// nil pointer, slice or map, an empty string or a zero Duration.
func defaultOf(v reflect.Value, ty cty.Type) cty.Value {
	switch {
	case v.Type() == durationType:
		if v.Int() == 0 {
			return cty.NilVal
		}
		return cty.StringVal(Duration(v.Int()).String())
	case v.Type() == ctyValueType:
		return v.Interface().(cty.Value)
	case v.Kind() == reflect.Pointer, v.Kind() == reflect.Slice, v.Kind() == reflect.Map:
		if v.IsNil() {
			return cty.NilVal
		}
	case v.Kind() == reflect.String && v.String() == "":
		return cty.NilVal
	}
	cv, err := gocty.ToCtyValue(v.Interface(), ty)
	if err != nil {
		panic(fmt.Sprintf("default %v: %v", v.Interface(), err))
	}
	return cv
}

func checkBound(s string, ft reflect.Type, t reflect.Type, field string) {
	if s == "" {
		return
	}
	var err error
	switch {
	case ft == durationType:
		_, err = time.ParseDuration(s)
	case isInteger(ft), ft.Kind() == reflect.Float64:
		_, _, err = big.ParseFloat(s, 10, 64, big.ToNearestEven)
	default:
		err = errors.New("min and max bound numbers and durations")
	}
	if err != nil {
		panic(fmt.Sprintf("%s.%s: bound %q: %v", t, field, s, err))
	}
}
