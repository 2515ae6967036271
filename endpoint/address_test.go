package endpoint

import (
	"runtime"
	"strings"
	"testing"
)

// mustParse parses an address the tests write correctly.
func mustParse(kind, s string) Address {
	a, err := ParseAddress(kind, s)
	if err != nil {
		panic(err)
	}
	return a
}

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		kind, in string
		want     Address
		listen   string // String()
		key      string
	}{
		{KindTCP, "127.0.0.1:7007", Address{Network: "tcp", Host: "127.0.0.1", Port: 7007}, "127.0.0.1:7007", "tcp:127.0.0.1:7007"},
		{KindTLS, "127.0.0.1:7007", Address{Network: "tcp", Host: "127.0.0.1", Port: 7007}, "127.0.0.1:7007", "tcp:127.0.0.1:7007"},
		{KindUDP, "127.0.0.1:7007", Address{Network: "udp", Host: "127.0.0.1", Port: 7007}, "127.0.0.1:7007", "udp:127.0.0.1:7007"},
		// Spellings of 127.0.0.1:7007.
		{KindTCP, "localhost:7007", Address{Network: "tcp", Host: "127.0.0.1", Port: 7007}, "127.0.0.1:7007", "tcp:127.0.0.1:7007"},
		{KindTCP, "LocalHost.:7007", Address{Network: "tcp", Host: "127.0.0.1", Port: 7007}, "127.0.0.1:7007", "tcp:127.0.0.1:7007"},
		{KindTCP, "[::ffff:127.0.0.1]:7007", Address{Network: "tcp", Host: "127.0.0.1", Port: 7007}, "127.0.0.1:7007", "tcp:127.0.0.1:7007"},
		{KindTCP, "127.0.0.1:07007", Address{Network: "tcp", Host: "127.0.0.1", Port: 7007}, "127.0.0.1:7007", "tcp:127.0.0.1:7007"},
		// IPv6.
		{KindTCP, "[::1]:7007", Address{Network: "tcp", Host: "::1", Port: 7007}, "[::1]:7007", "tcp:[::1]:7007"},
		{KindTCP, "[0:0::1]:7007", Address{Network: "tcp", Host: "::1", Port: 7007}, "[::1]:7007", "tcp:[::1]:7007"},
		{KindTCP, "[fe80::1%eth0]:7007", Address{Network: "tcp", Host: "fe80::1%eth0", Port: 7007}, "[fe80::1%eth0]:7007", "tcp:[fe80::1%eth0]:7007"},
		// Every address, three ways.
		{KindTCP, ":7007", Address{Network: "tcp", Port: 7007}, ":7007", "tcp::7007"},
		{KindTCP, "0.0.0.0:7007", Address{Network: "tcp", Port: 7007}, ":7007", "tcp::7007"},
		{KindTCP, "[::]:7007", Address{Network: "tcp", Port: 7007}, ":7007", "tcp::7007"},
		// Host names are not resolved.
		{KindTCP, "Example.COM:7007", Address{Network: "tcp", Host: "example.com", Port: 7007}, "example.com:7007", "tcp:example.com:7007"},
		// Port 0: a free port each time, no socket to share.
		{KindTCP, "127.0.0.1:0", Address{Network: "tcp", Host: "127.0.0.1"}, "127.0.0.1:0", ""},
		{KindUnix, "/run/superd/../x.sock", Address{Network: "unix", Path: "/run/x.sock"}, "/run/x.sock", "unix:/run/x.sock"},
	} {
		got, err := ParseAddress(tc.kind, tc.in)
		if err != nil {
			t.Errorf("ParseAddress(%s, %q): %v", tc.kind, tc.in, err)
			continue
		}
		if got != tc.want || got.String() != tc.listen || got.Key() != tc.key {
			t.Errorf("ParseAddress(%s, %q) = %#v, String %q, Key %q; want %#v, %q, %q",
				tc.kind, tc.in, got, got.String(), got.Key(), tc.want, tc.listen, tc.key)
		}
	}
}

func TestParseAddressErrors(t *testing.T) {
	for _, tc := range []struct{ kind, in, want string }{
		{KindTCP, "9464", `"9464" is not HOST:PORT`},
		{KindTCP, "::1:80", `"::1:80" is not HOST:PORT`},
		{KindTCP, "127.0.0.1:http", `the port of "127.0.0.1:http" must be a number from 0 to 65535`},
		{KindTCP, "127.0.0.1:+80", `the port of "127.0.0.1:+80" must be a number from 0 to 65535`},
		{KindUDP, "127.0.0.1:65536", `the port of "127.0.0.1:65536" must be a number from 0 to 65535`},
		{KindTCP, "bad_host:80", `the host of "bad_host:80" is neither an IP address nor a host name`},
		{KindUnix, "", "path must name the socket file"},
		{KindUnix, "/" + strings.Repeat("x", 200), "the socket path /xxx"},
		{"sctp", ":1", `there is no endpoint kind "sctp"`},
	} {
		_, err := ParseAddress(tc.kind, tc.in)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("ParseAddress(%s, %q) = %v, want %q", tc.kind, tc.in, err, tc.want)
		}
	}
}

