package framework

import (
	"fmt"
	"math/big"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/gocty"
)

// Spec describes a factory to the registry: how it is named in the
// configuration, what it is for, which attributes it accepts, and how to
// build it from them.
type Spec struct {
	// Name is the first label of `service "NAME" "..."` blocks.
	Name string
	// Description is one line for `superd factories`.
	Description string
	// Attributes is the factory's own configuration schema.
	Attributes []Attribute
	// New builds a factory for one service from its decoded configuration.
	// It must have no side effects (no files opened, no goroutines started):
	// `superd validate` calls it too. Resources belong in StartFactory.
	// Errors about one attribute should be *AttrError (see Config.Errorf) so
	// the diagnostic points at it.
	New func(cfg *Config) (Factory, error)
	// Serves says which kinds of endpoint the factory serves: Streams
	// (tcp, tls, unix; the default when zero), Datagrams (udp: its
	// factories implement DatagramFactory), or both.
	Serves Serves
	// DatagramGuards puts the factory's udp endpoints under inetd's loop
	// and amplification guards (SPEC section 10): no reply to a source
	// port below 1024, 0, or that of a guarded udp endpoint of this
	// superd, nor to a broadcast, multicast or unspecified address; and
	// rate_limit_per_ip { rate = 10, burst = 20 } unless one is set. The
	// built-in services set it.
	DatagramGuards bool
	// Collectors are the factory's own metric families (named
	// superd_<factory>_...), registered once with superd's registry. Their
	// series carry a "service" label; a service's series are deleted when
	// it is removed.
	Collectors []prometheus.Collector
}

// Serves is a set of endpoint families.
type Serves int

const (
	Streams   Serves = 1 << iota // tcp, tls and unix endpoints
	Datagrams                    // udp endpoints
)

// HasStreams reports whether s includes stream endpoints (zero means streams).
func (s Serves) HasStreams() bool { return s == 0 || s&Streams != 0 }

// HasDatagrams reports whether s includes udp endpoints.
func (s Serves) HasDatagrams() bool { return s&Datagrams != 0 }

// Attribute is one factory-specific configuration attribute.
type Attribute struct {
	Name        string
	Type        cty.Type  // cty.String, cty.Number, cty.Bool, cty.List(cty.String), ...
	Default     cty.Value // cty.NilVal: no default (the value is null when unset)
	Required    bool
	Description string
	// Block makes the attribute a block, written `NAME { key = value ... }`
	// (at most one). Type is a map type (any keys, values of one type) or
	// an object type (the attributes it names, each optional and of its
	// own type: null when unset; read them with Config.Block).
	Block bool
}

// Config is the configuration of one service as its factory sees it.
type Config struct {
	// Service is the service's name (the second block label).
	Service string
	// Dir is the folder of the configuration file; relative paths resolve
	// against it (see Path).
	Dir string
	// Values holds every attribute of the factory's schema, converted to
	// its declared type; unset attributes hold their default or null.
	Values map[string]cty.Value
	// Ranges holds the source range of each attribute that was set; for
	// an object-typed block, also of each attribute set inside it, as
	// "BLOCK.ATTR".
	Ranges map[string]hcl.Range
	// Cluster reports whether the file has a top-level cluster block (a
	// factory that spans nodes needs one; it gets the running node from
	// package cluster in StartFactory).
	Cluster bool

	prefix string // "BLOCK." for a Config returned by Block
}

// IsSet reports whether the attribute was written in the file.
func (c *Config) IsSet(name string) bool { _, ok := c.Ranges[name]; return ok }

func (c *Config) value(name string) cty.Value {
	v, ok := c.Values[name]
	if !ok {
		panic(fmt.Sprintf("framework: attribute %q is not in the factory's schema", name))
	}
	return v
}

// String returns a string attribute ("" when null).
func (c *Config) String(name string) string {
	v := c.value(name)
	if v.IsNull() {
		return ""
	}
	return v.AsString()
}

// Strings returns a list-of-string attribute (nil when null).
func (c *Config) Strings(name string) []string {
	v := c.value(name)
	if v.IsNull() {
		return nil
	}
	var out []string
	if err := gocty.FromCtyValue(v, &out); err != nil {
		panic(err)
	}
	return out
}

