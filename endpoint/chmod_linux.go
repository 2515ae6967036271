package endpoint

import (
	"errors"
	"strconv"

	"golang.org/x/sys/unix"
)

// dirOpenFlags opens a folder for the *at calls only (no read permission
// needed).
const dirOpenFlags = unix.O_PATH

// setSocketAttrsAt gives the file name in the folder dirfd its owner and
// group (when a changes them), then its mode. The file must be a socket
// (and the one want identifies, when it is not zero). It returns the
// file's identity (also when a change fails: the socket is known then),
// the owner, group and mode it had, and the name of the call that failed
// ("chown" or "chmod"). What the file has already is not set again: a
// reload that keeps the socket and its attributes needs no permission to
// change them (superd may have dropped root since it made the file).
//
// Linux's chmod and fchmodat follow a symbolic link, and fchmodat's
// AT_SYMLINK_NOFOLLOW is not supported (fchmodat2 has it only since 6.6).
// So the file itself is opened with O_PATH|O_NOFOLLOW, which needs no
// permission, reads nothing and, on a symbolic link, opens the link rather
// than its target; fstat of that descriptor tells what was opened, and the
// mode is set on that very inode: fchmod refuses O_PATH descriptors, but
// chmod of the descriptor's /proc/self/fd entry reaches the inode it holds
// (what glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does). The check and the
// change act on one pinned inode, so nothing swapped in at the path in
// between is touched.
//
// The owner is changed on that pinned inode too: fchownat with
// AT_EMPTY_PATH acts on the file an O_PATH descriptor holds (Linux 2.6.39).
// It comes before the mode, so the mode is exactly the one asked for
// whatever chown clears.
func setSocketAttrsAt(dirfd int, name string, a fileAttrs, want fileID) (fileID, fileAttrs, string, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fileID{}, fileAttrs{}, "open", err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, fileAttrs{}, "fstat", err
	}
	id, err := checkSocket(&st, want)
	if err != nil {
		return fileID{}, fileAttrs{}, "", err
	}
	prev := attrsOf(&st)
	chown, chmod := a.changes(prev)
	if chown {
		if err := unix.Fchownat(fd, "", a.uid, a.gid, unix.AT_EMPTY_PATH); err != nil {
			return id, prev, "chown", err
		}
	}
	if !chown && !chmod {
		return id, prev, "", nil
	}
	err = unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), uint32(a.mode.Perm()))
	if errors.Is(err, unix.ENOENT) {
		// No /proc: fchmodat2 (Linux 6.6) changes the inode fd holds
		// without it.
		err = unix.Fchmodat(fd, "", uint32(a.mode.Perm()), unix.AT_EMPTY_PATH)
	}
	return id, prev, "chmod", err
}
