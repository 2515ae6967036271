package endpoint

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// Address is the socket an endpoint binds, parsed once (ParseAddress) from
// the address or path written in the file. What to listen on (String) and
// which socket that is (Key) both come from it, so the configuration's
// check for two endpoints on one socket, the supervisor's sharing of a
// socket across a reload, and the listener itself cannot disagree.
//
// Spellings of one socket parse to one Address: "localhost:7007",
// "127.0.0.1:7007" and "[::ffff:127.0.0.1]:7007" are 127.0.0.1:7007; ":7007",
// "0.0.0.0:7007" and "[::]:7007" are ":7007", every address (Go binds the
// three alike: one socket for IPv4 and IPv6).
type Address struct {
	// Network is "tcp" (tcp and tls endpoints), "udp" or "unix".
	Network string
	// Host, for tcp and udp: an IP address in its canonical form, a host
	// name in lower case, or "" for every address.
	Host string
	Port uint16
	// Path, for unix: the socket file's path, cleaned; or, on Linux, "@"
	// and the name of an abstract socket (kept as written: it names no
	// file).
	Path string
}

// Networks of an Address.
const (
	NetworkTCP  = "tcp"
	NetworkUDP  = "udp"
	NetworkUnix = "unix"
)

// NetworkOf returns the network of an endpoint kind ("tls" is "tcp"), or
// "" for an unknown kind.
func NetworkOf(kind string) string {
	switch kind {
	case KindTCP, KindTLS:
		return NetworkTCP
	case KindUDP:
		return NetworkUDP
	case KindUnix:
		return NetworkUnix
	}
	return ""
}

// ErrSocketPathTooLong is wrapped by the error of ParseAddress for a unix
// socket path longer than MaxSocketPath.
var ErrSocketPathTooLong = errors.New("socket path too long")

// MaxSocketPath is the longest unix socket path the system binds: sun_path
// less its terminating NUL (108 bytes on Linux, 104 on the BSDs and macOS).
var MaxSocketPath = maxSocketPath()

func maxSocketPath() int {
	if runtime.GOOS == "linux" {
		return 107
	}
	return 103
}

// addressError is an error of ParseAddress, worded to follow the name of
// what is wrong ("... is not HOST:PORT").
type addressError struct {
	msg  string
	kind error // ErrSocketPathTooLong, or nil
}

func (e *addressError) Error() string { return e.msg }
func (e *addressError) Unwrap() error { return e.kind }

