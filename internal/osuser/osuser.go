// Package osuser finds the users and groups a configuration names, by name
// or by number: superd's own identity (top-level user and group), the
// owners of its unix sockets, and the identity of exec's programs. One
// place, so that all three take the same names the same way.
package osuser

import (
	"fmt"
	"math"
	"os/user"
	"strconv"
)

// noID is (uid_t)-1, or (gid_t)-1, which chown and setresuid take to mean
// "unchanged" and setuid refuses: no user or group has it.
const noID = math.MaxUint32

// LookupUser finds a user by name or number. A number without an entry in
// the user database is a user all the same (its group the same number), as
// chown and setuid take it.
func LookupUser(name string) (*user.User, error) {
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		if n == noID {
			return nil, fmt.Errorf("there is no user %q on this system (it is (uid_t)-1, which means \"unchanged\" to the system)", name)
		}
		if u, err := user.LookupId(strconv.FormatUint(n, 10)); err == nil {
			return u, nil
		}
		id := strconv.FormatUint(n, 10)
		return &user.User{Uid: id, Gid: id, Username: name}, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("there is no user %q on this system", name)
	}
	return u, nil
}

// LookupGroup finds a group by name or number, and returns its gid.
func LookupGroup(name string) (uint32, error) {
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		if n == noID {
			return 0, fmt.Errorf("there is no group %q on this system (it is (gid_t)-1, which means \"unchanged\" to the system)", name)
		}
		return uint32(n), nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("there is no group %q on this system", name)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q has gid %q, not a number", name, g.Gid)
	}
	return uint32(n), nil
}
