package supervisor

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestSourceKeyGroupsIPv6ByPrefix(t *testing.T) {
	tcp := func(s string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(s), Port: 1234} }
	cases := []struct {
		addr   net.Addr
		prefix int
		want   string
		ok     bool
	}{
		{tcp("192.0.2.7"), 64, "192.0.2.7/32", true},
		{tcp("::ffff:192.0.2.7"), 64, "192.0.2.7/32", true}, // v4-mapped counts as IPv4
		{tcp("2001:db8:1:2:aaaa::1"), 64, "2001:db8:1:2::/64", true},
		{tcp("2001:db8:1:2:bbbb::9"), 64, "2001:db8:1:2::/64", true},
		{tcp("2001:db8:1:2:bbbb::9"), 48, "2001:db8:1::/48", true},
		{tcp("2001:db8:1:2:bbbb::9"), 128, "2001:db8:1:2:bbbb::9/128", true},
		{&net.UnixAddr{Name: "@", Net: "unix"}, 64, "", false},
	}
	for _, c := range cases {
		got, ok := sourceKey(c.addr, c.prefix)
		if ok != c.ok || (ok && got != netip.MustParsePrefix(c.want)) {
			t.Errorf("sourceKey(%v, %d) = %v %v, want %v %v", c.addr, c.prefix, got, ok, c.want, c.ok)
		}
	}
}

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := newTokenBucket(0.5, 2, t0) // starts full: 2 at once
	if !b.take(t0) || !b.take(t0) || b.take(t0) {
		t.Fatal("a full bucket of 2 should give exactly 2")
	}
	if b.take(t0.Add(time.Second)) {
		t.Fatal("half a token after 1s at rate 0.5")
	}
	if !b.take(t0.Add(2 * time.Second)) {
		t.Fatal("one token after 2s at rate 0.5")
	}
	if b.full(t0.Add(3 * time.Second)) {
		t.Fatal("full too early")
	}
	if !b.full(t0.Add(time.Hour)) {
		t.Fatal("not full after an hour")
	}
}
