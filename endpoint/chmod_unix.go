//go:build unix && !linux

package endpoint

import "golang.org/x/sys/unix"

// dirOpenFlags opens a folder for the *at calls.
const dirOpenFlags = unix.O_RDONLY

// setSocketAttrsAt gives the file name in the folder dirfd its owner and
// group (when a changes them), then its mode. The file must be a socket
// (and the one want identifies, when it is not zero). It returns the
// file's identity (also when a change fails: the socket is known then),
// the owner, group and mode it had, and the name of the call that failed
// ("chown" or "chmod"). What the file has already is not set again.
//
// These systems cannot open a socket file to pin it (Linux's O_PATH), but
// their fchownat and fchmodat honour AT_SYMLINK_NOFOLLOW: owner and mode
// are set by name, and never through a symbolic link. (Something other
// than a symbolic link swapped in between the check and the change would
// get them; only someone who may write to the folder can do that.)
func setSocketAttrsAt(dirfd int, name string, a fileAttrs, want fileID) (fileID, fileAttrs, string, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fileID{}, fileAttrs{}, "lstat", err
	}
	id, err := checkSocket(&st, want)
	if err != nil {
		return fileID{}, fileAttrs{}, "", err
	}
	prev := attrsOf(&st)
	chown, chmod := a.changes(prev)
	if chown {
		if err := unix.Fchownat(dirfd, name, a.uid, a.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return id, prev, "chown", err
		}
	}
	if !chown && !chmod {
		return id, prev, "", nil
	}
	return id, prev, "chmod", unix.Fchmodat(dirfd, name, uint32(a.mode.Perm()), unix.AT_SYMLINK_NOFOLLOW)
}
