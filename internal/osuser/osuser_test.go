package osuser

import (
	"strings"
	"testing"
)

func TestLookupUser(t *testing.T) {
	for _, tc := range []struct {
		name, uid, gid, err string
	}{
		{name: "root", uid: "0", gid: "0"},
		{name: "0", uid: "0", gid: "0"},
		{name: "00", uid: "0", gid: "0"},
		{name: "4000000", uid: "4000000", gid: "4000000"}, // no entry: the number, as chown takes it
		{name: "4294967295", err: "(it is (uid_t)-1"},
		{name: "04294967295", err: "(it is (uid_t)-1"},
		{name: "4294967296", err: `there is no user "4294967296"`},
		{name: "no-such-user-superd", err: `there is no user "no-such-user-superd" on this system`},
	} {
		u, err := LookupUser(tc.name)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("LookupUser(%q) = %v, %v; want an error with %q", tc.name, u, err, tc.err)
			}
		case err != nil:
			t.Errorf("LookupUser(%q): %v", tc.name, err)
		case u.Uid != tc.uid || u.Gid != tc.gid:
			t.Errorf("LookupUser(%q) = uid %s gid %s, want %s %s", tc.name, u.Uid, u.Gid, tc.uid, tc.gid)
		}
	}
}

func TestLookupGroup(t *testing.T) {
	for _, tc := range []struct {
		name string
		gid  uint32
		err  string
	}{
		{name: "root", gid: 0},
		{name: "0", gid: 0},
		{name: "4000000", gid: 4000000},
		{name: "4294967295", err: "(it is (gid_t)-1"},
		{name: "no-such-group-superd", err: `there is no group "no-such-group-superd" on this system`},
	} {
		gid, err := LookupGroup(tc.name)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("LookupGroup(%q) = %d, %v; want an error with %q", tc.name, gid, err, tc.err)
			}
		case err != nil:
			t.Errorf("LookupGroup(%q): %v", tc.name, err)
		case gid != tc.gid:
			t.Errorf("LookupGroup(%q) = %d, want %d", tc.name, gid, tc.gid)
		}
	}
}
