//go:build unix

package endpoint

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// foreignIDs returns a uid and gid other than superd's own, to give a
// socket file: only root may. Without root the test is skipped, saying so.
func foreignIDs(t *testing.T) (uid, gid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving a file another owner needs root: run the tests as root (CI does) to check it")
	}
	return 65534, 65533 // nobody, and a group that need not exist
}

// ownerOf reads a file's owner and group without following a symbolic link.
func ownerOf(t *testing.T, path string) (uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

func ownedConfig(path string, mode fs.FileMode, uid, gid int) Config {
	cfg := unixConfig(path, mode)
	if uid >= 0 {
		cfg.Owner, cfg.UID = strconv.Itoa(uid), uid
	}
	if gid >= 0 {
		cfg.Group, cfg.GID = strconv.Itoa(gid), gid
	}
	return cfg
}

// The socket file has its owner, group and mode before the first accept,
// read back from the file itself.
func TestListenUnixOwnerAndGroup(t *testing.T) {
	t.Run("own ids", func(t *testing.T) {
		// Any process may give a file it owns its own uid and gid.
		path := filepath.Join(t.TempDir(), "s.sock")
		ln := listen(t, ownedConfig(path, 0o620, os.Geteuid(), os.Getegid()))
		if uid, gid := ownerOf(t, path); uid != os.Geteuid() || gid != os.Getegid() {
			t.Errorf("owner %d:%d, want %d:%d", uid, gid, os.Geteuid(), os.Getegid())
		}
		if fi, _ := os.Lstat(path); fi.Mode().Perm() != 0o620 {
			t.Errorf("mode %v, want 0620", fi.Mode())
		}
		roundTrip(t, ln)
	})
	t.Run("foreign ids", func(t *testing.T) {
		uid, gid := foreignIDs(t)
		for _, tc := range []struct {
			name             string
			uid, gid         int // asked (-1: not set)
			wantUID, wantGID int
		}{
			{"owner and group", uid, gid, uid, gid},
			{"owner only", uid, -1, uid, os.Getegid()},
			{"group only", -1, gid, os.Geteuid(), gid},
		} {
			t.Run(tc.name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "s.sock")
				ln := listen(t, ownedConfig(path, 0o660, tc.uid, tc.gid))
				if u, g := ownerOf(t, path); u != tc.wantUID || g != tc.wantGID {
					t.Errorf("owner %d:%d, want %d:%d", u, g, tc.wantUID, tc.wantGID)
				}
				if fi, _ := os.Lstat(path); fi.Mode().Perm() != 0o660 {
					t.Errorf("mode %v, want 0660", fi.Mode())
				}
				roundTrip(t, ln)
			})
		}
	})
}

// A path swapped for a symbolic link between bind and the chown: the
// link's target keeps its owner (and mode), and Listen fails.
func TestListenUnixOwnerNeverFollowsSymlink(t *testing.T) {
	uid, gid := foreignIDs(t)
	dir := t.TempDir()
	target := precious(t, dir)
	tu, tg := ownerOf(t, target)
	path := filepath.Join(dir, "s.sock")
	testHookBound = func(p string) { swapForSymlink(t, p, target) }
	t.Cleanup(func() { testHookBound = nil })

	ln, err := Listen(ownedConfig(path, 0o666, uid, gid))
	checkPrecious(t, target)
	if u, g := ownerOf(t, target); u != tu || g != tg {
		t.Errorf("the link's target is now owned by %d:%d, was %d:%d", u, g, tu, tg)
	}
	if u, g := ownerOf(t, path); u == uid || g == gid {
		t.Errorf("the symbolic link itself was given %d:%d", u, g)
	}
	if err == nil {
		ln.Close()
		t.Fatal("Listen succeeded although its socket file was replaced by a symbolic link")
	}
	if !strings.Contains(err.Error(), "is no longer the socket superd bound there (something replaced it); not changing its owner or mode") {
		t.Errorf("error = %q", err)
	}
}

// SetFileAttrs gives a kept socket file a new owner, and never gives one
// to what a symbolic link put in its place points to.
func TestUnixListenerSetFileAttrsOwner(t *testing.T) {
	uid, gid := foreignIDs(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	ln := listen(t, unixConfig(path, 0o600)).(*UnixListener)
	if _, err := ln.SetFileAttrs(ownedConfig(path, 0o640, uid, gid)); err != nil {
		t.Fatal(err)
	}
	if u, g := ownerOf(t, path); u != uid || g != gid {
		t.Errorf("owner %d:%d after SetFileAttrs, want %d:%d", u, g, uid, gid)
	}
	target := precious(t, dir)
	tu, tg := ownerOf(t, target)
	swapForSymlink(t, path, target)
	if _, err := ln.SetFileAttrs(ownedConfig(path, 0o640, uid+1, gid+1)); err == nil {
		t.Error("SetFileAttrs succeeded on a symbolic link")
	}
	if u, g := ownerOf(t, target); u != tu || g != tg {
		t.Errorf("the link's target is now owned by %d:%d, was %d:%d", u, g, tu, tg)
	}
}

// A chown superd may not make fails Listen, says what is needed, and
// leaves no socket file behind.
func TestListenUnixOwnerNotPermitted(t *testing.T) {
	perm := &fs.PathError{Op: "chown", Path: "/run/s.sock", Err: syscall.EPERM}
	if h := hint(unixConfig("/run/s.sock", 0), perm); !strings.Contains(h, "needs root (or CAP_CHOWN)") {
		t.Errorf("hint for EPERM from chown: %q", h)
	}
	if os.Geteuid() == 0 {
		t.Skip("root may give a file any owner: the failing chown is checked only without root")
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(ownedConfig(path, 0o660, 0, -1))
	if err == nil {
		ln.Close()
		t.Fatal("Listen gave the socket file to root without being root")
	}
	if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "CAP_CHOWN") {
		t.Errorf("error = %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file left after the failed chown: %v", err)
	}
}
