package discard

import (
	"io"
	"strings"
	"testing"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestMain(m *testing.M) { servicetest.VerifyTestMain(m) }

func TestConfig(t *testing.T) {
	servicetest.ServesBoth(t, "discard")
	f := servicetest.Factory(t, "discard", "  max_connections = 3")
	if _, ok := f.BuildProtocol(nil).(*Discard); !ok {
		t.Fatal("BuildProtocol does not build a *Discard")
	}
	_, err := servicetest.Parse(t, "discard", `  quote = "x"`)
	if err == nil || !strings.Contains(err.Error(), "superd.hcl:2,") || !strings.Contains(err.Error(), `"quote"`) {
		t.Fatalf("an attribute discard does not have: %v", err)
	}
}

// TestStreamDiscards: everything the client sends is read (16 MiB would
// stall a server that did not read: the kernel buffers hold far less) and
// nothing comes back; the connection ends cleanly when the client closes.
func TestStreamDiscards(t *testing.T) {
	addr, conns := servicetest.Serve(t, servicetest.Factory(t, "discard", ""))
	c := servicetest.Dial(t, addr)
	payload := []byte(strings.Repeat("discard me\r\n", (16<<20)/12))
	if _, err := c.Write(payload); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("discard sent %d bytes back: %q", len(got), got[:min(len(got), 64)])
	}
	if reason := <-(<-conns).Done; !framework.IsClean(reason) {
		t.Fatalf("connection ended with %v, want a clean close", reason)
	}
}

func TestDatagramsGetNoReply(t *testing.T) {
	var rec servicetest.DatagramRecorder
	p := servicetest.DatagramProtocol(t, Factory{}, &rec)
	for _, d := range []string{"", "x", strings.Repeat("y", 65507)} {
		p.DatagramReceived([]byte(d), servicetest.PeerUDP)
	}
	if sent := rec.Sent(); len(sent) != 0 {
		t.Fatalf("discard sent %d datagrams", len(sent))
	}
	var nop servicetest.NopDatagramTransport
	p = servicetest.DatagramProtocol(t, Factory{}, &nop)
	data := []byte("data")
	if n := testing.AllocsPerRun(1000, func() { p.DatagramReceived(data, servicetest.PeerUDP) }); n != 0 {
		t.Errorf("%v allocations per datagram, want 0", n)
	}
}
