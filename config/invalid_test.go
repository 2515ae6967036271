package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// wantDiag is one diagnostic expected in Write's output: a line starting
// with FILE:POS: and holding the summary (and detail, when given).
type wantDiag struct {
	pos, summary, detail string
}

func TestInvalid(t *testing.T) {
	cert, key := certPair(t, "localhost")
	otherCert, _ := certPair(t, "other")
	tests := []struct {
		name  string
		hcl   string
		files map[string]string
		want  []wantDiag
	}{
		{
			name: "syntax error",
			hcl: `service "testecho" "e" {
  endpoint "tcp" { address = }
}
`,
			want: []wantDiag{{"2,30-31", "Invalid expression", "Expected the start of an expression"}},
		},
		{
			name: "unknown top-level attribute",
			hcl: `shutdown_timout = "1s"
`,
			want: []wantDiag{{"1,1-16", "Unsupported argument", `Did you mean "shutdown_timeout"?`}},
		},
		{
			name: "unknown top-level block",
			hcl: `servce "testecho" "e" {}
`,
			want: []wantDiag{{"1,1-7", "Unsupported block type", `Did you mean "service"?`}},
		},
		{
			name: "unknown factory",
			hcl: `service "testecko" "e" {
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"1,9-19", "Unknown factory", `There is no factory named "testecko". Did you mean "testecho"?`}},
		},
		{
			name: "unknown factory without a close name",
			hcl: `service "zzz" "e" {
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"1,9-14", "Unknown factory", `"testecho", "testfactory" and "testneeds"`}},
		},
		{
			name: "unknown factory attribute",
			hcl: `service "testfactory" "e" {
  greting = "hi"
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"2,3-10", "Unsupported argument", `An argument named "greting" is not expected here. Did you mean "greeting"?`}},
		},
		{
			name: "unknown common attribute",
			hcl: `service "testfactory" "e" {
  max_conections = 4
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"2,3-17", "Unsupported argument", `Did you mean "max_connections"?`}},
		},
		{
			name: "unknown attribute of an unknown factory is not reported",
			hcl: `service "nosuch" "e" {
  quote = "hi"
  max_conections = 1
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"1,9-17", "Unknown factory", ""}},
		},
		{
			name: "factory attribute of the wrong type",
			hcl: `service "testfactory" "e" {
  repeat = "many"
  tags = "a"
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{
				{"2,12-18", "Incorrect attribute value type", "a number is required"},
				{"3,10-13", "Incorrect attribute value type", "list of string required"},
			},
		},
		{
			name: "missing required factory attribute",
			hcl: `service "testneeds" "e" {
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"1,25-25", "Missing required argument", `The argument "target" is required`}},
		},
		{
			name: "object block: unknown attribute",
			hcl: `service "testneeds" "e" {
  target = "x"
  opts { nmae = "n" }
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"3,10-14", "Unsupported argument", `Did you mean "name"?`}},
		},
		{
			name: "object block: wrong type",
			hcl: `service "testneeds" "e" {
  target = "x"
  opts { verify = "maybe" }
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"3,19-26", "Incorrect attribute value type", "a bool is required"}},
		},
		{
			name: "object block: twice",
			hcl: `service "testneeds" "e" {
  target = "x"
  opts {}
  opts {}
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"4,3-7", "Duplicate opts block", ""}},
		},
		{
			name: "object block: twice, with mistakes in the first",
			hcl: `service "testneeds" "e" {
  target = "x"
  opts {
    nmae   = "n"
    verify = "maybe"
  }
  opts {}
  opts {}
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{
				{"4,5-9", "Unsupported argument", `Did you mean "name"?`},
				{"5,14-21", "Incorrect attribute value type", "a bool is required"},
				{"7,3-7", "Duplicate opts block", "Another was defined at "},
				{"8,3-7", "Duplicate opts block", "Another was defined at "},
			},
		},
		{
			name: "object block: the factory rejects an attribute inside",
			hcl: `service "testneeds" "e" {
  target = "x"
  opts {
    verify = true
    name   = "bad"
  }
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"5,5-19", `Invalid value for "opts.name"`, `"bad" is a bad name.`}},
		},
		{
			name: "factory rejects an attribute",
			hcl: `service "testfactory" "e" {
  repeat = 11
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"2,3-14", `Invalid value for "repeat"`, "repeat must be a whole number up to 10."}},
		},
		{
			name: "factory rejects the service",
			hcl: `service "testfactory" "e" {
  greeting = "fail"
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"1,1-26", "Invalid service configuration", `The testfactory factory rejected service "e": greeting says fail.`}},
		},
		{
			name: "bad durations",
			hcl: `shutdown_timeout = "soon"
service "testecho" "e" {
  idle_timeout = "10 s"
  endpoint "tcp" { address = ":0" }
}
service "testecho" "f" {
  idle_timeout = "-1s"
  endpoint "tcp" { address = ":1" }
}
service "testecho" "g" {
  idle_timeout = "9999999999h"
  endpoint "tcp" { address = ":2" }
}
service "testecho" "h" {
  idle_timeout = "-9999999999h"
  endpoint "tcp" { address = ":3" }
}
`,
			want: []wantDiag{
				{"1,20-26", "Invalid duration", `The value of shutdown_timeout, "soon", is not a duration`},
				{"3,18-24", "Invalid duration", `"10 s"`},
				{"7,18-23", "Invalid duration", "must not be negative"},
				{"11,18-31", "Invalid duration", `The value of idle_timeout, "9999999999h", is too long: a duration is at most 2562047h47m16.854775807s.`},
				{"15,18-32", "Invalid duration", "must not be negative"},
			},
		},
		{
			name: "bad CIDRs",
			hcl: `service "testecho" "e" {
  allow = ["10.0.0.0/8", "10.0.0.0/33", "nope"]
  deny  = ["fe80::1%eth0", "::ffff:10.0.0.0/8"]
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{
				{"2,26-39", "Invalid CIDR", `"10.0.0.0/33" in allow is not an address range`},
				{"2,41-47", "Invalid CIDR", `"nope" in allow`},
				{"3,12-26", "Invalid CIDR", "zone"},
				{"3,28-47", "Invalid CIDR", "write 10.0.0.0/8"},
			},
		},
		{
			name: "bad numbers",
			hcl: `service "testecho" "e" {
  max_connections        = -1
  max_connections_per_ip = 1.5
  ipv6_prefix            = 129
  max_pending_output     = 1000
  endpoint "tcp" { address = ":0" }
}
service "testecho" "f" {
  max_connections        = 9223372036854775808
  max_connections_per_ip = 1e19
  endpoint "tcp" { address = ":1" }
}
`,
			want: []wantDiag{
				{"2,28-30", "Value out of range", "max_connections must be at least 0, not -1."},
				{"3,28-31", "Invalid whole number", "max_connections_per_ip must be a whole number, not 1.5."},
				{"4,28-31", "Value out of range", "ipv6_prefix must be from 0 to 128, not 129."},
				{"5,28-32", "Value out of range", "max_pending_output must be at least 65536, not 1000."},
				// 2^63 is one past the largest: not clamped to it.
				{"9,28-47", "Value out of range", "max_connections must be at most 9223372036854775807, not 9223372036854775808."},
				{"10,28-32", "Value out of range", "max_connections_per_ip must be at most 9223372036854775807, not 10000000000000000000."},
			},
		},
		{
			name: "bad rate limits",
			hcl: `service "testecho" "e" {
  rate_limit { rate = 0 }
  rate_limit { rate = 1 }
  rate_limit_per_ip {
    rate  = 1
    burst = 0.5
  }
  endpoint "tcp" { address = ":0" }
}
service "testecho" "f" {
  rate_limit { burst = 1 }
  endpoint "tcp" { address = ":1" }
}
`,
			want: []wantDiag{
				{"2,23-24", "Value out of range", "rate must be a number of new connections per second above 0"},
				{"3,3-13", "Duplicate rate_limit block", "already declared at "},
				{"6,13-16", "Invalid whole number", "burst must be a whole number"},
				{"11,16-16", "Missing required argument", `"rate"`},
			},
		},
		{
			name: "duplicate service names",
			hcl: `service "testecho" "e" {
  endpoint "tcp" { address = ":1" }
}
service "testfactory" "e" {
  endpoint "tcp" { address = ":2" }
}
`,
			want: []wantDiag{{"4,23-26", "Duplicate service name", `A service named "e" was already declared at `}},
		},
		{
			name: "two endpoints on one address",
			hcl: `metrics { address = "127.0.0.1:9000" }
service "testecho" "a" {
  endpoint "tcp"  { address = ":7007" }
  endpoint "unix" { path = "a.sock" }
}
service "testecho" "b" {
  endpoint "tls" {
    address     = "0.0.0.0:7007"
    self_signed = true
  }
  endpoint "tcp"  { address = "[::ffff:127.0.0.1]:9000" }
  endpoint "unix" { path = "./sub/../a.sock" }
  endpoint "tcp"  { address = "127.0.0.1:7008" }
  endpoint "tcp"  { address = "[::1]:7008" }
}
`,
			want: []wantDiag{
				{"8,19-33", "Duplicate endpoint address", `Endpoint "tls:0.0.0.0:7007" of service "b" would listen where endpoint "tcp::7007" of service "a", declared at `},
				{"11,31-56", "Duplicate endpoint address", `the metrics listener "127.0.0.1:9000"`},
				{"12,28-45", "Duplicate endpoint address", `"unix:./sub/../a.sock"`},
			},
		},
		{
			name: "missing TLS certificate file",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address   = ":8443"
    cert_file = "missing.crt"
    key_file  = "server.key"
  }
}
`,
			files: map[string]string{"server.key": key},
			want:  []wantDiag{{"4,17-30", "Cannot read cert_file", "missing.crt: no such file or directory"}},
		},
		{
			name: "TLS file that is a folder",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address        = ":8443"
    self_signed    = true
    client_ca_file = "."
  }
}
`,
			want: []wantDiag{{"5,22-25", "Cannot read client_ca_file", "is not a regular file"}},
		},
		{
			name: "tls without certificates",
			hcl: `service "testecho" "e" {
  endpoint "tls" { address = ":8443" }
}
`,
			want: []wantDiag{{"2,3-17", "Missing TLS certificate", "self_signed = true"}},
		},
		{
			name: "tls with certificates and self_signed",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address     = ":8443"
    cert_file   = "server.crt"
    key_file    = "server.key"
    self_signed = true
  }
}
`,
			files: map[string]string{"server.crt": cert, "server.key": key},
			want:  []wantDiag{{"6,5-23", "Conflicting TLS settings", "not both"}},
		},
		{
			name: "tls with a certificate and no key",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address   = ":8443"
    cert_file = "server.crt"
  }
}
`,
			files: map[string]string{"server.crt": cert},
			want:  []wantDiag{{"2,3-17", "Missing key_file", ""}},
		},
		{
			name: "tls key of another certificate",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address        = ":8443"
    cert_file      = "other.crt"
    key_file       = "server.key"
    client_ca_file = "server.key"
    min_version    = "1.1"
  }
}
`,
			files: map[string]string{"other.crt": otherCert, "server.key": key},
			want: []wantDiag{
				{"4,5-33", "Invalid TLS certificate or key", "private key does not match public key"},
				{"6,5-34", "Invalid client CA file", "holds no PEM certificate"},
				{"7,22-27", "Invalid TLS version", `min_version must be "1.2" or "1.3", not "1.1".`},
			},
		},
		{
			name: "tls with cert_file and certificate blocks",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address   = ":8443"
    cert_file = "server.crt"
    key_file  = "server.key"
    certificate {
      cert_file = "other.crt"
      key_file  = "server.key"
    }
  }
}
`,
			files: map[string]string{"server.crt": cert, "server.key": key, "other.crt": otherCert},
			want: []wantDiag{
				{"6,5-16", "Conflicting TLS settings", "cert_file is set at "},
				{"7,7-30", "Invalid TLS certificate or key", "private key does not match public key"},
			},
		},
		{
			name: "tls with certificate blocks and self_signed",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address     = ":8443"
    self_signed = true
    certificate {
      cert_file = "server.crt"
      key_file  = "server.key"
    }
  }
}
`,
			files: map[string]string{"server.crt": cert, "server.key": key},
			want:  []wantDiag{{"4,5-23", "Conflicting TLS settings", "not both"}},
		},
		{
			name: "tls certificate blocks with problems",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address = ":8443"
    alpn    = ["h2", "", "h2"]
    certificate {
      cert_file = "server.crt"
      key_file  = "server.key"
    }
    certificate {
      cert_file = "missing.crt"
      key_file  = "server.key"
    }
    certificate {
      key_file = "server.key"
    }
    certificate {
      cert_file = "server.crt"
      key_file  = "server.key"
      names     = ["x"]
    }
  }
}
`,
			files: map[string]string{"server.crt": cert, "server.key": key},
			want: []wantDiag{
				{"4,22-24", "Invalid ALPN protocol", "1 to 255 bytes"},
				{"4,26-30", "Duplicate ALPN protocol", `"h2" is already listed, at `},
				{"10,19-32", "Cannot read cert_file", "missing.crt"},
				{"13,17-17", "Missing required argument", `"cert_file" is required`},
				{"17,19-31", "Duplicate certificate block", "is already the certificate of the block at "},
				{"19,7-12", "Unsupported argument", ""},
			},
		},
		{
			name: "tls alpn not a list of strings",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address     = ":8443"
    self_signed = true
    alpn        = "h2"
  }
}
`,
			want: []wantDiag{{"5,19-23", "Incorrect attribute value type", ""}},
		},
		{
			name: "unknown endpoint kind",
			hcl: `service "testecho" "e" {
  endpoint "tpc" { address = ":0" }
}
`,
			want: []wantDiag{{"2,12-17", "Unknown endpoint kind", `There is no endpoint kind "tpc". Did you mean "tcp"?`}},
		},
		{
			name: "unknown endpoint attribute",
			hcl: `service "testecho" "e" {
  endpoint "unix" {
    path = "x.sock"
    mod  = "0600"
  }
}
`,
			want: []wantDiag{{"4,5-8", "Unsupported argument", `Did you mean "mode"?`}},
		},
		{
			name: "no endpoint",
			hcl: `service "testecho" "e" {
}
`,
			want: []wantDiag{{"1,1-23", "Missing endpoint", `Service "e" has no endpoint`}},
		},
		{
			name: "bad addresses",
			hcl: `metrics { address = "9464" }
service "testecho" "e" {
  endpoint "tcp" { address = "127.0.0.1:http" }
  endpoint "tcp" { address = "::1:80" }
  endpoint "tcp" { address = "bad_host:80" }
  endpoint "tcp" { address = "127.0.0.1:65536" }
}
`,
			want: []wantDiag{
				{"1,21-27", "Invalid address", `"9464" is not HOST:PORT`},
				{"3,30-46", "Invalid address", "must be a number from 0 to 65535"},
				{"4,30-38", "Invalid address", `"::1:80" is not HOST:PORT`},
				{"5,30-43", "Invalid address", "neither an IP address nor a host name"},
				{"6,30-47", "Invalid address", "must be a number from 0 to 65535"},
			},
		},
		{
			name: "bad unix endpoints",
			hcl: `service "testecho" "e" {
  endpoint "unix" {
    path = "a.sock"
    mode = "rw-rw----"
  }
  endpoint "unix" {
    path = "b.sock"
    mode = "01777"
  }
  endpoint "unix" { path = "` + strings.Repeat("x", 120) + `" }
  endpoint "unix" { path = "" }
}
`,
			want: []wantDiag{
				{"4,12-23", "Invalid file mode", `mode "rw-rw----" is not an octal file mode`},
				{"8,12-19", "Invalid file mode", "0000 to 0777"},
				{"10,28-150", "Socket path too long", ""},
				{"11,28-30", "Invalid socket path", ""},
			},
		},
		{
			name: "env unset",
			hcl: `service "testfactory" "e" {
  greeting = env("SUPERD_TEST_SURELY_UNSET")
  endpoint "tcp" { address = env("SUPERD_TEST_SURELY_UNSET_TOO") }
}
`,
			want: []wantDiag{
				{"2,19-43", "Invalid function argument", "the environment variable SUPERD_TEST_SURELY_UNSET is not set"},
				{"3,35-63", "Invalid function argument", "SUPERD_TEST_SURELY_UNSET_TOO is not set"},
			},
		},
		{
			name: "env with too many arguments",
			hcl: `service "testfactory" "e" {
  greeting = env("A", "B", "C")
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"2,29-30", "Invalid function argument", "at most one default"}},
		},
		{
			name: "file unreadable",
			hcl: `service "testfactory" "e" {
  greeting = file("nope.txt")
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"2,20-28", "Invalid function argument", "nope.txt: no such file or directory"}},
		},
		{
			name: "variables are not allowed",
			hcl: `service "testfactory" "e" {
  greeting = var.greeting
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"2,14-17", "Variables not allowed", ""}},
		},
		{
			name: "number out of range",
			hcl: `shutdown_timeout = "${1e999999}"
`,
			want: []wantDiag{{"1,23-31", "Number out of range", ""}},
		},
		{
			name: "duplicate metrics block",
			hcl: `metrics { address = "" }
metrics { address = "" }
`,
			want: []wantDiag{{"2,1-8", "Duplicate metrics block", "already declared at "}},
		},
		{
			name: "null where a value is required",
			hcl: `service "testecho" "e" {
  endpoint "tcp" { address = null }
}
`,
			want: []wantDiag{{"2,30-34", "Invalid value", "address must not be null."}},
		},
		{
			name: "null TLS file",
			hcl: `service "testecho" "e" {
  endpoint "tls" {
    address   = ":8443"
    cert_file = null
    key_file  = null
  }
}
`,
			want: []wantDiag{
				{"4,17-21", "Invalid value", "cert_file must not be null."},
				{"5,17-21", "Invalid value", "key_file must not be null."},
			},
		},
		{
			name: "a number out of range hides nothing else",
			hcl: `service "testecho" "e" {
  max_connections = 1e400
  idle_timeout    = "bogus"
  endpoint "tcp" { address = "127.0.0.1:99999" }
}
`,
			want: []wantDiag{
				{"2,21-26", "Number out of range", ""},
				{"3,21-28", "Invalid duration", ""},
				{"4,30-47", "Invalid address", ""},
			},
		},
		{
			// 100,000 levels overflowed the parser's stack: a fatal
			// error, also for a running superd at reload.
			name: "nested too deeply",
			hcl:  "service \"testecho\" \"e\" {\n  max_connections = " + strings.Repeat("(", 100000) + "1" + strings.Repeat(")", 100000) + "\n}\n",
			want: []wantDiag{{"2,276-277", "Nested too deeply", "at most 256 deep"}},
		},
		{
			name: "unary operators in a row",
			hcl:  "service \"testecho\" \"e\" {\n  max_connections = " + strings.Repeat("-", 1000) + "1\n}\n",
			want: []wantDiag{{"2,277-278", "Nested too deeply", ""}},
		},
		{
			name: "keepalive beyond what the kernel takes, or not whole seconds",
			hcl: `service "testecho" "e" {
  endpoint "tcp" {
    address            = ":0"
    keepalive          = "32768s"
    keepalive_interval = "1.5s"
  }
}
`,
			want: []wantDiag{
				{"4,26-34", "Invalid keepalive", `from "1s" to "32767s"`},
				{"5,26-32", "Invalid keepalive_interval", `from "1s" to "32767s"`},
			},
		},
		{
			name: "no trusted proxies, after another error",
			hcl: `shutdown_timeout = "soon"
service "testecho" "e" {
  endpoint "tcp" {
    address = ":0"
    proxy_protocol { trusted = [] }
  }
}
`,
			want: []wantDiag{
				{"1,20-26", "Invalid duration", ""},
				{"5,32-34", "No trusted proxies", ""},
			},
		},
		{
			name: "an attribute set twice hides nothing else",
			hcl: `shutdown_timeout = "1s"
shutdown_timeout = "2s"
service "testfactory" "e" {
  repeat = 1
  repeat = 2
  greting = "hi"
  idle_timeout = "soon"
  endpoint "tcp" {
    address = ":0"
    address = ":1"
  }
}
`,
			want: []wantDiag{
				{"2,1-17", "Attribute redefined", `The argument "shutdown_timeout" was already set at `},
				{"5,3-9", "Attribute redefined", ""},
				{"6,3-10", "Unsupported argument", `Did you mean "greeting"?`},
				{"7,18-24", "Invalid duration", ""},
				{"10,5-12", "Attribute redefined", ""},
			},
		},
		{
			name: "an attribute set twice after a syntax error",
			hcl: `shutdown_timeout = "1s"
shutdown_timeout = "2s"
service "testecho" "e" {
  endpoint "tcp" { address = }
}
`,
			want: []wantDiag{{"4,30-31", "Invalid expression", ""}},
		},
		{
			name: "an unknown user does not hide an unknown group",
			hcl: `user  = "no-such-user-superd"
group = "no-such-group-superd"
`,
			want: []wantDiag{
				{"1,9-30", "Unknown user", `there is no user "no-such-user-superd"`},
				{"2,9-31", "Unknown group", `there is no group "no-such-group-superd"`},
			},
		},
		{
			name: "user and group (uid_t)-1",
			hcl: `user  = "4294967295"
group = "04294967295"
`,
			want: []wantDiag{
				{"1,9-21", "Unknown user", `there is no user "4294967295" on this system (it is (uid_t)-1`},
				{"2,9-22", "Unknown group", `there is no group "04294967295" on this system (it is (gid_t)-1`},
			},
		},
		{
			name: "a string taken as a number out of range by arithmetic",
			hcl: `service "testfactory" "e" {
  greeting = "1e400" + 0
  tags     = ["1e400", "${-("1e400")}", "${1 * "1e-400"}"]
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{
				{"2,14-21", "Number out of range", "This string is taken as a number here"},
				{"3,29-36", "Number out of range", ""},
				{"3,48-56", "Number out of range", ""},
			},
		},
		{
			name: "access_log twice",
			hcl: `access_log { format = "text" }
access_log { format = "text" }
`,
			want: []wantDiag{{"2,1-11", "Duplicate access_log block", "An access_log block was already declared at "}},
		},
		{
			name: "a misspelt endpoint block is not also missing",
			hcl: `service "testecho" "e" {
  endpiont "tcp" { address = ":0" }
}
service "testecho" "f" {
  listener "tcp" { address = ":1" }
}
`,
			want: []wantDiag{
				{"2,3-11", "Unsupported block type", `Did you mean "endpoint"?`},
				{"4,1-23", "Missing endpoint", ""},
				{"5,3-11", "Unsupported block type", ""},
			},
		},
		{
			name: "a factory number beyond its field's type",
			hcl: `service "testfactory" "e" {
  repeat = 9223372036854775808
  endpoint "tcp" { address = ":0" }
}
`,
			want: []wantDiag{{"2,3-31", `Invalid value for "repeat"`, "repeat must be a whole number from 0 to 9223372036854775807, not 9223372036854775808."}},
		},
		{
			name: "every problem of a file at once",
			hcl: `shutdown_timeout = "x"
service "testecko" "a" {
  endpoint "tcp" { address = ":9" }
}
service "testfactory" "a" {
  greting = 1
  endpoint "tcp" { address = ":9" }
}
`,
			want: []wantDiag{
				{"1,20-23", "Invalid duration", ""},
				{"2,9-19", "Unknown factory", ""},
				{"5,23-26", "Duplicate service name", ""},
				{"6,3-10", "Unsupported argument", ""},
				{"7,30-34", "Duplicate endpoint address", ""},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{"superd.hcl": tt.hcl}
			for name, content := range tt.files {
				files[name] = content
			}
			dir := writeFiles(t, files)
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
			if headers != len(tt.want) {
				t.Errorf("%d diagnostics, want %d:\n%s", headers, len(tt.want), out)
			}
			for _, w := range tt.want {
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
		})
	}
}

func TestNotRegularFileFunction(t *testing.T) {
	dir := t.TempDir()
	_, err := Parse([]byte(`service "testfactory" "e" {
  greeting = file("/dev/zero")
  endpoint "tcp" { address = ":0" }
}
`), filepath.Join(dir, "superd.hcl"))
	if out := diagText(t, err); !strings.Contains(out, "is not a regular file") {
		t.Errorf("output:\n%s", out)
	}
}

func TestFingerprint(t *testing.T) {
	cert, key := certPair(t, "localhost")
	const base = `service "testfactory" "a" {
  greeting = "hello"
  max_connections = 3
  endpoint "tls" {
    address   = "127.0.0.1:8443"
    cert_file = "server.crt"
    key_file  = "server.key"
  }
}
service "testecho" "b" {
  endpoint "tcp" { address = "127.0.0.1:7007" }
}
`
	load := func(t *testing.T, dir, text string) *File {
		t.Helper()
		path := filepath.Join(dir, "superd.hcl")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	dir := writeFiles(t, map[string]string{"server.crt": cert, "server.key": key})
	first := load(t, dir, base)
	a, b := first.Services[0].Fingerprint, first.Services[1].Fingerprint

	same := []struct{ name, text string }{
		{"reloaded as it is", base},
		{"comments and spacing", "# a comment\n" + strings.ReplaceAll(base, " = ", "    =    ")},
		{"default written out", strings.Replace(base, "greeting = \"hello\"", "greeting = \"hello\"\n  repeat = 1", 1)},
		{"default left out", strings.Replace(base, "greeting = \"hello\"\n", "", 1)},
		{"other service reordered", base[strings.Index(base, "service \"testecho\""):] + base[:strings.Index(base, "service \"testecho\"")]},
	}
	for _, s := range same {
		t.Run(s.name, func(t *testing.T) {
			f := load(t, dir, s.text)
			if got := f.Service("a").Fingerprint; got != a {
				t.Errorf("fingerprint of a changed")
			}
			if got := f.Service("b").Fingerprint; got != b {
				t.Errorf("fingerprint of b changed")
			}
		})
	}

	changed := []struct{ name, text string }{
		{"factory attribute", strings.Replace(base, `greeting = "hello"`, `greeting = "hi"`, 1)},
		{"limit", strings.Replace(base, "max_connections = 3", "max_connections = 4", 1)},
		{"endpoint", strings.Replace(base, "127.0.0.1:8443", "127.0.0.1:8444", 1)},
		{"min_version", strings.Replace(base, `key_file  = "server.key"`, `key_file  = "server.key"`+"\n    min_version = \"1.3\"", 1)},
	}
	for _, c := range changed {
		t.Run(c.name, func(t *testing.T) {
			f := load(t, dir, c.text)
			if f.Service("a").Fingerprint == a {
				t.Errorf("fingerprint of a did not change")
			}
			if f.Service("b").Fingerprint != b {
				t.Errorf("fingerprint of b changed")
			}
		})
	}

	t.Run("renewed certificate", func(t *testing.T) {
		cert2, key2 := certPair(t, "localhost")
		writeFile := func(name, content string) {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		writeFile("server.crt", cert2)
		writeFile("server.key", key2)
		f := load(t, dir, base)
		// New contents of the same files: the service is kept, its
		// certificates are swapped in place.
		if f.Service("a").Fingerprint != a {
			t.Errorf("fingerprint of a changed")
		}
		if f.Service("a").CertFingerprint == first.Service("a").CertFingerprint {
			t.Errorf("certificate fingerprint of a did not change")
		}
		if f.Service("b").Fingerprint != b || f.Service("b").CertFingerprint != "" {
			t.Errorf("fingerprint of b changed, or b (no tls) has a certificate fingerprint %q", f.Service("b").CertFingerprint)
		}
	})
}

// What replaces a tls service on reload, and what only swaps its
// certificates: Fingerprint holds the paths of certificate and key files,
// the order of the certificate blocks, alpn and the contents of client CA
// files; CertFingerprint the contents of certificate and key files.
func TestCertFingerprint(t *testing.T) {
	files := map[string]string{}
	for _, n := range []string{"one", "two", "three"} {
		files[n+".crt"], files[n+".key"] = certPair(t, n+".example")
	}
	files["ca.crt"] = files["three.crt"]
	dir := writeFiles(t, files)
	const base = `service "testecho" "s" {
  endpoint "tls" {
    address        = "127.0.0.1:8443"
    alpn           = ["h2", "http/1.1"]
    client_ca_file = "ca.crt"
    certificate {
      cert_file = "one.crt"
      key_file  = "one.key"
    }
    certificate {
      cert_file = "two.crt"
      key_file  = "two.key"
    }
  }
}
`
	load := func(t *testing.T, text string) *Service {
		t.Helper()
		path := filepath.Join(dir, "superd.hcl")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := Load(path)
		if err != nil {
			t.Fatal(diagText(t, err))
		}
		return f.Service("s")
	}
	write := func(t *testing.T, name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	first := load(t, base)
	if first.CertFingerprint == "" {
		t.Fatal("no certificate fingerprint")
	}
	eps := first.Endpoints[0]
	if len(eps.Certificates) != 2 || eps.Certificates[1].CertFile != filepath.Join(dir, "two.crt") ||
		eps.Certificates[1].KeyFile != filepath.Join(dir, "two.key") || eps.CertFile != "" {
		t.Errorf("certificates decoded as %+v (cert_file %q)", eps.Certificates, eps.CertFile)
	}
	if !slices.Equal(eps.ALPN, []string{"h2", "http/1.1"}) {
		t.Errorf("alpn decoded as %q", eps.ALPN)
	}

	replaced := []struct{ name, text string }{
		{"paths", strings.ReplaceAll(base, `"two.`, `"three.`)},
		{"blocks reordered", strings.Replace(strings.Replace(strings.Replace(base, "one.", "x.", 2), "two.", "one.", 2), "x.", "two.", 2)},
		{"a block added", strings.Replace(base, "  }\n}\n", "    certificate {\n      cert_file = \"three.crt\"\n      key_file  = \"three.key\"\n    }\n  }\n}\n", 1)},
		{"alpn", strings.Replace(base, `["h2", "http/1.1"]`, `["http/1.1", "h2"]`, 1)},
		{"alpn split differently", strings.Replace(base, `["h2", "http/1.1"]`, `["h2 http/1.1"]`, 1)},
		{"one block as top-level files", base[:strings.Index(base, "    certificate {")] +
			"    cert_file = \"one.crt\"\n    key_file  = \"one.key\"\n  }\n}\n"},
	}
	for _, c := range replaced {
		t.Run(c.name, func(t *testing.T) {
			if load(t, c.text).Fingerprint == first.Fingerprint {
				t.Error("fingerprint did not change: the service would not be replaced")
			}
		})
	}
	t.Run("client CA contents", func(t *testing.T) {
		write(t, "ca.crt", files["one.crt"])
		defer write(t, "ca.crt", files["ca.crt"])
		if load(t, base).Fingerprint == first.Fingerprint {
			t.Error("fingerprint did not change with the client CA's contents")
		}
	})
	for _, pair := range []string{"one", "two"} {
		t.Run("contents of "+pair+".crt and "+pair+".key", func(t *testing.T) {
			write(t, pair+".crt", files["three.crt"])
			write(t, pair+".key", files["three.key"])
			defer write(t, pair+".crt", files[pair+".crt"])
			defer write(t, pair+".key", files[pair+".key"])
			s := load(t, base)
			if s.Fingerprint != first.Fingerprint {
				t.Error("fingerprint changed: the service would be replaced")
			}
			if s.CertFingerprint == first.CertFingerprint {
				t.Error("certificate fingerprint did not change")
			}
		})
	}
	if s := load(t, base); s.Fingerprint != first.Fingerprint || s.CertFingerprint != first.CertFingerprint {
		t.Error("the same files again changed a fingerprint")
	}
}

// TestSyntaxErrorReportedOnce: one missing quote makes HCL's parser report
// every line after it; only the first syntax error of the file is shown,
// at the line where the quote is missing.
func TestSyntaxErrorReportedOnce(t *testing.T) {
	path := filepath.Join("testdata", "missing-quote.hcl")
	_, err := Load(path)
	text := diagText(t, err)
	var de *DiagnosticsError
	errors.As(err, &de)
	if n := len(de.Diagnostics()); n != 1 {
		t.Fatalf("%d diagnostics, want 1:\n%s", n, text)
	}
	if want := path + ":10,26-11,1: Invalid multi-line string; "; !strings.HasPrefix(text, want) {
		t.Errorf("diagnostic:\n%s\nwant it to start with %q", text, want)
	}
	if !strings.Contains(text, `   10 |   greeting = "hello there`) {
		t.Errorf("diagnostic without its source line:\n%s", text)
	}
}

// TestTLSFileHintOnlyForRelativePaths: a TLS file that cannot be read is
// explained by where relative paths resolve only when its path is
// relative; for an absolute path (examples/sni.hcl's, before make run-sni
// has written them) that hint would send the reader looking in the wrong
// place.
func TestTLSFileHintOnlyForRelativePaths(t *testing.T) {
	dir := t.TempDir()
	const hint = "Relative paths resolve against the configuration file's folder"
	for _, tc := range []struct {
		path     string
		wantHint bool
	}{
		{"missing.crt", true},
		{filepath.Join(dir, "missing.crt"), false},
	} {
		_, err := Parse([]byte(`service "testecho" "e" {
  endpoint "tls" {
    address   = ":8443"
    cert_file = "`+tc.path+`"
    key_file  = "`+tc.path+`"
  }
}
`), filepath.Join(dir, "superd.hcl"))
		out := diagText(t, err)
		if !strings.Contains(out, "Cannot read cert_file") || strings.Contains(out, hint) != tc.wantHint {
			t.Errorf("cert_file = %q: hint shown %t, want %t; output:\n%s", tc.path, strings.Contains(out, hint), tc.wantHint, out)
		}
	}
}
