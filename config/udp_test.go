package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
)

// Datagram test factories. Their names sort before "testecho", so the list
// of factories that TestInvalid expects still ends as it does.
func init() {
	newNil := func(*framework.Env, any) (framework.Factory, error) {
		return framework.ForProtocol(func() framework.Protocol { return nil }), nil
	}
	framework.Register(framework.Spec{
		Name: "testdgram", Description: "A datagram-only test factory with the guards of the built-ins.",
		New: newNil, Serves: framework.Datagrams, DatagramGuards: true,
	})
	framework.Register(framework.Spec{
		Name: "testboth", Description: "A test factory serving streams and datagrams, with the guards of the built-ins.",
		New: newNil, Serves: framework.Streams | framework.Datagrams, DatagramGuards: true,
	})
	framework.Register(framework.Spec{
		Name: "testbare", Description: "A test factory serving streams and datagrams, without guards.",
		New: newNil, Serves: framework.Streams | framework.Datagrams,
	})
}

func TestUDPEndpointDecoding(t *testing.T) {
	f, err := Parse([]byte(`service "testboth" "u" {
  endpoint "udp" {
    address      = "127.0.0.1:17007"
    reuse_port   = true
    read_buffer  = 1024
    write_buffer = 1048576
  }
  endpoint "udp" { address = "[::1]:17007" }
  endpoint "udp" { address = ":17008" }
  endpoint "tcp" { address = "127.0.0.1:17007" }
}
`), filepath.Join(t.TempDir(), "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	eps := f.Services[0].Endpoints
	want := []endpoint.Config{
		{Kind: "udp", Label: "udp:127.0.0.1:17007", Addr: endpoint.Address{Network: "udp", Host: "127.0.0.1", Port: 17007}, ReusePort: true, ReadBuffer: 1024, WriteBuffer: 1 << 20},
		{Kind: "udp", Label: "udp:[::1]:17007", Addr: endpoint.Address{Network: "udp", Host: "::1", Port: 17007}},
		{Kind: "udp", Label: "udp::17008", Addr: endpoint.Address{Network: "udp", Port: 17008}},
		{Kind: "tcp", Label: "tcp:127.0.0.1:17007", Addr: endpoint.Address{Network: "tcp", Host: "127.0.0.1", Port: 17007}},
	}
	if len(eps) != len(want) {
		t.Fatalf("%d endpoints, want %d: %+v", len(eps), len(want), eps)
	}
	for i := range want {
		if !reflect.DeepEqual(eps[i], want[i]) {
			t.Errorf("endpoint %d = %+v, want %+v", i, eps[i], want[i])
		}
	}
}

// A udp port never clashes with a tcp one, not even the metrics listener's
// default address; two udp endpoints on one port do clash.
func TestUDPAndTCPOnOnePortDoNotClash(t *testing.T) {
	for _, text := range []string{
		`service "testboth" "u" {
  endpoint "tcp" { address = "127.0.0.1:17007" }
  endpoint "udp" { address = "127.0.0.1:17007" }
}
`,
		`service "testboth" "u" {
  endpoint "udp" { address = ":17007" }
}
service "testecho" "t" {
  endpoint "tcp" { address = ":17007" }
}
`,
		`service "testdgram" "u" {
  endpoint "udp" { address = "127.0.0.1:9464" }
}
`,
	} {
		if _, err := Parse([]byte(text), filepath.Join(t.TempDir(), "superd.hcl")); err != nil {
			t.Errorf("%s: %v", text, err)
		}
	}
}

// udpDiags loads text and checks that its diagnostics are exactly want, each
// at its file:line,columns.
func udpDiags(t *testing.T, text string, want []wantDiag) {
	t.Helper()
	dir := writeFiles(t, map[string]string{"superd.hcl": text})
	path := filepath.Join(dir, "superd.hcl")
	f, err := Load(path)
	if err == nil {
		t.Fatalf("Load succeeded: %+v", f)
	}
	out := diagText(t, err)
	lines := strings.Split(out, "\n")
	headers := 0
	for _, l := range lines {
		if strings.HasPrefix(l, path+":") {
			headers++
		}
	}
	if headers != len(want) {
		t.Errorf("%d diagnostics, want %d:\n%s", headers, len(want), out)
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			if strings.HasPrefix(l, path+":"+w.pos+": "+w.summary) && strings.Contains(l, w.detail) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no line starting %q and holding %q in:\n%s", path+":"+w.pos+": "+w.summary, w.detail, out)
		}
	}
}

func TestUDPEndpointDiagnostics(t *testing.T) {
	tests := []struct {
		name string
		hcl  string
		want []wantDiag
	}{
		{
			name: "bad addresses",
			hcl: `service "testdgram" "u" {
  endpoint "udp" { address = "127.0.0.1" }
  endpoint "udp" { address = "127.0.0.1:65536" }
  endpoint "udp" { address = "not an address:7" }
  endpoint "udp" {}
}
`,
			want: []wantDiag{
				{"2,30-41", "Invalid address", `"127.0.0.1" is not HOST:PORT`},
				{"3,30-47", "Invalid address", "must be a number from 0 to 65535"},
				{"4,30-48", "Invalid address", "neither an IP address nor a host name"},
				{"5,18-18", "Missing required argument", `"address"`},
			},
		},
		{
			name: "bad buffers and flags",
			hcl: `service "testdgram" "u" {
  endpoint "udp" {
    address      = "127.0.0.1:7"
    read_buffer  = 1023
    write_buffer = 2048.5
    reuse_port   = "sometimes"
  }
  endpoint "udp" {
    address      = "127.0.0.1:8"
    write_buffer = 0
    read_buffer  = 2147483648
    mode         = "0660"
  }
}
`,
			want: []wantDiag{
				{"4,20-24", "Value out of range", "read_buffer must be from 1024 to 1073741824, not 1023."},
				{"5,20-26", "Invalid whole number", "write_buffer must be a whole number, not 2048.5."},
				{"6,20-31", "", "reuse_port"},
				{"10,20-21", "Value out of range", "write_buffer must be from 1024 to 1073741824, not 0."},
				{"11,20-30", "Value out of range", "read_buffer must be from 1024"},
				{"12,5-9", "Unsupported argument", `"mode"`},
			},
		},
		{
			name: "udp endpoint of a stream-only factory",
			hcl: `service "testecho" "e" {
  endpoint "tcp" { address = "127.0.0.1:7" }
  endpoint "udp" { address = "127.0.0.1:7" }
}
`,
			want: []wantDiag{{"3,12-17", "Endpoint kind not served",
				`The testecho factory serves streams only (tcp, tls and unix endpoints), so service "e" cannot have a udp endpoint.`}},
		},
		{
			name: "stream endpoints of a datagram-only factory",
			hcl: `service "testdgram" "d" {
  endpoint "udp"  { address = "127.0.0.1:7" }
  endpoint "tcp"  { address = "127.0.0.1:7" }
  endpoint "unix" { path = "d.sock" }
}
`,
			want: []wantDiag{
				{"3,12-17", "Endpoint kind not served", `serves datagrams only (udp endpoints), so service "d" cannot have a tcp endpoint.`},
				{"4,12-18", "Endpoint kind not served", `cannot have a unix endpoint.`},
			},
		},
		{
			name: "two udp endpoints on one port",
			hcl: `service "testdgram" "a" {
  endpoint "udp" { address = "127.0.0.1:7007" }
}
service "testboth" "b" {
  endpoint "tcp" { address = "127.0.0.1:7007" }
  endpoint "udp" { address = ":7007" }
  endpoint "udp" { address = "[::1]:7008" }
  endpoint "udp" { address = "[::1]:7008" }
}
`,
			want: []wantDiag{
				{"6,30-37", "Duplicate endpoint address", `"udp::7007" of service "b" would listen where endpoint "udp:127.0.0.1:7007" of service "a"`},
				{"8,30-42", "Duplicate endpoint address", `endpoint "udp:[::1]:7008" of service "b"`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { udpDiags(t, tt.hcl, tt.want) })
	}
}

// The default per-source limit of datagrams applies to the factories with
// DatagramGuards that have a udp endpoint, and only when the service sets
// no rate_limit_per_ip of its own; it never limits the service's
// connections.
func TestDefaultDatagramRateLimitPerIP(t *testing.T) {
	tests := []struct {
		name, hcl     string
		want          *Rate
		datagramsOnly bool
	}{
		{"guarded, udp", `service "testdgram" "s" {
  endpoint "udp" { address = "127.0.0.1:0" }
}`, &DefaultDatagramRateLimitPerIP, true},
		{"guarded, udp and tcp", `service "testboth" "s" {
  endpoint "tcp" { address = "127.0.0.1:0" }
  endpoint "udp" { address = "127.0.0.1:0" }
}`, &DefaultDatagramRateLimitPerIP, true},
		{"guarded, tcp only", `service "testboth" "s" {
  endpoint "tcp" { address = "127.0.0.1:0" }
}`, nil, false},
		{"guarded, udp, configured", `service "testboth" "s" {
  rate_limit_per_ip {
    rate  = 100
    burst = 5
  }
  endpoint "tcp" { address = "127.0.0.1:0" }
  endpoint "udp" { address = "127.0.0.1:0" }
}`, &Rate{100, 5}, false},
		{"guarded, udp, rate_limit alone", `service "testboth" "s" {
  rate_limit { rate = 100 }
  endpoint "udp" { address = "127.0.0.1:0" }
}`, &DefaultDatagramRateLimitPerIP, true},
		{"not guarded, udp", `service "testbare" "s" {
  endpoint "udp" { address = "127.0.0.1:0" }
}`, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse([]byte(tt.hcl+"\n"), filepath.Join(t.TempDir(), "superd.hcl"))
			if err != nil {
				t.Fatal(err)
			}
			l := f.Services[0].Limits
			switch {
			case tt.want == nil && l.RateLimitPerIP != nil:
				t.Errorf("RateLimitPerIP = %+v, want none", *l.RateLimitPerIP)
			case tt.want != nil && (l.RateLimitPerIP == nil || *l.RateLimitPerIP != *tt.want):
				t.Errorf("RateLimitPerIP = %v, want %+v", l.RateLimitPerIP, *tt.want)
			}
			if l.RateLimitPerIPDatagramsOnly != tt.datagramsOnly {
				t.Errorf("RateLimitPerIPDatagramsOnly = %v, want %v", l.RateLimitPerIPDatagramsOnly, tt.datagramsOnly)
			}
		})
	}
	if DefaultDatagramRateLimitPerIP != (Rate{Rate: 10, Burst: 20}) {
		t.Errorf("DefaultDatagramRateLimitPerIP = %+v, SPEC section 10 says rate 10, burst 20", DefaultDatagramRateLimitPerIP)
	}
}

// Writing the default limit out is not the same as leaving it to the
// default (the written one limits connections too), so the fingerprint
// changes; udp settings are part of it.
func TestUDPFingerprint(t *testing.T) {
	const base = `service "testboth" "s" {
  endpoint "tcp" { address = "127.0.0.1:7007" }
  endpoint "udp" {
    address = "127.0.0.1:7007"
  }
}
`
	path := filepath.Join(t.TempDir(), "superd.hcl") // the folder is part of the fingerprint
	fp := func(text string) string {
		t.Helper()
		f, err := Parse([]byte(text), path)
		if err != nil {
			t.Fatal(err)
		}
		return f.Services[0].Fingerprint
	}
	a := fp(base)
	if fp(base) != a {
		t.Fatal("the same text has two fingerprints")
	}
	for name, text := range map[string]string{
		"explicit default limit": strings.Replace(base, "{\n", "{\n  rate_limit_per_ip {\n    rate  = 10\n    burst = 20\n  }\n", 1),
		"reuse_port":             strings.Replace(base, "    address = ", "    reuse_port = true\n    address = ", 1),
		"read_buffer":            strings.Replace(base, "    address = ", "    read_buffer = 4096\n    address = ", 1),
		"udp address":            strings.Replace(base, "address = \"127.0.0.1:7007\"\n", "address = \"127.0.0.1:7008\"\n", 1),
	} {
		if fp(text) == a {
			t.Errorf("%s: fingerprint did not change:\n%s", name, text)
		}
	}
}