// Two addresses with one key always conflict (one socket cannot be bound
// twice); tcp and udp, and unix and the rest, never do.
func TestAddressConflicts(t *testing.T) {
	for _, tc := range []struct {
		a, b     Address
		conflict bool
	}{
		{mustParse(KindTCP, "localhost:7007"), mustParse(KindTLS, "127.0.0.1:7007"), true},
		{mustParse(KindTCP, ":7007"), mustParse(KindTCP, "127.0.0.1:7007"), true},
		{mustParse(KindTCP, "[::]:7007"), mustParse(KindTCP, "[::1]:7007"), true},
		{mustParse(KindTCP, "host.example.:7007"), mustParse(KindTCP, "HOST.example:7007"), true},
		{mustParse(KindTCP, "127.0.0.1:7007"), mustParse(KindTCP, "[::1]:7007"), false},
		{mustParse(KindTCP, "127.0.0.1:7007"), mustParse(KindTCP, "127.0.0.1:7008"), false},
		{mustParse(KindTCP, "127.0.0.1:0"), mustParse(KindTCP, "127.0.0.1:0"), false},
		{mustParse(KindTCP, ":7007"), mustParse(KindUDP, ":7007"), false},
		{mustParse(KindUDP, ":7007"), mustParse(KindUDP, "127.0.0.1:7007"), true},
		{mustParse(KindUnix, "/run/a.sock"), mustParse(KindUnix, "/run//a.sock"), true},
		{mustParse(KindUnix, "/run/a.sock"), mustParse(KindUnix, "/run/b.sock"), false},
		{Address{Network: NetworkUnix, Path: "@superd/a"}, Address{Network: NetworkUnix, Path: "@superd/a"}, true},
		{Address{Network: NetworkUnix, Path: "@superd/a"}, Address{Network: NetworkUnix, Path: "@superd/b"}, false},
		// "@x" is no file: a relative path "@x" resolved elsewhere is not it.
		{Address{Network: NetworkUnix, Path: "@x"}, mustParse(KindUnix, "/run/@x"), false},
	} {
		if got := tc.a.Conflicts(tc.b); got != tc.conflict {
			t.Errorf("%#v.Conflicts(%#v) = %v, want %v", tc.a, tc.b, got, tc.conflict)
		}
		if got := tc.b.Conflicts(tc.a); got != tc.conflict {
			t.Errorf("%#v.Conflicts(%#v) = %v, want %v (not symmetric)", tc.b, tc.a, got, tc.conflict)
		}
		if k := tc.a.Key(); k != "" && k == tc.b.Key() && !tc.conflict {
			t.Errorf("%#v and %#v share the key %q without conflicting", tc.a, tc.b, k)
		}
	}
}

// A path starting with @ is an abstract socket on Linux: kept as written
// (no cleaning: it names no file), with a key of its own, and its length
// checked against sun_path whole (no terminating NUL).
func TestParseAbstractAddress(t *testing.T) {
	if runtime.GOOS != "linux" {
		_, err := ParseAddress(KindUnix, "@superd")
		if err == nil || !strings.Contains(err.Error(), "only Linux") {
			t.Fatalf("ParseAddress(@superd) off Linux = %v", err)
		}
		return
	}
	for _, tc := range []struct{ in, key string }{
		{"@superd", "unix:@superd"},
		{"@superd/../echo", "unix:@superd/../echo"},
		{"@" + strings.Repeat("x", MaxSocketPath), "unix:@" + strings.Repeat("x", MaxSocketPath)},
	} {
		a, err := ParseAddress(KindUnix, tc.in)
		if err != nil {
			t.Errorf("ParseAddress(unix, %q): %v", tc.in, err)
			continue
		}
		if !a.Abstract() || a.Path != tc.in || a.String() != tc.in || a.Key() != tc.key || a.check(KindUnix) != nil {
			t.Errorf("ParseAddress(unix, %q) = %#v, Abstract %v, String %q, Key %q, check %v",
				tc.in, a, a.Abstract(), a.String(), a.Key(), a.check(KindUnix))
		}
	}
	if a := mustParse(KindUnix, "/run/x.sock"); a.Abstract() {
		t.Errorf("/run/x.sock is abstract")
	}
	for _, tc := range []struct{ in, want string }{
		{"@", "an abstract socket needs a name after the @"},
		{"@" + strings.Repeat("x", MaxSocketPath+1), "the abstract socket name @xxx"},
	} {
		_, err := ParseAddress(KindUnix, tc.in)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("ParseAddress(unix, %q) = %v, want %q", tc.in, err, tc.want)
		}
	}
}
