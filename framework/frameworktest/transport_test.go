package frameworktest_test

import (
	"fmt"
	"net"
	"slices"
	"testing"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/frameworktest"
)

// upper answers each chunk in capitals and hangs up on "bye".
type upper struct{ framework.BaseProtocol }

func (u *upper) DataReceived(b []byte) {
	if string(b) == "bye" {
		u.Transport.LoseConnection()
		return
	}
	out := make([]byte, len(b))
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		out[i] = c
	}
	u.Transport.Write(out)
}

func Example() {
	tr := &frameworktest.Transport{}
	p := &upper{}
	p.ConnectionMade(tr)
	p.DataReceived([]byte("hello"))
	fmt.Printf("%q\n", tr.Take())
	p.DataReceived([]byte("bye"))
	fmt.Println(tr.Disconnecting(), tr.Lost())
	// Output:
	// "HELLO"
	// true 1
}

func TestTransport(t *testing.T) {
	var seen []string
	tr := &frameworktest.Transport{Peer: &net.UnixAddr{Net: "unix"}}
	tr.OnWrite = func(b []byte) { seen = append(seen, string(b)) }
	tr.Write([]byte("a"))
	tr.Write(nil)
	tr.WriteString("b")
	if got := tr.Writes(); len(got) != 2 || string(got[0]) != "a" || string(got[1]) != "b" {
		t.Fatalf("writes %q", got)
	}
	if !slices.Equal(seen, []string{"a", "b"}) || tr.WriteCount() != 2 || string(tr.Written()) != "ab" {
		t.Fatalf("seen %q, %d writes, written %q", seen, tr.WriteCount(), tr.Written())
	}
	if tr.PeerAddr().Network() != "unix" || tr.LocalAddr().String() != "127.0.0.1:2" {
		t.Fatalf("addresses %v, %v", tr.PeerAddr(), tr.LocalAddr())
	}
	tr.PauseProducing()
	tr.PauseProducing()
	tr.ResumeProducing()
	if tr.Paused() || tr.Pauses() != 2 || tr.Resumes() != 1 {
		t.Fatalf("paused %v, %d pauses, %d resumes", tr.Paused(), tr.Pauses(), tr.Resumes())
	}
	if err := tr.RegisterProducer(producer{}); err != nil || tr.Producer() == nil {
		t.Fatalf("RegisterProducer: %v", err)
	}
	if err := tr.RegisterProducer(producer{}); err == nil {
		t.Fatal("a second producer was accepted")
	}
	tr.UnregisterProducer()
	if tr.Producer() != nil {
		t.Fatal("the producer is still registered")
	}
	tr.LoseConnection()
	tr.Write([]byte("late"))
	if tr.Take() != "ab" || tr.WriteCount() != 2 || !tr.Disconnecting() || tr.Aborted() {
		t.Fatal("a write after LoseConnection was kept")
	}
	tr.AbortConnection()
	if !tr.Aborted() || tr.Lost() != 1 {
		t.Fatalf("aborted %v, lost %d", tr.Aborted(), tr.Lost())
	}
}

func TestDiscard(t *testing.T) {
	tr := &frameworktest.Transport{Discard: true}
	tr.Write([]byte("x"))
	if tr.WriteCount() != 1 || len(tr.Writes()) != 0 {
		t.Fatalf("%d writes, kept %q", tr.WriteCount(), tr.Writes())
	}
}

type producer struct{}

func (producer) PauseProducing()  {}
func (producer) ResumeProducing() {}
func (producer) StopProducing()   {}
