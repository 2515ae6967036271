package config

import (
	"strconv"

	"github.com/hashicorp/hcl/v2"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/osuser"
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
		if u, err := osuser.LookupUser(name); err != nil {
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
		gid, err := osuser.LookupGroup(g)
		if err != nil {
			d.errorf(ga.Expr.Range(), "Unknown group", "%s.", err)
			return
		}
		if r != nil {
			r.Group, r.GID = g, int(gid)
		}
	}
	d.file.RunAs = r
}
