package supervisor

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/superd-dev/superd/endpoint"
)

// describeInherited gives a passed socket the address (and so the key) an
// endpoint on the same socket has: a unix path, an abstract "@NAME", none
// for an unnamed socket.
func TestDescribeInheritedUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.sock")
	abstract := fmt.Sprintf("@superd-test/%d/describe", os.Getpid())
	for _, tc := range []struct {
		name   string
		listen string
		key    string
	}{
		{"path", path, "unix:" + path},
		{"abstract", abstract, "unix:" + abstract},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("unix", tc.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			f, err := ln.(*net.UnixListener).File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			in, err := describeInherited(f)
			if err != nil {
				t.Fatal(err)
			}
			if !in.stream || in.addr.Key() != tc.key {
				t.Errorf("stream %v, key %q; want a stream socket with key %q", in.stream, in.addr.Key(), tc.key)
			}
			ep := makeEndpoint(endpoint.KindUnix, tc.listen)
			if ep.Addr.Key() != in.addr.Key() {
				t.Errorf("the endpoint's key %q is not the passed socket's %q", ep.Addr.Key(), in.addr.Key())
			}
		})
	}
	t.Run("unnamed", func(t *testing.T) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		f, g := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
		defer f.Close()
		defer g.Close()
		in, err := describeInherited(f)
		if err != nil {
			t.Fatal(err)
		}
		if k := in.addr.Key(); k != "" {
			t.Errorf("an unnamed socket has the key %q; want none (only a name takes it)", k)
		}
	})
}
