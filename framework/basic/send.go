package basic

import "sync"

// maxPooled is the largest scratch buffer returned to the pool.
const maxPooled = 64 << 10

// writeBufs holds scratch buffers for framing outgoing messages. Each
// message is built in one buffer and sent with a single Transport.Write
// (which copies or finishes with it before returning), so concurrent
// senders never interleave parts of their frames and sending does not
// allocate in the steady state.
var writeBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, 512)
	return &b
}}

func getBuf() *[]byte { return writeBufs.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > maxPooled {
		return
	}
	*b = (*b)[:0]
	writeBufs.Put(b)
}
