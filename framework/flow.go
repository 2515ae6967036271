package framework

// Flow-control defaults (SPEC section 5). Reading from a peer pauses while
// its unsent output is above HighWaterMark, and so is a registered
// producer; both resume once that output has drained. A connection whose
// unsent output passes its max_pending_output (DefaultMaxPendingOutput
// unless configured) is aborted with ErrSlowConsumer.
const (
	HighWaterMark           = 64 << 10
	DefaultMaxPendingOutput = 4 << 20
)
