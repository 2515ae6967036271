package main

import (
	"math"
	"math/bits"
	"time"
)

// Hist is a log-linear latency histogram in nanoseconds with a relative
// error under 1% (128 linear sub-buckets per power of two) and a fixed
// size, so a long run never grows memory. Exact min and max are kept.
// A Hist is not safe for concurrent use: give each goroutine its own and
// Merge them at the end.
type Hist struct {
	counts   []uint64
	n        uint64
	min, max int64
}

const (
	histSubBits  = 7
	histSubCount = 1 << histSubBits
	histMaxValue = int64(1)<<40 - 1 // about 18 minutes; larger values are clamped
	histBuckets  = (40-histSubBits+1)*histSubCount + histSubCount
)

// NewHist returns an empty histogram.
func NewHist() *Hist { return &Hist{counts: make([]uint64, histBuckets)} }

func histBucket(v int64) int {
	if v < 0 {
		v = 0
	}
	if v > histMaxValue {
		v = histMaxValue
	}
	if v < histSubCount {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - histSubBits - 1 // v>>e is in [128, 256)
	return (e+1)*histSubCount + int(v>>e) - histSubCount
}

// histValue is the middle of bucket i.
func histValue(i int) int64 {
	if i < histSubCount {
		return int64(i)
	}
	e := i/histSubCount - 1
	m := int64(i%histSubCount + histSubCount)
	low := m << e
	return low + (int64(1)<<e-1)/2
}

// Record adds one duration.
func (h *Hist) Record(d time.Duration) { h.RecordValue(int64(d)) }

// RecordValue adds one value (nanoseconds).
func (h *Hist) RecordValue(v int64) {
	if v < 0 {
		v = 0
	}
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if h.n == 0 || v > h.max {
		h.max = v
	}
	h.n++
	h.counts[histBucket(v)]++
}

// Count is the number of values recorded.
func (h *Hist) Count() uint64 { return h.n }

// Merge adds every value of o to h.
func (h *Hist) Merge(o *Hist) {
	if o == nil || o.n == 0 {
		return
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if h.n == 0 || o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

// Quantile returns the value at quantile q (0..1) by the nearest-rank
// method, within the histogram's precision; 0 when empty.
func (h *Hist) Quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank <= 1 {
		return h.min
	}
	if rank >= h.n {
		return h.max
	}
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			return min(max(histValue(i), h.min), h.max)
		}
	}
	return h.max
}

// QuantileMicros is Quantile in microseconds.
func (h *Hist) QuantileMicros(q float64) float64 { return float64(h.Quantile(q)) / 1e3 }
