//go:build unix && !linux

package endpoint

import (
	"io/fs"

	"golang.org/x/sys/unix"
)

// dirOpenFlags opens a folder for the *at calls.
const dirOpenFlags = unix.O_RDONLY

// chmodSocketAt sets the mode of the file name in the folder dirfd, which
// must be a socket (and the one want identifies, when it is not zero), and
// returns its identity (also when setting the mode fails: the socket is
// known then).
//
// These systems cannot open a socket file to pin it (Linux's O_PATH), but
// their fchmodat honours AT_SYMLINK_NOFOLLOW: the mode is set by name, and
// never through a symbolic link. (Something other than a symbolic link
// swapped in between the check and the change would get the mode; only
// someone who may write to the folder can do that.)
func chmodSocketAt(dirfd int, name string, mode fs.FileMode, want fileID) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fileID{}, err
	}
	id, err := checkSocket(&st, want)
	if err != nil {
		return fileID{}, err
	}
	return id, unix.Fchmodat(dirfd, name, uint32(mode), unix.AT_SYMLINK_NOFOLLOW)
}
