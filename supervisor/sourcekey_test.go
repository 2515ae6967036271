package supervisor

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/metrics"
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

// sourceLimited is a service with only rate_limit_per_ip set, as accept sees
// it (no sockets needed: takeSourceToken is what accept calls).
func sourceLimited(t *testing.T, rate float64, burst int) *service {
	t.Helper()
	sc := serviceConfig("s", &lifecycleFactory{}, config.Limits{RateLimitPerIP: &config.Rate{Rate: rate, Burst: burst}})
	svc, err := newService(slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New("test"), sc,
		&seriesRefs{n: map[string]int{}}, &guardPorts{}, &atomic.Pointer[accesslog.Logger]{}, &atomic.Int64{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// source returns the i-th distinct IPv6 /64.
func source(i int) netip.Prefix {
	var a [16]byte
	a[0], a[1] = 0x20, 0x01
	a[4], a[5], a[6], a[7] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// A flood of distinct sources, each of whose buckets is still refilling,
// costs a table sweep only each time the table doubles, and never holds
// more than maxSourceBuckets: past that, new sources are refused until old
// buckets have refilled, while known sources keep their own tokens.
func TestSourceTableBoundedUnderAFlood(t *testing.T) {
	svc := sourceLimited(t, 0.01, 2) // a bucket takes 200 s to refill
	now := time.Unix(1e9, 0)
	for i := range maxSourceBuckets {
		if !svc.takeSourceToken(source(i), now) {
			t.Fatalf("source %d refused below the table's bound", i)
		}
		if i == 100_000 && svc.sourceSweepAt < 100_000 {
			t.Fatalf("after 100,000 sources the next sweep is at %d: sweeps are not amortised", svc.sourceSweepAt)
		}
	}
	if svc.takeSourceToken(source(maxSourceBuckets), now) {
		t.Fatal("a new source was admitted past maxSourceBuckets")
	}
	if len(svc.sourceRates) > maxSourceBuckets {
		t.Fatalf("the table holds %d sources, bound %d", len(svc.sourceRates), maxSourceBuckets)
	}
	if !svc.takeSourceToken(source(7), now) {
		t.Fatal("a known source with a token left was refused")
	}
	// Once the buckets have refilled (and a second has passed since the
	// last sweep), new sources get in again and the table shrinks.
	later := now.Add(300 * time.Second)
	if !svc.takeSourceToken(source(maxSourceBuckets), later) {
		t.Fatal("a new source was refused after every bucket refilled")
	}
	if n := len(svc.sourceRates); n != 1 {
		t.Fatalf("the table holds %d sources after the sweep, want 1", n)
	}
}
