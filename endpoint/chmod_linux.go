package endpoint

import (
	"errors"
	"io/fs"
	"strconv"

	"golang.org/x/sys/unix"
)

// dirOpenFlags opens a folder for the *at calls only (no read permission
// needed).
const dirOpenFlags = unix.O_PATH

// chmodSocketAt sets the mode of the file name in the folder dirfd, which
// must be a socket (and the one want identifies, when it is not zero), and
// returns its identity (also when setting the mode fails: the socket is
// known then).
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
func chmodSocketAt(dirfd int, name string, mode fs.FileMode, want fileID) (fileID, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fileID{}, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, err
	}
	id, err := checkSocket(&st, want)
	if err != nil {
		return fileID{}, err
	}
	err = unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), uint32(mode))
	if errors.Is(err, unix.ENOENT) {
		// No /proc: fchmodat2 (Linux 6.6) changes the inode fd holds
		// without it.
		err = unix.Fchmodat(fd, "", uint32(mode), unix.AT_EMPTY_PATH)
	}
	return id, err
}
