package time

import (
	"encoding/binary"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	stdtime "time"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestMain(m *testing.M) { servicetest.VerifyTestMain(m) }

func TestConfig(t *testing.T) {
	servicetest.ServesBoth(t, "time")
	f := servicetest.Factory(t, "time", "  idle_timeout = \"5s\"")
	if _, ok := f.BuildProtocol(nil).(*Time); !ok {
		t.Fatal("BuildProtocol does not build a *Time")
	}
	_, err := servicetest.Parse(t, "time", `  utc = true`)
	if err == nil || !strings.Contains(err.Error(), "superd.hcl:2,") || !strings.Contains(err.Error(), `"utc"`) {
		t.Fatalf("an attribute time does not have: %v", err)
	}
}

func TestStamp(t *testing.T) {
	for _, tt := range []struct {
		t    stdtime.Time
		want uint32
	}{
		{stdtime.Date(1900, 1, 1, 0, 0, 0, 0, stdtime.UTC), 0},
		{stdtime.Date(1970, 1, 1, 0, 0, 0, 0, stdtime.UTC), 2208988800},
		{stdtime.Date(1970, 1, 1, 1, 0, 0, 0, stdtime.FixedZone("CET", 3600)), 2208988800},
		{stdtime.Date(2000, 1, 1, 0, 0, 0, 999999999, stdtime.UTC), 3155673600},
		{stdtime.Date(2036, 2, 7, 6, 28, 15, 0, stdtime.UTC), 1<<32 - 1},
		{stdtime.Date(2036, 2, 7, 6, 28, 16, 0, stdtime.UTC), 0}, // the wrap
		{stdtime.Date(2036, 2, 7, 6, 28, 17, 0, stdtime.UTC), 1},
	} {
		if got := Stamp(tt.t); got != tt.want {
			t.Errorf("Stamp(%v) = %d, want %d", tt.t, got, tt.want)
		}
	}
}

// near reports whether the RFC 868 stamp got is within a few seconds of
// now, comparing modulo 2^32 as a client must.
func near(got uint32, now stdtime.Time) bool {
	d := int32(got - Stamp(now))
	return d >= -5 && d <= 5
}

// TestStream: over loopback TCP, 4 bytes that decode to now, then EOF.
func TestStream(t *testing.T) {
	addr, conns := servicetest.Serve(t, Factory{})
	for i := range 3 {
		c := servicetest.Dial(t, addr)
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 4 {
			t.Fatalf("connection %d: got %d bytes %x, want 4 then EOF", i, len(got), got)
		}
		if s := binary.BigEndian.Uint32(got); !near(s, stdtime.Now()) {
			t.Fatalf("connection %d: %d (%v), not now (%d)", i, s, got, Stamp(stdtime.Now()))
		}
		c.Close()
		if reason := <-(<-conns).Done; !framework.IsClean(reason) {
			t.Fatalf("connection %d ended with %v, want a clean close", i, reason)
		}
	}
}

// TestRdate: rdate -p and rdate -pu (Debian's rdate: RFC 868 over TCP and
// over UDP) accept what the service sends. Skipped where rdate is not
// installed.
func TestRdate(t *testing.T) {
	rdate, err := exec.LookPath("rdate")
	if err != nil {
		t.Skip("rdate is not installed (Debian package rdate)")
	}
	tcpAddr, _ := servicetest.Serve(t, Factory{})
	udpAddr := servicetest.ServeUDP(t, Factory{})
	for _, tt := range []struct{ flags, addr string }{{"-p", tcpAddr}, {"-pu", udpAddr}} {
		_, port, _ := strings.Cut(tt.addr, ":")
		if _, err := strconv.Atoi(port); err != nil {
			t.Fatal(tt.addr)
		}
		out, err := exec.Command(rdate, tt.flags, "-o", port, "127.0.0.1").CombinedOutput()
		if err != nil {
			t.Fatalf("rdate %s: %v\n%s", tt.flags, err, out)
		}
		// rdate prints the time as date(1) does, in the local zone.
		text := strings.TrimSpace(string(out))
		if i := strings.Index(text, "]"); i >= 0 {
			text = strings.TrimSpace(text[i+1:])
		}
		got, err := stdtime.ParseInLocation(stdtime.UnixDate, text, stdtime.Local)
		if err != nil {
			t.Fatalf("rdate %s printed %q: %v", tt.flags, out, err)
		}
		if d := stdtime.Since(got); d < -5*stdtime.Second || d > 5*stdtime.Second {
			t.Fatalf("rdate %s printed %v, %v from now", tt.flags, got, d)
		}
	}
}

func TestDatagrams(t *testing.T) {
	var rec servicetest.DatagramRecorder
	p := servicetest.DatagramProtocol(t, Factory{}, &rec)
	for _, req := range []string{"", "any request", strings.Repeat("z", 1000)} {
		p.DatagramReceived([]byte(req), servicetest.PeerUDP)
	}
	sent := rec.Sent()
	if len(sent) != 3 {
		t.Fatalf("%d replies to 3 datagrams", len(sent))
	}
	for i, d := range sent {
		if len(d.Data) != 4 || d.To != servicetest.PeerUDP {
			t.Fatalf("reply %d: %x to %v; want 4 bytes to %v", i, d.Data, d.To, servicetest.PeerUDP)
		}
		if s := binary.BigEndian.Uint32(d.Data); !near(s, stdtime.Now()) {
			t.Fatalf("reply %d: %d, not now (%d)", i, s, Stamp(stdtime.Now()))
		}
	}
	var nop servicetest.NopDatagramTransport
	p = servicetest.DatagramProtocol(t, Factory{}, &nop)
	if n := testing.AllocsPerRun(1000, func() { p.DatagramReceived(nil, servicetest.PeerUDP) }); n != 0 {
		t.Errorf("%v allocations per datagram, want 0", n)
	}
}
