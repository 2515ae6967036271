package config

import (
	"crypto/tls"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
)

const validConfig = `# Every construct of the language.
metrics {
  address = "127.0.0.1:19464"
}

shutdown_timeout = "1m30s"

service "testfactory" "alpha" {
  greeting = file("greeting.txt")
  tags     = ["a", env("SUPERD_TEST_TAG")]

  max_connections        = 100
  max_connections_per_ip = 5
  idle_timeout           = "30s"
  allow = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1", "10.2.3.4/16", "::ffff:1.2.3.0/120"]
  deny  = ["10.1.0.0/16"]
  ipv6_prefix        = 56
  max_pending_output = 65536
  rate_limit { rate = 0.5 }
  rate_limit_per_ip {
    rate  = 10
    burst = 20
  }

  endpoint "tcp" { address = "127.0.0.1:17007" }
  endpoint "tcp" { address = "[::1]:17007" }
  endpoint "tls" {
    address        = ":17443"
    cert_file      = "tls/server.crt"
    key_file       = "tls/server.key"
    client_ca_file = "tls/ca.crt"
    min_version    = "1.3"
  }
  endpoint "unix" {
    path = "alpha.sock"
    mode = "0600"
  }
}

service "testecho" "beta" {
  endpoint "tls" {
    address     = "127.0.0.1:17444"
    self_signed = true
  }
  endpoint "unix" { path = "/tmp/superd-config-test-beta.sock" }
}

service "testneeds" "gamma" {
  target = env("SUPERD_TEST_UNSET", "fallback")
  endpoint "tcp" { address = "localhost:0" }
  endpoint "tcp" { address = "127.0.0.1:0" }
}
`

func TestLoadValid(t *testing.T) {
	t.Setenv("SUPERD_TEST_TAG", "from-env")
	os.Unsetenv("SUPERD_TEST_UNSET")
	cert, key := certPair(t, "localhost")
	dir := writeFiles(t, map[string]string{
		"superd.hcl":     validConfig,
		"greeting.txt":   "hi there\n",
		"tls/server.crt": cert,
		"tls/server.key": key,
		"tls/ca.crt":     cert,
	})
	path := filepath.Join(dir, "superd.hcl")
	f, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if f.Path != path || f.Dir != dir {
		t.Errorf("Path, Dir = %q, %q; want %q, %q", f.Path, f.Dir, path, dir)
	}
	if f.MetricsAddress != "127.0.0.1:19464" {
		t.Errorf("MetricsAddress = %q", f.MetricsAddress)
	}
	if f.ShutdownTimeout != 90*time.Second {
		t.Errorf("ShutdownTimeout = %v", f.ShutdownTimeout)
	}
	if len(f.Warnings) != 0 {
		t.Errorf("Warnings = %v", f.Warnings)
	}

	mustPrefix := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	type want struct {
		name, factory string
		limits        Limits
		endpoints     []endpoint.Config
		config        any
	}
	wants := []want{
		{
			name: "alpha", factory: "testfactory",
			limits: Limits{
				MaxConnections:      100,
				MaxConnectionsPerIP: 5,
				IdleTimeout:         30 * time.Second,
				Allow: []netip.Prefix{
					mustPrefix("10.0.0.0/8"), mustPrefix("192.168.1.7/32"),
					mustPrefix("2001:db8::/32"), mustPrefix("::1/128"),
					mustPrefix("10.2.0.0/16"), mustPrefix("1.2.3.0/24"),
				},
				Deny:             []netip.Prefix{mustPrefix("10.1.0.0/16")},
				RateLimit:        &Rate{Rate: 0.5, Burst: 1},
				RateLimitPerIP:   &Rate{Rate: 10, Burst: 20},
				IPv6Prefix:       56,
				MaxPendingOutput: 65536,
			},
			endpoints: []endpoint.Config{
				{Kind: "tcp", Label: "tcp:127.0.0.1:17007", Addr: endpoint.Address{Network: "tcp", Host: "127.0.0.1", Port: 17007}},
				{Kind: "tcp", Label: "tcp:[::1]:17007", Addr: endpoint.Address{Network: "tcp", Host: "::1", Port: 17007}},
				{
					Kind: "tls", Label: "tls::17443", Addr: endpoint.Address{Network: "tcp", Port: 17443},
					CertFile:     filepath.Join(dir, "tls/server.crt"),
					KeyFile:      filepath.Join(dir, "tls/server.key"),
					ClientCAFile: filepath.Join(dir, "tls/ca.crt"),
					MinVersion:   tls.VersionTLS13,
				},
				{Kind: "unix", Label: "unix:alpha.sock", Addr: endpoint.Address{Network: "unix", Path: filepath.Join(dir, "alpha.sock")}, Mode: 0o600},
			},
			config: &testConfig{Greeting: "hi there\n", Repeat: 1, Tags: []string{"a", "from-env"}},
		},
		{
			name: "beta", factory: "testecho",
			limits: DefaultLimits(),
			endpoints: []endpoint.Config{
				{Kind: "tls", Label: "tls:127.0.0.1:17444", Addr: endpoint.Address{Network: "tcp", Host: "127.0.0.1", Port: 17444}, SelfSigned: true, MinVersion: tls.VersionTLS12},
				{Kind: "unix", Label: "unix:/tmp/superd-config-test-beta.sock", Addr: endpoint.Address{Network: "unix", Path: "/tmp/superd-config-test-beta.sock"}, Mode: 0o660},
			},
		},
		{
			name: "gamma", factory: "testneeds",
			limits: DefaultLimits(),
			endpoints: []endpoint.Config{
				{Kind: "tcp", Label: "tcp:localhost:0", Addr: endpoint.Address{Network: "tcp", Host: "127.0.0.1"}},
				{Kind: "tcp", Label: "tcp:127.0.0.1:0", Addr: endpoint.Address{Network: "tcp", Host: "127.0.0.1"}},
			},
			config: &needsConfig{Target: "fallback"},
		},
	}
	if len(f.Services) != len(wants) {
		t.Fatalf("%d services, want %d", len(f.Services), len(wants))
	}
	for i, w := range wants {
		s := f.Services[i]
		if s.Name != w.name || s.Factory != w.factory {
			t.Errorf("service %d is %s/%s, want %s/%s", i, s.Factory, s.Name, w.factory, w.name)
			continue
		}
		if spec, _ := framework.Lookup(w.factory); s.Spec != spec {
			t.Errorf("%s: Spec = %p, want the registered %p", w.name, s.Spec, spec)
		}
		if f.Service(w.name) != s {
			t.Errorf("File.Service(%q) is not the service", w.name)
		}
		if !reflect.DeepEqual(s.Limits, w.limits) {
			t.Errorf("%s: Limits =\n%+v\nwant\n%+v", w.name, s.Limits, w.limits)
		}
		if !reflect.DeepEqual(s.Endpoints, w.endpoints) {
			t.Errorf("%s: Endpoints =\n%+v\nwant\n%+v", w.name, s.Endpoints, w.endpoints)
		}
		if !reflect.DeepEqual(s.FactoryConfig, w.config) {
			t.Errorf("%s: FactoryConfig = %#v, want %#v", w.name, s.FactoryConfig, w.config)
		}
		if s.Fingerprint == "" || s.DefRange.Filename != path {
			t.Errorf("%s: Fingerprint %q, DefRange %v", w.name, s.Fingerprint, s.DefRange)
		}
	}
	if f.Services[0].Fingerprint == f.Services[1].Fingerprint {
		t.Error("two different services have one fingerprint")
	}
}

