package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The datagram families of SPEC section 10: every drop reason of a service
// at 0 from the start, received and sent per udp endpoint; gone with the
// endpoint and the service.
func TestDatagramSeries(t *testing.T) {
	m := New("v1")
	s := m.ForService("u", "echo")
	drops := s.DatagramDrops()
	if len(drops) != 5 {
		t.Errorf("%d drop reasons, want 5", len(drops))
	}
	for _, r := range []string{"denied", "rate_limit", "rate_limit_per_ip", "reflection", "send_failed"} {
		c, ok := drops[r]
		if !ok {
			t.Errorf("no counter for reason %q", r)
			continue
		}
		if got := testutil.ToFloat64(c); got != 0 {
			t.Errorf("%s starts at %v", r, got)
		}
	}
	rcv, snd := s.DatagramEndpoint("udp:127.0.0.1:7")
	rcv.Inc()
	snd.Add(2)
	for name, n := range map[string]int{
		"superd_datagrams_received_total": 1,
		"superd_datagrams_sent_total":     1,
		"superd_datagrams_dropped_total":  5,
	} {
		if got := testutil.CollectAndCount(m.Registry, name); got != n {
			t.Errorf("%s has %d series, want %d", name, got, n)
		}
	}
	if got := testutil.ToFloat64(m.DatagramsSent.WithLabelValues("u", "echo", "udp:127.0.0.1:7")); got != 2 {
		t.Errorf("sent = %v", got)
	}
	problems, err := testutil.GatherAndLint(m.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}

	s.DeleteEndpoint("udp:127.0.0.1:7")
	if n := testutil.CollectAndCount(m.DatagramsReceived) + testutil.CollectAndCount(m.DatagramsSent); n != 0 {
		t.Errorf("%d endpoint series after DeleteEndpoint", n)
	}
	s.Delete()
	if n := testutil.CollectAndCount(m.DatagramsDropped); n != 0 {
		t.Errorf("%d drop series after Delete", n)
	}
}
