package basic

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/superd-dev/superd/framework"
)

// ErrStringTooLong is returned (wrapped) by SendString of the IntN
// receivers when the string's length does not fit the length prefix.
var ErrStringTooLong = errors.New("basic: string too long for its length prefix")

// LengthLimitExceededHandler is implemented by a StringHandler that wants to
// handle over-long strings of an IntNStringReceiver itself. Without it the
// receiver calls Transport.LoseConnection().
type LengthLimitExceededHandler interface {
	// LengthLimitExceeded is called with the announced length as soon as a
	// length prefix over MaxLength is complete, before any payload. The
	// receiver has already dropped everything buffered.
	LengthLimitExceeded(length uint64)
}

// Int8StringReceiver parses strings prefixed by their length in one byte
// (0 to 255), like Twisted's Int8StringReceiver.
type Int8StringReceiver = IntNStringReceiver[uint8]

// Int16StringReceiver parses strings prefixed by their length as a
// big-endian 16-bit unsigned integer, like Twisted's Int16StringReceiver.
type Int16StringReceiver = IntNStringReceiver[uint16]

// Int32StringReceiver parses strings prefixed by their length as a
// big-endian 32-bit unsigned integer, like Twisted's Int32StringReceiver.
type Int32StringReceiver = IntNStringReceiver[uint32]

// IntNStringReceiver parses strings prefixed by their length as an unsigned
// big-endian integer of type P: one, two or four bytes. Use it through
// Int8StringReceiver, Int16StringReceiver and Int32StringReceiver.
//
// As soon as a prefix is complete, a length over MaxLength calls
// LengthLimitExceeded (by default Transport.LoseConnection) and ends the
// current call; everything buffered is dropped first. A zero length is a
// valid, empty string.
//
// Like NetstringReceiver, and unlike the line receivers, a LoseConnection
// made by StringReceived does not stop delivery of the strings remaining in
// the current chunk; only PauseProducing does.
//
// As with LineReceiver, PauseProducing and ResumeProducing must run one at
// a time with the connection's callbacks (ResumeProducing delivers on the
// goroutine that calls it): from the protocol's own callbacks, or with the
// receiver registered as its transport's producer, not from another
// goroutine.
type IntNStringReceiver[P uint8 | uint16 | uint32] struct {
	// Transport is the connection, set by Init.
	Transport framework.Transport
	// MaxLength is the longest string accepted, in bytes; zero or negative
	// means DefaultMaxStringLength (99999). With the default, an
	// Int8StringReceiver can never exceed it.
	MaxLength int

	handler  StringHandler
	exceeded LengthLimitExceededHandler

	in      stream
	paused  bool
	stopped bool
	busy    bool
}

// Init prepares the receiver for a new connection: it stores t in
// Transport, makes h the receiver of strings (and of LengthLimitExceeded if
// h implements it) and resets the parsing state. MaxLength is kept.
func (r *IntNStringReceiver[P]) Init(t framework.Transport, h StringHandler) {
	r.Transport = t
	r.handler = h
	r.exceeded, _ = h.(LengthLimitExceededHandler)
	r.in.reset()
	r.paused, r.stopped, r.busy = false, false, false
}

// prefixLen returns the size of the length prefix in bytes.
func (*IntNStringReceiver[P]) prefixLen() int {
	switch any(P(0)).(type) {
	case uint8:
		return 1
	case uint16:
		return 2
	}
	return 4
}

func decodeLength(b []byte) uint64 {
	switch len(b) {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.BigEndian.Uint16(b))
	}
	return uint64(binary.BigEndian.Uint32(b))
}

// DataReceived parses data, delivering each complete string until the input
// runs out, the receiver is paused or a prefix is over the limit. Called
// from inside StringReceived, it only appends data to the buffer; the
// running call parses it.
func (r *IntNStringReceiver[P]) DataReceived(data []byte) {
	if r.busy {
		r.in.push(data)
		return
	}
	if r.handler == nil {
		panic("basic: IntNStringReceiver.DataReceived called before Init")
	}
	r.busy = true
	r.in.ext = data
	defer r.done()
	r.parse()
}

func (r *IntNStringReceiver[P]) done() {
	r.busy = false
	r.in.settle()
}

func (r *IntNStringReceiver[P]) parse() {
	in := &r.in
	n := r.prefixLen()
	for !r.paused {
		// Capped so that prefix plus payload fits an int.
		maxLen := uint64(min(maxOf(r.MaxLength, DefaultMaxStringLength), math.MaxInt-4))
		prefix, ok := in.need(n)
		if !ok {
			return
		}
		length := decodeLength(prefix)
		if length > maxLen {
			in.clear()
			in.pinned = true
			if r.exceeded != nil {
				r.exceeded.LengthLimitExceeded(length)
			} else if r.Transport != nil {
				r.Transport.LoseConnection()
			}
			in.pinned = false
			return
		}
		frame, ok := in.need(n + int(length))
		if !ok {
			return
		}
		in.skip(len(frame))
		in.pinned = true
		r.handler.StringReceived(frame[n:])
		in.pinned = false
	}
}

// SendString writes the length prefix and s in one Transport.Write. If s
// is too long for the prefix (256 bytes or more for Int8, 65536 for Int16,
// 2^32 for Int32) it writes nothing and returns an error wrapping
// ErrStringTooLong. MaxLength is not checked. It may be called from any
// goroutine.
func (r *IntNStringReceiver[P]) SendString(s []byte) error {
	if uint64(len(s)) > uint64(^P(0)) {
		return fmt.Errorf("%w: %d bytes, the %d-byte prefix allows at most %d",
			ErrStringTooLong, len(s), r.prefixLen(), uint64(^P(0)))
	}
	b := getBuf()
	buf := *b
	switch r.prefixLen() {
	case 1:
		buf = append(buf, byte(len(s)))
	case 2:
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(s)))
	default:
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(s)))
	}
	*b = append(buf, s...)
	r.Transport.Write(*b)
	putBuf(b)
	return nil
}

// Paused reports whether the receiver is paused (by PauseProducing or
// StopProducing).
func (r *IntNStringReceiver[P]) Paused() bool { return r.paused }

// PauseProducing stops delivery at once (even in the middle of a buffer)
// and pauses the transport. New input is only buffered.
func (r *IntNStringReceiver[P]) PauseProducing() {
	r.paused = true
	if r.Transport != nil {
		r.Transport.PauseProducing()
	}
}

// ResumeProducing undoes PauseProducing: it resumes the transport, then
// delivers the buffered strings at once, in order, until the buffer runs
// out or a callback pauses again. After StopProducing it does nothing.
func (r *IntNStringReceiver[P]) ResumeProducing() {
	if r.stopped {
		return
	}
	r.paused = false
	if r.Transport != nil {
		r.Transport.ResumeProducing()
	}
	if r.handler != nil {
		r.DataReceived(nil)
	}
}

// StopProducing pauses the receiver for good and closes the connection
// gracefully (Transport.LoseConnection).
func (r *IntNStringReceiver[P]) StopProducing() {
	r.paused = true
	r.stopped = true
	if r.Transport != nil {
		r.Transport.LoseConnection()
	}
}

// ConnectionLost does nothing; it is here so that a protocol embedding the
// receiver needs only ConnectionMade to be a framework.Protocol.
func (r *IntNStringReceiver[P]) ConnectionLost(reason error) {}

// Interface guards.
var (
	_ framework.Producer = (*Int8StringReceiver)(nil)
	_ framework.Producer = (*Int16StringReceiver)(nil)
	_ framework.Producer = (*Int32StringReceiver)(nil)
)
