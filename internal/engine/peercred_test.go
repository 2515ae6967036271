package engine

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/superd-dev/superd/framework"
)

type credProto struct {
	framework.BaseProtocol
	got  chan framework.PeerCred
	none chan bool
}

func (p *credProto) ConnectionMade(t framework.Transport) {
	p.BaseProtocol.ConnectionMade(t)
	if c, ok := framework.PeerCredentials(t); ok {
		p.got <- c
	} else {
		p.none <- true
	}
	t.LoseConnection()
}

// A protocol on a unix socket reads its peer's uid, gid and pid from its
// framework.Transport; on TCP there are none.
func TestPeerCredentialsFromTransport(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_PEERCRED is Linux's")
	}
	for _, network := range []string{"unix", "tcp"} {
		addr := filepath.Join(t.TempDir(), "s.sock")
		if network == "tcp" {
			addr = "127.0.0.1:0"
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		client, err := net.Dial(network, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		p := &credProto{got: make(chan framework.PeerCred, 1), none: make(chan bool, 1)}
		if err := NewConn(server, nil).Serve(p); err != nil && !framework.IsClean(err) {
			t.Logf("%s: %v", network, err)
		}
		client.Close()
		select {
		case c := <-p.got:
			if network != "unix" {
				t.Fatalf("credentials over %s: %+v", network, c)
			}
			if int(c.UID) != os.Getuid() || int(c.GID) != os.Getgid() || int(c.PID) != os.Getpid() {
				t.Errorf("got %+v, want uid %d gid %d pid %d", c, os.Getuid(), os.Getgid(), os.Getpid())
			}
		case <-p.none:
			if network == "unix" {
				t.Fatal("no credentials over a unix socket")
			}
		}
	}
}