// ParseAddress parses the address of an endpoint of the given kind: for
// tcp, tls and udp HOST:PORT, where HOST is an IPv4 address, an IPv6
// address in brackets, a host name, or nothing for every address, and
// PORT a number; for unix the socket file's path. Host names are not
// resolved, except localhost, which is 127.0.0.1 (what Go listens on for
// it: the first IPv4 address of the name). The errors are sentences
// without the final full stop, such as `"9464" is not HOST:PORT`.
func ParseAddress(kind, s string) (Address, error) {
	network := NetworkOf(kind)
	switch network {
	case "":
		return Address{}, &addressError{msg: fmt.Sprintf("there is no endpoint kind %q", kind)}
	case NetworkUnix:
		if IsAbstract(s) {
			if err := checkAbstractName(s); err != nil {
				return Address{}, err
			}
			return Address{Network: network, Path: s}, nil
		}
		if err := checkSocketPath(s); err != nil {
			return Address{}, err
		}
		return Address{Network: network, Path: filepath.Clean(s)}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Address{}, &addressError{msg: fmt.Sprintf("%q is not HOST:PORT", s)}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || port[0] < '0' || port[0] > '9' {
		return Address{}, &addressError{msg: fmt.Sprintf("the port of %q must be a number from 0 to 65535", s)}
	}
	a := Address{Network: network, Port: uint16(p)}
	switch ip, err := netip.ParseAddr(host); {
	case host == "":
	case err == nil:
		if ip = ip.Unmap(); !ip.IsUnspecified() {
			a.Host = ip.String()
		}
	case isHostName(host):
		a.Host = strings.ToLower(host)
		if strings.TrimSuffix(a.Host, ".") == "localhost" {
			a.Host = "127.0.0.1"
		}
	default:
		return Address{}, &addressError{msg: fmt.Sprintf("the host of %q is neither an IP address nor a host name", s)}
	}
	return a, nil
}

// checkSocketPath checks a unix socket path: not empty, and short enough.
func checkSocketPath(path string) error {
	switch n := len(filepath.Clean(path)); {
	case path == "":
		return &addressError{msg: "path must name the socket file"}
	case n > MaxSocketPath:
		return &addressError{
			msg:  fmt.Sprintf("the socket path %s is %d bytes long, and the system takes at most %d", filepath.Clean(path), n, MaxSocketPath),
			kind: ErrSocketPathTooLong,
		}
	}
	return nil
}

// IsAbstract reports whether a unix endpoint's path names a Linux abstract
// socket: one that starts with "@". Such a socket lives in the kernel's
// own namespace (per network namespace), not in the file system: there is
// no file, so no mode, owner or group, and nothing to remove at close; it
// goes away with its last descriptor.
func IsAbstract(path string) bool { return strings.HasPrefix(path, "@") }

// checkAbstractName checks an abstract socket's "@NAME": Linux only, a
// name after the "@", and short enough for sun_path (the whole of it: an
// abstract name needs no terminating NUL, its leading NUL takes the "@"'s
// place).
func checkAbstractName(s string) error {
	switch {
	case runtime.GOOS != "linux":
		return &addressError{msg: fmt.Sprintf("%s would be an abstract socket, which only Linux has", s)}
	case s == "@":
		return &addressError{msg: "an abstract socket needs a name after the @"}
	case len(s) > MaxSocketPath+1:
		return &addressError{
			msg:  fmt.Sprintf("the abstract socket name %s is %d bytes long, and the system takes at most %d", s, len(s), MaxSocketPath+1),
			kind: ErrSocketPathTooLong,
		}
	}
	return nil
}

// isHostName reports whether s is a DNS host name (letters, digits and
// hyphens in dot-separated labels, not all digits at the end).
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

// String is what to listen on: HOST:PORT (":PORT" for every address), the
// socket's path, or "@NAME" for an abstract socket (how Go's net package
// and /proc/net/unix write it).
func (a Address) String() string {
	if a.Network == NetworkUnix {
		return a.Path
	}
	return net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port)))
}

// Key identifies the socket a binds: equal keys are one socket, which a
// reload hands from a service to its successor instead of binding it
// again. It is "" for an address that names no particular socket (port 0,
// a free port each time, never shared) or no address at all.
func (a Address) Key() string {
	switch {
	case a.Network == "", a.Network == NetworkUnix && a.Path == "":
		return ""
	case a.Network != NetworkUnix && a.Port == 0:
		return ""
	}
	return a.Network + ":" + a.String()
}

// Abstract reports whether a is a Linux abstract unix socket ("@NAME").
func (a Address) Abstract() bool { return a.Network == NetworkUnix && IsAbstract(a.Path) }

// Wildcard reports whether a is a tcp or udp address for every address of
// the machine.
func (a Address) Wildcard() bool {
	return a.Network != NetworkUnix && a.Network != "" && a.Host == ""
}

// Conflicts reports whether a and o cannot both be bound: the same socket
// (the same Key), or one port of the same network where one of them takes
// every address. A host name is compared by name only (it is not
// resolved); port 0 conflicts with nothing.
func (a Address) Conflicts(o Address) bool {
	if a.Network != o.Network || a.Network == "" {
		return false
	}
	if a.Network == NetworkUnix {
		return a.Path == o.Path
	}
	if a.Port == 0 || a.Port != o.Port {
		return false
	}
	return a.Wildcard() || o.Wildcard() || strings.TrimSuffix(a.Host, ".") == strings.TrimSuffix(o.Host, ".")
}

// check reports an address that does not fit an endpoint of kind (one
// made by hand, without ParseAddress).
func (a Address) check(kind string) error {
	switch network := NetworkOf(kind); {
	case network == "":
		return fmt.Errorf("unknown endpoint kind %q", kind)
	case network == NetworkUnix && a.Path == "":
		return errors.New("empty socket path")
	case a.Network != network:
		return fmt.Errorf("no %s address", network)
	case network == NetworkUnix && IsAbstract(a.Path):
		return checkAbstractName(a.Path)
	case network == NetworkUnix:
		return checkSocketPath(a.Path)
	}
	return nil
}
