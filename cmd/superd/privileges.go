package main

import (
	"fmt"
	"log/slog"
	"os"
	"syscall"

	"github.com/superd-dev/superd/config"
)

// checkRunAs fails early when the configuration asks for a user superd
// cannot become.
func checkRunAs(r *config.RunAs) error {
	if r == nil || os.Geteuid() == 0 || (r.UID == os.Geteuid() && r.GID == os.Getegid()) {
		return nil
	}
	return fmt.Errorf("user = %q needs superd to start as root (it runs as uid %d)", r.User, os.Geteuid())
}

// dropPrivileges switches the whole process (every thread) to r: its
// supplementary groups, then its group, then its user, so nothing of
// root's is left. It runs once every socket is bound and every factory
// has started.
func dropPrivileges(log *slog.Logger, r *config.RunAs) error {
	if r == nil || (os.Geteuid() == r.UID && os.Getegid() == r.GID) {
		return nil
	}
	groups := r.Groups
	if groups == nil {
		groups = []int{}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(r.GID); err != nil {
		return fmt.Errorf("setgid %d: %w", r.GID, err)
	}
	if err := syscall.Setuid(r.UID); err != nil {
		return fmt.Errorf("setuid %d: %w", r.UID, err)
	}
	log.Info("dropped privileges", "user", r.User, "uid", r.UID, "gid", r.GID, "groups", groups)
	return nil
}
