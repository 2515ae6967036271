package config

import (
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/endpoint"
)

// With no metrics block, the metrics listener still binds its default
// address 127.0.0.1:9464 (SPEC section 4). An endpoint on that address
// cannot start, so validate must report it like any other address clash.
func TestDefaultMetricsAddressConflict(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:9464", ":9464"} {
		t.Run(addr, func(t *testing.T) {
			src := `service "testecho" "e" {
  endpoint "tcp" { address = "` + addr + `" }
}
`
			_, err := Parse([]byte(src), filepath.Join(t.TempDir(), "superd.hcl"))
			if err == nil {
				t.Fatalf("endpoint on %s accepted though the default metrics listener binds 127.0.0.1:9464", addr)
			}
			if out := diagText(t, err); !strings.Contains(out, "Duplicate endpoint address") {
				t.Errorf("unexpected diagnostics:\n%s", out)
			}
		})
	}
}

// burst = null leaves burst at its default (as null does for every other
// optional attribute); it does not drop the whole rate limit.
func TestRateBurstNullKeepsLimit(t *testing.T) {
	f, err := Parse([]byte(`service "testecho" "e" {
  rate_limit { 
    rate  = 5
    burst = null
  }
  endpoint "tcp" { address = ":0" }
}
`), filepath.Join(t.TempDir(), "superd.hcl"))
	if err != nil {
		// An error with a position would be acceptable too.
		diagText(t, err)
		return
	}
	if f.Services[0].Limits.RateLimit == nil {
		t.Fatal("rate_limit { rate = 5, burst = null } was accepted and the rate limit silently disabled (RateLimit == nil)")
	}
}

// mode = "0000" is refused: Mode 0 means the default 0660 to the endpoint,
// which would leave the socket far more open than asked.
func TestUnixModeZeroRefused(t *testing.T) {
	dir := t.TempDir()
	f, err := Parse([]byte(`service "testecho" "e" {
  endpoint "unix" {
    path = "z.sock"
    mode = "0000"
  }
}
`), filepath.Join(dir, "superd.hcl"))
	if err != nil {
		// Rejecting "0000" would be consistent too.
		diagText(t, err)
		return
	}
	ep := f.Services[0].Endpoints[0]
	ln, err := endpoint.Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(ep.Addr.Path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0 {
		t.Errorf(`mode = "0000" accepted, but the socket has mode %04o`, got)
	}
}

// validate rejects a client CA file that the endpoint would refuse at
// start (a malformed certificate among good ones): both parse strictly.
func TestClientCACheckedAsAtStart(t *testing.T) {
	cert, key := certPair(t, "localhost")
	bad := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER at all")}))
	dir := writeFiles(t, map[string]string{
		"s.crt":  cert,
		"s.key":  key,
		"ca.crt": bad + cert,
		"superd.hcl": `service "testecho" "e" {
  endpoint "tls" {
    address        = "127.0.0.1:0"
    cert_file      = "s.crt"
    key_file       = "s.key"
    client_ca_file = "ca.crt"
  }
}
`,
	})
	f, err := Load(filepath.Join(dir, "superd.hcl"))
	if err != nil {
		diagText(t, err)
		return // validate caught it: fine
	}
	if _, err := endpoint.NewTLSServer(f.Services[0].Endpoints[0], time.Now()); err != nil {
		t.Errorf("validate accepted client_ca_file, but the endpoint cannot start: %v", err)
	}
}

// validate and start read and parse TLS files with the same functions:
// whatever validate accepts, the endpoint starts with, and whatever it
// refuses, the endpoint refuses too (a certificate padded past the size
// bound used to pass at start, and a FIFO to block it).
func TestTLSFilesCheckedAsAtStart(t *testing.T) {
	cert, key := certPair(t, "localhost")
	_, otherKey := certPair(t, "other")
	padding := strings.Repeat("# padding\n", endpoint.MaxTLSFileSize/10)
	dir := writeFiles(t, map[string]string{
		"s.crt":      cert,
		"s.key":      key,
		"other.key":  otherKey,
		"big.crt":    cert + padding,
		"big.key":    key + padding,
		"big-ca.crt": cert + padding,
		"ca.crt":     cert,
		"sub/x":      "",
	})
	for _, tc := range []struct {
		name, certFile, keyFile, caFile string
	}{
		{"good", "s.crt", "s.key", ""},
		{"good with a client CA", "s.crt", "s.key", "ca.crt"},
		{"certificate too large", "big.crt", "s.key", ""},
		{"key too large", "s.crt", "big.key", ""},
		{"client CA too large", "s.crt", "s.key", "big-ca.crt"},
		{"client CA a folder", "s.crt", "s.key", "sub"},
		{"key of another certificate", "s.crt", "other.key", ""},
		{"missing key", "s.crt", "missing.key", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := ""
			if tc.caFile != "" {
				ca = fmt.Sprintf("client_ca_file = %q", tc.caFile)
			}
			_, verr := Parse([]byte(fmt.Sprintf(`service "testecho" "e" {
  endpoint "tls" {
    address   = "127.0.0.1:0"
    cert_file = %q
    key_file  = %q
    %s
  }
}
`, tc.certFile, tc.keyFile, ca)), filepath.Join(dir, "superd.hcl"))
			ep := endpoint.Config{Kind: endpoint.KindTLS, CertFile: filepath.Join(dir, tc.certFile), KeyFile: filepath.Join(dir, tc.keyFile)}
			if tc.caFile != "" {
				ep.ClientCAFile = filepath.Join(dir, tc.caFile)
			}
			_, serr := endpoint.NewTLSServer(ep, time.Now())
			if (verr == nil) != (serr == nil) {
				t.Errorf("validate says %v\nbut start says %v", verr, serr)
			}
		})
	}
}

