// Package basic owns the framing receivers of superd's framework:
// LineReceiver, NetstringReceiver and Int8/16/32StringReceiver, with
// Twisted's semantics.
//
// Each receiver turns the byte stream of a connection into messages and
// follows twisted.protocols.basic rule for rule, as written down in the
// project's Twisted semantics reference (limits, mode switching, pausing,
// what happens after LoseConnection). A small LineOnlyReceiver, the variant
// without raw mode, is provided too.
//
// # Using a receiver
//
// A protocol embeds a receiver and hands it the object whose methods receive
// the messages, usually the protocol itself:
//
//	type shout struct {
//		basic.LineReceiver
//	}
//
//	func (p *shout) ConnectionMade(t framework.Transport) {
//		p.LineReceiver.Init(t, p)
//		p.SendLine([]byte("Say something."))
//	}
//
//	func (p *shout) LineReceived(line []byte) {
//		p.SendLine(bytes.ToUpper(line))
//	}
//
// The receiver supplies DataReceived and a ConnectionLost that does nothing,
// so the embedding type is a framework.Protocol as soon as it defines
// ConnectionMade; define ConnectionLost too if the protocol needs it. Do not
// also embed framework.BaseProtocol: its methods and Transport field would
// collide with the receiver's. The receiver deliberately has no
// ConnectionMade: the protocol must write its own, which is where Init
// belongs (DataReceived before Init panics).
//
// Optional behaviour is discovered once, in Init, by type assertion on the
// handler: RawDataHandler and LineLengthExceededHandler for the line
// receivers, LengthLimitExceededHandler for the length-prefixed ones. A
// handler that does not implement a hook gets Twisted's default, which for
// every limit is Transport.LoseConnection().
//
// Settings (Delimiter, MaxLength) are plain fields. They may be set before
// or after Init, and a zero value means Twisted's default.
//
// # Slices handed to callbacks
//
// Every []byte a receiver passes to a callback (a line, raw data, a string,
// the data given to LineLengthExceeded) points into the receiver's buffer or
// into the chunk being delivered. It is valid only until the callback
// returns: copy what you keep. This is what lets steady-state delivery run
// without allocating.
//
// # Goroutines
//
// Like the Protocol it is part of, a receiver is driven from the
// connection's goroutine: DataReceived, the mode and flow-control methods
// (SetRawMode, SetLineMode, ClearLineBuffer, PauseProducing,
// ResumeProducing, StopProducing) and changes to the settings must be called
// from the protocol's own callbacks, or be otherwise serialised with them. The sending methods (SendLine,
// SendString) only read the settings and write to the Transport, and may be
// called from any goroutine, as a chat server does when it writes to other
// users' connections. superd's transport calls a registered producer one
// call at a time with the protocol's callbacks, never beside them, so a
// receiver may be registered as its own transport's producer: its
// ResumeProducing then delivers what arrived while the output was full.
//
// # Differences from Twisted
//
// The receivers mirror Twisted except where a Twisted behaviour is a bug or
// exists only because of Python:
//
//   - IntNStringReceiver: when a length prefix is over MaxLength, everything
//     buffered is dropped before LengthLimitExceeded runs. Twisted keeps the
//     whole current chunk, so a hook that does not close sees the messages
//     of that chunk delivered a second time.
//   - NetstringReceiver: after a parse error, later data is discarded (each
//     call repeats the idempotent LoseConnection) instead of being buffered
//     forever.
//   - A DataReceived call made from inside a callback (directly, or through
//     SetLineMode or ResumeProducing) is queued behind the data still being
//     parsed, for every receiver. Twisted's LineReceiver does the same; its
//     other receivers re-enter their parser, which can reorder or repeat
//     data.
//   - StopProducing is final: ResumeProducing afterwards does nothing.
//   - Callbacks return nothing (Twisted's deprecated "a true return value
//     disconnects"), and the legacy recvd attribute does not exist.
//   - LineReceiver in raw mode panics if the handler has no RawDataReceived
//     method, where Twisted raises NotImplementedError.
package basic