func TestDefaults(t *testing.T) {
	dir := writeFiles(t, map[string]string{"superd.hcl": `service "testfactory" "x" {
  endpoint "tcp" { address = ":0" }
}
`})
	f, err := Load(filepath.Join(dir, "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if f.MetricsAddress != DefaultMetricsAddress || f.ShutdownTimeout != DefaultShutdownTimeout {
		t.Errorf("MetricsAddress, ShutdownTimeout = %q, %v", f.MetricsAddress, f.ShutdownTimeout)
	}
	s := f.Services[0]
	want := DefaultLimits()
	if !reflect.DeepEqual(s.Limits, want) {
		t.Errorf("Limits = %+v, want %+v", s.Limits, want)
	}
	if cfg := s.FactoryConfig.(*testConfig); !reflect.DeepEqual(cfg, &testConfig{Greeting: "hello", Repeat: 1}) {
		t.Errorf("FactoryConfig = %#v", cfg)
	}
}

func TestMetricsDisabled(t *testing.T) {
	f, err := Parse([]byte(`metrics { address = "" }
shutdown_timeout = "0s"
service "testecho" "e" {
  endpoint "tcp" { address = "127.0.0.1:9464" }
}
`), filepath.Join(t.TempDir(), "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if f.MetricsAddress != "" || f.ShutdownTimeout != 0 {
		t.Errorf("MetricsAddress, ShutdownTimeout = %q, %v", f.MetricsAddress, f.ShutdownTimeout)
	}
}

func TestRateBurstDefault(t *testing.T) {
	f, err := Parse([]byte(`service "testecho" "e" {
  rate_limit { rate = 2.5 }
  rate_limit_per_ip { rate = 0.1 }
  endpoint "tcp" { address = ":0" }
}
`), filepath.Join(t.TempDir(), "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	l := f.Services[0].Limits
	if *l.RateLimit != (Rate{2.5, 3}) || *l.RateLimitPerIP != (Rate{0.1, 1}) {
		t.Errorf("RateLimit %+v, RateLimitPerIP %+v", *l.RateLimit, *l.RateLimitPerIP)
	}
}

// TestMissingFile: a file that is not there has no position to show (no
// "FILE:1,1-1"): the error names the file looked for, by its absolute path.
func TestMissingFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	_, err := Load("nope.hcl")
	var fe *FileError
	if !errors.As(err, &fe) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("error %v (%T), want a *FileError for a missing file", err, err)
	}
	want := "configuration file " + filepath.Join(dir, "nope.hcl") + " does not exist"
	if err.Error() != want || fe.Path != filepath.Join(dir, "nope.hcl") {
		t.Errorf("error %q (Path %q), want %q", err, fe.Path, want)
	}
}

func TestUnreadableFile(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(dir) // a folder
	var fe *FileError
	if !errors.As(err, &fe) || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("error %v (%T), want a *FileError", err, err)
	}
	if want := "cannot read configuration file " + dir + ": "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want it to start with %q", err, want)
	}
}