// "localhost:P" listens on 127.0.0.1:P, so it clashes with "127.0.0.1:P".
func TestLocalhostConflict(t *testing.T) {
	_, err := Parse([]byte(`metrics { address = "" }
service "testecho" "a" {
  endpoint "tcp" { address = "localhost:17931" }
}
service "testecho" "b" {
  endpoint "tcp" { address = "127.0.0.1:17931" }
}
`), filepath.Join(t.TempDir(), "superd.hcl"))
	if err == nil {
		t.Fatal(`"localhost:17931" and "127.0.0.1:17931" accepted, though both bind 127.0.0.1:17931`)
	}
}

// Numbers beyond float64's range are refused, also when they come from a
// string converted to a number (turning one into text would take minutes).
func TestHugeNumberFromString(t *testing.T) {
	cases := map[string]string{
		"common":  `max_connections = "1e300000000"`,
		"factory": `repeat = "1e300000000"`,
	}
	for name, attr := range cases {
		t.Run(name, func(t *testing.T) {
			src := `service "testfactory" "e" {
  ` + attr + `
  endpoint "tcp" { address = ":0" }
}
`
			done := make(chan error, 1)
			go func() {
				_, err := Parse([]byte(src), filepath.Join(t.TempDir(), "superd.hcl"))
				done <- err
			}()
			select {
			case err := <-done:
				var de *DiagnosticsError
				if !errors.As(err, &de) {
					t.Fatalf("err = %v, want diagnostics", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("Parse of %s still running after 5s", attr)
			}
		})
	}
}

// Numbers multiplied into a size nothing can use are refused before they
// are evaluated: converted to a string (an attribute, an interpolation, a
// function's argument) such a number is written out digit by digit, which
// took 15 s for 20,000 multiplications of 1e300, ten times as many hours.
// What stays within maxScaling is evaluated as usual.
func TestTooManyMultiplications(t *testing.T) {
	// product(n) multiplies n times.
	product := func(n int) string { return strings.Repeat("9e9 * ", n) + "9e9" }
	src := `service "testfactory" "e" {
  greeting = ` + product(maxScaling+1) + `
  tags     = ["${` + product(maxScaling) + `}", env(` + product(maxScaling) + `)]
  endpoint "tcp" { address = ":0" }
}
`
	path := filepath.Join(t.TempDir(), "superd.hcl")
	_, err := Parse([]byte(src), path)
	out := diagText(t, err)
	for _, want := range []string{
		path + ":2,14-",
		path + ":3,14-",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no diagnostic at %s in:\n%s", want, out)
		}
	}
	if n := strings.Count(out, ": Too many multiplications; "); n != 2 {
		t.Errorf("%d diagnostics about multiplications, want 2 (one per attribute):\n%s", n, out)
	}
	if !strings.Contains(out, "multiplies or divides 65 times; one expression may do so at most 64 times.") {
		t.Errorf("the diagnostic does not say how many times, and the limit:\n%s", out)
	}

	// At the limit, the attribute is evaluated (and what it makes is
	// checked as any other value).
	src = `service "testfactory" "e" {
  greeting = ` + product(maxScaling/2) + ` / ` + product(maxScaling/2-2) + ` > 1 ? "big" : "small"
  repeat   = 4 * 1024 / 1024 / 2
  endpoint "tcp" { address = ":0" }
}
`
	f, err := Parse([]byte(src), path)
	if err != nil {
		t.Fatalf("within the limit: %v", err)
	}
	if c := f.Services[0].FactoryConfig.(*testConfig); c.Greeting != "big" || c.Repeat != 2 {
		t.Errorf("greeting %q, repeat %d; want \"big\" and 2", c.Greeting, c.Repeat)
	}
}
