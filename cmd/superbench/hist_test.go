package main

import (
	"math"
	"testing"
	"time"
)

func TestHistBucketsAreContiguous(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<20; v++ {
		b := histBucket(v)
		if b != prev && b != prev+1 {
			t.Fatalf("bucket(%d) = %d after %d", v, b, prev)
		}
		prev = b
	}
	if b := histBucket(histMaxValue); b >= histBuckets {
		t.Fatalf("bucket of the largest value %d is out of range (%d buckets)", b, histBuckets)
	}
	if histBucket(-5) != 0 || histBucket(math.MaxInt64) != histBucket(histMaxValue) {
		t.Fatal("out-of-range values are not clamped")
	}
}

func TestHistValueIsInItsBucket(t *testing.T) {
	for _, v := range []int64{0, 1, 127, 128, 129, 255, 256, 1000, 123456, 1 << 30, 987654321987} {
		if b := histBucket(histValue(histBucket(v))); b != histBucket(v) {
			t.Errorf("value of bucket %d falls in bucket %d", histBucket(v), b)
		}
	}
}

func near(got, want int64) bool {
	return math.Abs(float64(got-want)) <= 0.01*float64(want)+1
}

func TestHistQuantiles(t *testing.T) {
	h := NewHist()
	if h.Quantile(0.5) != 0 {
		t.Fatal("empty histogram: quantile not 0")
	}
	// 1..100000 µs in ns, in a scrambled order.
	const n = 100000
	for i := range n {
		v := int64((i*7919)%n+1) * 1000
		h.Record(time.Duration(v))
	}
	for _, c := range []struct {
		q    float64
		want int64
	}{{0.5, 50000e3}, {0.99, 99000e3}, {0.999, 99900e3}, {0.0, 1e3}, {1, 100000e3}} {
		if got := h.Quantile(c.q); !near(got, c.want) {
			t.Errorf("q%.3f = %d, want %d ±1%%", c.q, got, c.want)
		}
	}
	if h.Quantile(1) != 100000e3 || h.Quantile(0) != 1e3 {
		t.Errorf("extremes are not exact: %d %d", h.Quantile(0), h.Quantile(1))
	}
	if got := h.QuantileMicros(0.5); math.Abs(got-50000) > 500 {
		t.Errorf("QuantileMicros(0.5) = %v", got)
	}
}

func TestHistSmallCounts(t *testing.T) {
	h := NewHist()
	for _, v := range []int64{10, 20, 30, 40} { // exact below 128 ns
		h.RecordValue(v)
	}
	// Nearest rank: p50 of 4 values is the 2nd, p99 the 4th.
	if h.Quantile(0.5) != 20 || h.Quantile(0.99) != 40 || h.Quantile(0.25) != 10 {
		t.Fatalf("got p25=%d p50=%d p99=%d", h.Quantile(0.25), h.Quantile(0.5), h.Quantile(0.99))
	}
}

func TestHistMerge(t *testing.T) {
	a, b, all := NewHist(), NewHist(), NewHist()
	for i := int64(1); i <= 1000; i++ {
		v := i * i * 37
		all.RecordValue(v)
		if i%3 == 0 {
			a.RecordValue(v)
		} else {
			b.RecordValue(v)
		}
	}
	m := NewHist()
	m.Merge(a)
	m.Merge(nil)
	m.Merge(NewHist())
	m.Merge(b)
	if m.Count() != all.Count() {
		t.Fatalf("count %d, want %d", m.Count(), all.Count())
	}
	for _, q := range []float64{0, 0.1, 0.5, 0.9, 0.99, 0.999, 1} {
		if m.Quantile(q) != all.Quantile(q) {
			t.Errorf("q%v: merged %d, direct %d", q, m.Quantile(q), all.Quantile(q))
		}
	}
}
