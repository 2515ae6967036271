package config

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/superd-dev/superd/endpoint"
)

func TestUnixEndpointDecoding(t *testing.T) {
	path := filepath.Join(t.TempDir(), "superd.hcl")
	f, err := Parse([]byte(`service "testecho" "u" {
  endpoint "unix" {
    path  = "named.sock"
    owner = "nobody"
    group = "nogroup"
  }
  endpoint "unix" {
    path  = "numbers.sock"
    mode  = "0600"
    owner = "4242"
    group = 4343
  }
  endpoint "unix" {
    path  = "root.sock"
    owner = "root"
  }
  endpoint "unix" { path = "@superd/echo" }
  endpoint "unix" { path = "@a/../b" }
}
`), path)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	file := func(name string) endpoint.Address {
		return endpoint.Address{Network: "unix", Path: filepath.Join(dir, name)}
	}
	want := []endpoint.Config{
		{Kind: "unix", Label: "unix:named.sock", Addr: file("named.sock"), Mode: 0o660, Owner: "nobody", UID: 65534, Group: "nogroup", GID: 65534},
		{Kind: "unix", Label: "unix:numbers.sock", Addr: file("numbers.sock"), Mode: 0o600, Owner: "4242", UID: 4242, Group: "4343", GID: 4343},
		{Kind: "unix", Label: "unix:root.sock", Addr: file("root.sock"), Mode: 0o660, Owner: "root", UID: 0},
		// Abstract: as written (not resolved, not cleaned), no mode.
		{Kind: "unix", Label: "unix:@superd/echo", Addr: endpoint.Address{Network: "unix", Path: "@superd/echo"}},
		{Kind: "unix", Label: "unix:@a/../b", Addr: endpoint.Address{Network: "unix", Path: "@a/../b"}},
	}
	eps := f.Services[0].Endpoints
	if len(eps) != len(want) {
		t.Fatalf("%d endpoints, want %d: %+v", len(eps), len(want), eps)
	}
	for i := range want {
		if !reflect.DeepEqual(eps[i], want[i]) {
			t.Errorf("endpoint %d = %+v, want %+v", i, eps[i], want[i])
		}
	}
	if uid, gid := eps[2].SocketOwner(); uid != 0 || gid != -1 {
		t.Errorf("SocketOwner of owner = \"root\" without group = %d, %d; want 0, -1 (group unchanged)", uid, gid)
	}
}

func TestUnixEndpointDiagnostics(t *testing.T) {
	udpDiags(t, `service "testecho" "u" {
  endpoint "unix" {
    path  = "a.sock"
    owner = "no-such-user-superd"
    group = "no-such-group-superd"
  }
  endpoint "unix" {
    path  = "b.sock"
    owner = "-1"
    group = "4294967295"
  }
  endpoint "unix" {
    path  = "@superd/abstract"
    mode  = "0600"
    owner = "root"
    group = "root"
  }
  endpoint "unix" { path = "@" }
  endpoint "unix" { path = "@superd/abstract" }
  endpoint "unix" { owner = "" }
}
`, []wantDiag{
		{"4,13-34", "Unknown user", `owner "no-such-user-superd" names no user on this system`},
		{"5,13-35", "Unknown group", `group "no-such-group-superd" names no group on this system`},
		{"9,13-17", "Unknown user", `owner "-1"`},
		{"10,13-25", "Unknown group", `group "4294967295"`},
		{"14,5-9", "No file for mode", `path "@superd/abstract" is a Linux abstract socket, which has no file, so no mode`},
		{"15,5-10", "No file for owner", "so no owner"},
		{"16,5-10", "No file for group", "so no group"},
		{"18,28-31", "Invalid socket path", "an abstract socket needs a name after the @"},
		{"19,28-46", "Duplicate endpoint address", `declared at`},
		{"20,21-21", "Missing required argument", `"path" is required`},
		{"20,29-31", "Unknown user", `owner ""`},
	})
}
