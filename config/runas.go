package config

import (
	"fmt"
	"math"
	"os/user"
	"strconv"

	"github.com/hashicorp/hcl/v2"

	"github.com/superd-dev/superd/framework"
)

// RunAs is the identity superd drops to after starting (top-level user and
// group).
type RunAs struct {
	User  string // as written
	Group string // as written; "" for the user's primary group
	UID   int
	GID   int
	// Groups are the supplementary groups: the user's own, from the group
	// database (as login would give them).
	Groups []int
}

// Same reports whether r and o are the same identity.
func (r *RunAs) Same(o *RunAs) bool {
	if r == nil || o == nil {
		return r == o
	}
	return r.UID == o.UID && r.GID == o.GID
}

// identity is r for factories (framework.Env's RunAs); nil for none.
func (r *RunAs) identity() *framework.Identity {
	if r == nil {
		return nil
	}
	return &framework.Identity{UID: r.UID, GID: r.GID, Groups: r.Groups}
}

func (d *decoder) decodeRunAs(content *hcl.BodyContent) {
	ua, ok := content.Attributes["user"]
	ga, gok := content.Attributes["group"]
	if !ok {
		if gok {
			d.errorf(ga.NameRange, "Group without user", "group sets the group superd switches to with user; set user as well.")
		}
		return
	}
	// The group is checked also when the user is wrong, so that both
	// mistakes are reported at once.
	var r *RunAs
	if name, good := d.str(ua); good {
		if u, err := lookupUser(name); err != nil {
			d.errorf(ua.Expr.Range(), "Unknown user", "%s.", err)
		} else {
			r = &RunAs{User: name}
			r.UID, _ = strconv.Atoi(u.Uid)
			r.GID, _ = strconv.Atoi(u.Gid)
			if ids, err := u.GroupIds(); err == nil {
				for _, id := range ids {
					if n, err := strconv.Atoi(id); err == nil {
						r.Groups = append(r.Groups, n)
					}
				}
			}
		}
	}
	if gok {
		g, good := d.str(ga)
		if !good {
			return
		}
		gid, err := lookupGroup(g)
		if err != nil {
			d.errorf(ga.Expr.Range(), "Unknown group", "%s.", err)
			return
		}
		if r != nil {
			r.Group, r.GID = g, gid
		}
	}
	d.file.RunAs = r
}

// isNoID reports whether name is the number (uid_t)-1 (or (gid_t)-1),
// which chown and setresuid take to mean "unchanged" and setuid refuses:
// no user or group has it.
func isNoID(name string) bool {
	n, err := strconv.ParseUint(name, 10, 32)
	return err == nil && n == math.MaxUint32
}

// lookupUser finds a user by name or number.
func lookupUser(name string) (*user.User, error) {
	if isNoID(name) {
		return nil, fmt.Errorf("there is no user %q on this system (it is (uid_t)-1, which means \"unchanged\" to the system)", name)
	}
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		if u, err := user.LookupId(name); err == nil {
			return u, nil
		}
		return &user.User{Uid: name, Gid: name, Username: name}, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("there is no user %q on this system", name)
	}
	return u, nil
}

// lookupGroup finds a group by name or number.
func lookupGroup(name string) (int, error) {
	if isNoID(name) {
		return 0, fmt.Errorf("there is no group %q on this system (it is (gid_t)-1, which means \"unchanged\" to the system)", name)
	}
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return int(n), nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("there is no group %q on this system", name)
	}
	return strconv.Atoi(g.Gid)
}
