package framework

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"sync"
)

// Spec describes a factory to the registry: how it is named in the
// configuration, what it is for, its configuration, and how to build it.
type Spec struct {
	// Name is the first label of `service "NAME" "..."` blocks.
	Name string
	// Description is one line for `superd factories`.
	Description string
	// Config is the factory's configuration holding its defaults: a struct
	// value whose tagged fields are its attributes (see Attribute), or nil
	// when it has none of its own.
	Config any
	// New builds a factory for one service: cfg points to a copy of
	// Config with the service block decoded into it and checked (nil when
	// Config is nil); Typed adapts a constructor taking it typed. New must
	// have no side effects (no files opened, no goroutines started, no
	// metrics registered): `superd validate` calls it too. Resources belong
	// in StartFactory. An error about one attribute should come from
	// Errorf, so the diagnostic points at it.
	New func(env *Env, cfg any) (Factory, error)
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

	attrs []Attribute
}

// Attributes returns the factory's attributes, in the order of Config's
// fields.
func (s *Spec) Attributes() []Attribute { return s.attrs }

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

var (
	registryMu sync.RWMutex
	registry   = map[string]*Spec{}
	validName  = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

// Register adds a factory to the registry. Service packages call it from
// init. It panics on a program error: an invalid or duplicate name, or a
// missing New, or a configuration whose tags are wrong.
func Register(s Spec) {
	if !validName.MatchString(s.Name) {
		panic(fmt.Sprintf("framework.Register: invalid factory name %q", s.Name))
	}
	if s.New == nil {
		panic(fmt.Sprintf("framework.Register(%q): New is nil", s.Name))
	}
	if s.Config != nil {
		s.attrs = attributes(reflect.ValueOf(s.Config)) // panics on a bad tag
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