// Int returns a number attribute as an int; a fractional or out-of-range
// value is reported through Errorf by the caller's validation, here it
// truncates.
func (c *Config) Int(name string) int {
	v := c.value(name)
	if v.IsNull() {
		return 0
	}
	bf := v.AsBigFloat()
	i, _ := bf.Int64()
	return int(i)
}

// IsWholeNumber reports whether a number attribute holds an integer.
func (c *Config) IsWholeNumber(name string) bool {
	v := c.value(name)
	if v.IsNull() {
		return true
	}
	return v.AsBigFloat().IsInt() && v.AsBigFloat().Cmp(big.NewFloat(1<<62)) < 0
}

// Bool returns a bool attribute (false when null).
func (c *Config) Bool(name string) bool {
	v := c.value(name)
	return !v.IsNull() && v.True()
}

// Duration parses a string attribute as a Go duration (0 when null).
func (c *Config) Duration(name string) (time.Duration, error) {
	s := c.String(name)
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, c.Errorf(name, "%q is not a duration (use Go syntax such as \"10s\" or \"1m30s\")", s)
	}
	return d, nil
}

// Path returns a string attribute as a path, resolved against Dir when
// relative ("" when null).
func (c *Config) Path(name string) string {
	p := c.String(name)
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.Dir, p)
}

// Errorf returns an *AttrError for attribute name (inside a block returned
// by Block, for "BLOCK.name").
func (c *Config) Errorf(name, format string, args ...any) error {
	return &AttrError{Attribute: c.prefix + name, Err: fmt.Errorf(format, args...)}
}

// Block returns the configuration inside an object-typed block attribute,
// to be read with the same methods (String, Bool, Path, IsSet, Errorf,
// which points the diagnostic at the attribute inside the block), or nil
// when the block is absent.
func (c *Config) Block(name string) *Config {
	v := c.value(name)
	if !v.Type().IsObjectType() {
		panic(fmt.Sprintf("framework: attribute %q is not an object-typed block", name))
	}
	if v.IsNull() {
		return nil
	}
	sub := &Config{
		Service: c.Service,
		Dir:     c.Dir,
		Values:  map[string]cty.Value{},
		Ranges:  map[string]hcl.Range{},
		Cluster: c.Cluster,
		prefix:  c.prefix + name + ".",
	}
	for n := range v.Type().AttributeTypes() {
		sub.Values[n] = v.GetAttr(n)
		if r, ok := c.Ranges[name+"."+n]; ok {
			sub.Ranges[n] = r
		}
	}
	return sub
}

// AttrError is a configuration error about one attribute of a factory.
type AttrError struct {
	Attribute string
	Err       error
}

func (e *AttrError) Error() string { return e.Attribute + ": " + e.Err.Error() }
func (e *AttrError) Unwrap() error { return e.Err }

var (
	registryMu sync.RWMutex
	registry   = map[string]*Spec{}
	validName  = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

// Register adds a factory to the registry. Service packages call it from
// init. It panics on a program error: an invalid or duplicate name, or a
// missing New.
func Register(s Spec) {
	if !validName.MatchString(s.Name) {
		panic(fmt.Sprintf("framework.Register: invalid factory name %q", s.Name))
	}
	if s.New == nil {
		panic(fmt.Sprintf("framework.Register(%q): New is nil", s.Name))
	}
	seen := map[string]bool{}
	for _, a := range s.Attributes {
		if a.Name == "" || seen[a.Name] || a.Type == cty.NilType || (a.Block && !a.Type.IsMapType() && !a.Type.IsObjectType()) {
			panic(fmt.Sprintf("framework.Register(%q): bad attribute %q", s.Name, a.Name))
		}
		seen[a.Name] = true
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[s.Name]; dup {
		panic(fmt.Sprintf("framework.Register: factory %q registered twice", s.Name))
	}
	registry[s.Name] = &s
}

// Lookup returns the registered factory spec called name.
func Lookup(name string) (*Spec, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s, ok := registry[name]
	return s, ok
}

// Specs returns every registered factory spec, sorted by name.
func Specs() []*Spec {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]*Spec, 0, len(registry))
	for _, s := range registry {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
