package main

import (
	"math"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Error("median sorted its argument")
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range []struct {
		ratio float64
		lower bool
		want  string
	}{
		{1.02, false, "tie"}, {1.5, false, "better (+50%)"}, {0.8, false, "worse (-20%)"},
		{0.5, true, "better (0.50x"}, {1.5, true, "worse (1.50x"}, {0.97, true, "tie"},
	} {
		if got := verdict(c.ratio, c.lower); !strings.Contains(got, c.want) {
			t.Errorf("verdict(%v, %v) = %q, want %q in it", c.ratio, c.lower, got, c.want)
		}
	}
}

func TestResultMetric(t *testing.T) {
	r := result{Mode: "idle", RSSPerConnBytes: 4096, MsgsPerS: 1}
	if r.metric() != 4096 {
		t.Errorf("idle metric %v", r.metric())
	}
	r = result{Mode: "chat", DeliveriesPerS: 7}
	if r.metric() != 7 {
		t.Errorf("chat metric %v", r.metric())
	}
}

func TestTableAligns(t *testing.T) {
	tb := table{header: []string{"a", "µs"}, rows: [][]string{{"long cell", "1"}}}
	lines := strings.Split(strings.TrimSpace(tb.markdown()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%q", lines)
	}
	for _, l := range lines {
		if len([]rune(l)) != len([]rune(lines[0])) {
			t.Errorf("ragged table:\n%s", tb.markdown())
		}
	}
}

func TestSuperdConfigNamesEveryAddress(t *testing.T) {
	addrs := [4]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"}
	cfg := superdConfig(addrs)
	for _, a := range addrs {
		if !strings.Contains(cfg, `"`+a+`"`) {
			t.Errorf("config lacks %s:\n%s", a, cfg)
		}
	}
	for _, want := range []string{`address = ""`, "self_signed = true", "max_pending_output", quote} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q", want)
		}
	}
}