// TestFileTooLarge: a file over MaxFileSize is refused before it is
// parsed (a log file given as the configuration took minutes and gigabytes
// to be found wrong, at a running superd's SIGHUP too), and so is a device
// that never ends.
func TestFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "superd.hcl")
	line := "# " + strings.Repeat("x", 97) + "\n"
	src := strings.Repeat(line, MaxFileSize/len(line)+1)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, "/dev/zero"} {
		_, err := Load(p)
		var fe *FileError
		if !errors.As(err, &fe) || !errors.Is(err, ErrFileTooLarge) {
			t.Fatalf("Load(%s): error %v (%T), want a *FileError for a file too large", p, err, err)
		}
		if want := "cannot read configuration file " + p + ": it is over 4 MiB"; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("error %q, want it to start with %q", err, want)
		}
	}
	// Within the limit, the same lines are read and parsed.
	if err := os.WriteFile(path, []byte(src[:len(src)-2*len(line)]), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Fatalf("Load of a file within the limit: %v", err)
	}
}

func TestWriteShowsSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "superd.hcl")
	_, err := Parse([]byte("service \"testecko\" \"x\" {\n\tendpoint \"tcp\" { address = \":0\" }\n}\n"), path)
	got := diagText(t, err)
	want := path + `:1,9-19: Unknown factory; There is no factory named "testecko". Did you mean "testecho"?
    1 | service "testecko" "x" {
      |         ^^^^^^^^^^
`
	if got != want {
		t.Errorf("Write printed\n%s\nwant\n%s", got, want)
	}
}

// The carets stand under the text as a terminal shows it: a byte order
// mark at the start of the file takes no column (nor is it printed), and
// a wide character two.
func TestWriteCaretsUnderWideText(t *testing.T) {
	path := filepath.Join(t.TempDir(), "superd.hcl")
	for _, tc := range []struct {
		name, src, want string
	}{
		{"byte order mark", "\ufeffservice \"testecko\" \"x\" {\n\tendpoint \"tcp\" { address = \":0\" }\n}\n", `
    1 | service "testecko" "x" {
      |         ^^^^^^^^^^
`},
		{"wide characters", "service \"テスト\" \"名前\" {\n\tendpoint \"tcp\" { address = \":0\" }\n}\n", `
    1 | service "テスト" "名前" {
      |         ^^^^^^^^
`},
		{"after wide characters", "service \"testecho\" \"名前\" { bogus = 1 }\n", `
    1 | service "testecho" "名前" { bogus = 1 }
      |                             ^^^^^
`},
		// Control characters are shown, not written: a lone carriage
		// return rewrote the line on a terminal, an escape drove it, a
		// right-to-left override reordered what follows.
		{"a carriage return inside a line", "metrics { address = \"\" }\rshutdown_timeout = \"x\"\r\n", `
    1 | metrics { address = "" }␍shutdown_timeout = "x"
      |                         ^
`},
		{"escapes and an override", "shutdown_timeout = \"\u202ex\x1b[31m\" # \x1b[2J\x00\u2028\r\n", `
    1 | shutdown_timeout = "�x␛[31m" # ␛[2J␀�
      |                    ^^^^^^^^^
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src), path)
			got := diagText(t, err)
			if !strings.Contains("\n"+got, tc.want) {
				t.Errorf("Write printed\n%s\nwant the snippet\n%s", got, tc.want)
			}
			if i := strings.IndexFunc(got, func(r rune) bool {
				return r < 0x20 && r != '\n' && r != '\t' || r == 0x7f || r == '\u202e' || r == '\u2028'
			}); i >= 0 {
				t.Errorf("Write printed a control character (%q at %d):\n%q", got[i:i+1], i, got)
			}
		})
	}
}

// TestCommonAttributesTheSame: `superd factories` lists the common
// attributes in this order, and a description that reads "the same, per
// ..." must come right after the attribute it is the same as
// (max_connections_per_ip after max_connections, rate_limit_per_ip after
// rate_limit), not after another one.
func TestCommonAttributesTheSame(t *testing.T) {
	for i, a := range CommonAttributes {
		if !strings.HasPrefix(a.Description, "the same") {
			continue
		}
		if i == 0 || !strings.HasPrefix(a.Name, CommonAttributes[i-1].Name+"_") {
			prev := ""
			if i > 0 {
				prev = CommonAttributes[i-1].Name
			}
			t.Errorf("%s (%q) follows %q, not the attribute it is the same as", a.Name, a.Description, prev)
		}
	}
}
