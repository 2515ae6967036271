package supervisor

import "time"

// tokenBucket allows rate events per second with bursts of up to burst. It
// starts full. Callers serialise access.
type tokenBucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int, now time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

func (b *tokenBucket) refill(now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(b.burst, b.tokens+el*b.rate)
		b.last = now
	}
}

// take spends one token if there is one.
func (b *tokenBucket) take(now time.Time) bool {
	b.refill(now)
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// has reports whether a token is there, spending none: a limit checked
// before another that may still refuse (the per-source one) spends its
// token only once both have agreed (spend).
func (b *tokenBucket) has(now time.Time) bool {
	b.refill(now)
	return b.tokens >= 1
}

// spend takes the token has found.
func (b *tokenBucket) spend() { b.tokens-- }

// full reports whether the bucket is back at its burst (so forgetting it
// changes nothing).
func (b *tokenBucket) full(now time.Time) bool {
	b.refill(now)
	return b.tokens >= b.burst
}
