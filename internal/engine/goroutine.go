//go:build amd64 || arm64

// This file owns curG, the identity of the calling goroutine that tells a
// write made from inside one of a connection's callbacks from a write made
// by another goroutine meanwhile (see tellProducerLocked).

package engine

// curG identifies the calling goroutine: two goroutines running at the same
// time never get the same value (it is the address of the runtime's record
// of the goroutine, which is reused only once the goroutine has exited). It
// costs a nanosecond or two, so every callback can record it. It is
// compared, never dereferenced.
//
// Go gives goroutines no public identity on purpose; the engine needs one
// for a single question, asked when a write passes the high-water mark
// while a callback runs: is the writer that callback (pause the producer
// now, inside the write, as Twisted does) or another goroutine (leave the
// pause to the callback's goroutine, so that producer calls never overlap
// the protocol's callbacks)?
//
// Implemented in goroutine_amd64.s and goroutine_arm64.s.
func curG() uintptr
