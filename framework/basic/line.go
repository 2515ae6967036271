package basic

import (
	"bytes"
	"math"

	"github.com/superd-dev/superd/framework"
)

// Defaults of the line receivers, as in Twisted.
const (
	// DefaultDelimiter ends lines when Delimiter is empty.
	DefaultDelimiter = "\r\n"
	// DefaultMaxLineLength is the line limit when MaxLength is zero.
	DefaultMaxLineLength = 16384
)

var defaultDelimiter = []byte(DefaultDelimiter)

// LineHandler receives the lines of a LineReceiver or LineOnlyReceiver.
type LineHandler interface {
	// LineReceived is called once per line, delimiter stripped; an empty
	// line is an empty slice. line is valid only until LineReceived
	// returns.
	LineReceived(line []byte)
}

// RawDataHandler is implemented by a LineHandler that uses raw mode
// (LineReceiver.SetRawMode).
type RawDataHandler interface {
	// RawDataReceived is called, in raw mode, with each chunk as it
	// arrives (never empty). data is valid only until it returns.
	RawDataReceived(data []byte)
}

// LineLengthExceededHandler is implemented by a LineHandler that wants to
// handle over-long lines itself. Without it the receiver calls
// Transport.LoseConnection().
type LineLengthExceededHandler interface {
	// LineLengthExceeded is called when a line is over MaxLength. What data
	// holds depends on the receiver; see LineReceiver and
	// LineOnlyReceiver. It is valid only until LineLengthExceeded returns.
	LineLengthExceeded(data []byte)
}

// LineReceiver splits a connection's input into lines, like Twisted's
// LineReceiver: a line mode, a raw mode, a length limit, and pausing.
//
// Embed it in a protocol and call Init from ConnectionMade (see the package
// documentation). Lines go to the handler's LineReceived; in raw mode,
// input goes to its RawDataReceived as it arrives.
//
// Receiving, in line mode, stops for the rest of the buffered input as soon
// as a callback has made the transport disconnect (Transport.Disconnecting),
// so nothing more is delivered after LoseConnection. A limit breach also
// ends the current call:
//
//   - a complete line longer than MaxLength calls LineLengthExceeded with
//     that line, its delimiter and everything else buffered;
//   - input without a delimiter that reaches MaxLength+len(Delimiter) bytes
//     calls LineLengthExceeded with all of it.
//
// Either way the buffer is emptied first, so lines after the long one are
// lost. Bytes the hook puts back with SetLineMode wait for the next
// DataReceived call. The default hook calls Transport.LoseConnection().
//
// ResumeProducing delivers buffered lines on the goroutine that calls it,
// so PauseProducing and ResumeProducing must run one at a time with the
// connection's callbacks: call them from the protocol's own callbacks, or
// register the receiver as its transport's producer (superd's transport
// calls a producer one call at a time with the protocol's callbacks: it
// then pauses the receiver while the output is above the high-water mark,
// and resumes it, delivering the lines held meanwhile, once the output has
// drained). Do not call them from another goroutine: delivery would overlap
// the connection's own DataReceived.
type LineReceiver struct {
	// Transport is the connection, set by Init.
	Transport framework.Transport
	// Delimiter ends each line; empty means DefaultDelimiter ("\r\n").
	Delimiter []byte
	// MaxLength is the longest line accepted, in bytes; zero or negative
	// means DefaultMaxLineLength (16384).
	MaxLength int

	handler  LineHandler
	raw      RawDataHandler
	exceeded LineLengthExceededHandler

	in      stream
	rawMode bool
	paused  bool
	stopped bool
	busy    bool
}

// Init prepares the receiver for a new connection: it stores t in
// Transport, makes h the receiver of lines (and of the optional hooks h
// implements) and resets the parsing state: empty buffer, line mode, not
// paused. Delimiter and MaxLength are kept.
func (r *LineReceiver) Init(t framework.Transport, h LineHandler) {
	r.Transport = t
	r.handler = h
	r.raw, _ = h.(RawDataHandler)
	r.exceeded, _ = h.(LineLengthExceededHandler)
	r.in.reset()
	r.rawMode, r.paused, r.stopped, r.busy = false, false, false, false
}

// DataReceived parses data: it delivers every complete line (or, in raw
// mode, the data itself) until the input runs out, the receiver is paused,
// the transport is disconnecting or a limit is exceeded. Called from inside
// one of the receiver's callbacks, it only appends data to the buffer; the
// running call parses it.
func (r *LineReceiver) DataReceived(data []byte) {
	if r.busy {
		r.in.push(data)
		return
	}
	if r.handler == nil {
		panic("basic: LineReceiver.DataReceived called before Init")
	}
	r.busy = true
	r.in.ext = data
	defer r.done()
	r.parse()
}

func (r *LineReceiver) done() {
	r.busy = false
	r.in.settle()
}

func (r *LineReceiver) parse() {
	in := &r.in
	for !r.paused {
		if r.rawMode {
			data := in.all()
			if len(data) == 0 {
				return
			}
			in.clear()
			r.deliverRaw(data)
			continue
		}
		delim := delimiterOf(r.Delimiter)
		maxLen := maxOf(r.MaxLength, DefaultMaxLineLength)
		buf := in.front()
		i := bytes.Index(buf, delim)
		if i < 0 && in.split() {
			// Storage holds a partial line; bring in the chunk up to its
			// first delimiter and look again where a delimiter could now
			// be.
			from := max(len(buf)-len(delim)+1, 0)
			in.feedLine(delim)
			buf = in.owned()
			if j := bytes.Index(buf[from:], delim); j >= 0 {
				i = from + j
			}
		}
		if i < 0 {
			if len(buf) >= unterminatedLimit(maxLen, len(delim)) {
				in.clear()
				r.lineLengthExceeded(buf)
			}
			return
		}
		if i > maxLen {
			data := in.all()
			in.clear()
			r.lineLengthExceeded(data)
			return
		}
		in.skip(i + len(delim))
		in.pinned = true
		r.handler.LineReceived(buf[:i])
		in.pinned = false
		if t := r.Transport; t != nil && t.Disconnecting() {
			return
		}
	}
}

func (r *LineReceiver) deliverRaw(data []byte) {
	if r.raw == nil {
		panic("basic: LineReceiver in raw mode, but its handler has no RawDataReceived method")
	}
	r.in.pinned = true
	r.raw.RawDataReceived(data)
	r.in.pinned = false
}

func (r *LineReceiver) lineLengthExceeded(data []byte) {
	r.in.pinned = true
	if r.exceeded != nil {
		r.exceeded.LineLengthExceeded(data)
	} else if r.Transport != nil {
		r.Transport.LoseConnection()
	}
	r.in.pinned = false
}

// SetRawMode switches to raw mode at once. Called from LineReceived, it
// hands the rest of the buffer (if any) to RawDataReceived, as one chunk,
// before the current DataReceived call returns.
func (r *LineReceiver) SetRawMode() { r.rawMode = true }

// SetLineMode switches to line mode and, if extra is not empty, feeds it
// through DataReceived. From RawDataReceived that is how the unconsumed
// tail of a chunk is handed back: it is parsed as lines by the running call.
// Called from LineReceived, extra lands after the bytes still buffered, so
// pass nothing there. Called outside any callback, the buffer followed by
// extra is parsed at once.
func (r *LineReceiver) SetLineMode(extra []byte) {
	r.rawMode = false
	if len(extra) > 0 {
		r.DataReceived(extra)
	}
}

// ClearLineBuffer empties the buffer and returns (a copy of) what it held.
// Called from LineReceived, that is everything after the current line,
// whose following lines are therefore not delivered.
func (r *LineReceiver) ClearLineBuffer() []byte {
	data := bytes.Clone(r.in.all())
	r.in.clear()
	return data
}

// SendLine writes line followed by the delimiter, in one Transport.Write.
// The line is not checked: it may contain the delimiter or exceed
// MaxLength. It may be called from any goroutine.
func (r *LineReceiver) SendLine(line []byte) {
	sendLine(r.Transport, line, delimiterOf(r.Delimiter))
}

// Paused reports whether the receiver is paused (by PauseProducing or
// StopProducing).
func (r *LineReceiver) Paused() bool { return r.paused }

// PauseProducing stops delivery, raw data included, at once (even in the
// middle of a buffer) and pauses the transport. New input is only buffered.
func (r *LineReceiver) PauseProducing() {
	r.paused = true
	if r.Transport != nil {
		r.Transport.PauseProducing()
	}
}

// ResumeProducing undoes PauseProducing: it resumes the transport, then
// delivers the buffered lines at once, in order, until the buffer runs out
// or a callback pauses again. After StopProducing it does nothing.
func (r *LineReceiver) ResumeProducing() {
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
func (r *LineReceiver) StopProducing() {
	r.paused = true
	r.stopped = true
	if r.Transport != nil {
		r.Transport.LoseConnection()
	}
}

// ConnectionLost does nothing; it is here so that a protocol embedding the
// receiver needs only ConnectionMade to be a framework.Protocol.
func (r *LineReceiver) ConnectionLost(reason error) {}

// LineOnlyReceiver is the variant of LineReceiver without raw mode, like
// Twisted's LineOnlyReceiver. Its rules differ in detail:
//
//   - Before each line it checks Transport.Disconnecting, the first line of
//     a chunk included, and drops the remaining lines if it is set.
//   - A complete line longer than MaxLength calls LineLengthExceeded with
//     that line only. The other complete lines of the chunk are dropped; the
//     trailing partial line stays buffered.
//   - After the lines of a chunk, a partial line longer than MaxLength
//     (rather than MaxLength+len(Delimiter)) calls LineLengthExceeded with
//     it. It stays buffered, so a hook that does not close is called again
//     after the next chunk. So a line of exactly MaxLength bytes whose
//     delimiter is split across chunks is refused.
//
// There is no pausing and no ClearLineBuffer.
type LineOnlyReceiver struct {
	// Transport is the connection, set by Init.
	Transport framework.Transport
	// Delimiter ends each line; empty means DefaultDelimiter ("\r\n").
	Delimiter []byte
	// MaxLength is the longest line accepted, in bytes; zero or negative
	// means DefaultMaxLineLength (16384).
	MaxLength int

	handler  LineHandler
	exceeded LineLengthExceededHandler
	in       stream
	busy     bool
}

// Init prepares the receiver for a new connection: it stores t in
// Transport, makes h the receiver of lines (and of LineLengthExceeded if h
// implements it) and empties the buffer. Delimiter and MaxLength are kept.
func (r *LineOnlyReceiver) Init(t framework.Transport, h LineHandler) {
	r.Transport = t
	r.handler = h
	r.exceeded, _ = h.(LineLengthExceededHandler)
	r.in.reset()
	r.busy = false
}

// DataReceived delivers every complete line of the buffered input followed
// by data, then checks the remaining partial line against MaxLength. Called
// from inside LineReceived, it only appends data to the buffer; the running
// call parses it.
func (r *LineOnlyReceiver) DataReceived(data []byte) {
	if r.busy {
		r.in.push(data)
		return
	}
	if r.handler == nil {
		panic("basic: LineOnlyReceiver.DataReceived called before Init")
	}
	r.busy = true
	r.in.ext = data
	defer r.done()
	r.parse()
}

func (r *LineOnlyReceiver) done() {
	r.busy = false
	r.in.settle()
}

func (r *LineOnlyReceiver) parse() {
	in := &r.in
	for {
		delim := delimiterOf(r.Delimiter)
		maxLen := maxOf(r.MaxLength, DefaultMaxLineLength)
		buf := in.front()
		i := bytes.Index(buf, delim)
		if i < 0 && in.split() {
			from := max(len(buf)-len(delim)+1, 0)
			in.feedLine(delim)
			buf = in.owned()
			if j := bytes.Index(buf[from:], delim); j >= 0 {
				i = from + j
			}
		}
		if i < 0 {
			break
		}
		if t := r.Transport; t != nil && t.Disconnecting() {
			r.dropLines(delim)
			return
		}
		in.skip(i + len(delim))
		in.pinned = true
		if i > maxLen {
			r.dropLines(delim)
			r.lineLengthExceeded(buf[:i])
			in.pinned = false
			return
		}
		r.handler.LineReceived(buf[:i])
		in.pinned = false
	}
	if in.size() > maxOf(r.MaxLength, DefaultMaxLineLength) {
		data := in.all()
		in.pinned = true
		r.lineLengthExceeded(data)
		in.pinned = false
	}
}

// dropLines discards every complete line left in the buffer, keeping the
// partial line after the last delimiter.
func (r *LineOnlyReceiver) dropLines(delim []byte) {
	buf := r.in.all()
	n := 0
	for {
		i := bytes.Index(buf[n:], delim)
		if i < 0 {
			break
		}
		n += i + len(delim)
	}
	r.in.skip(n)
}

func (r *LineOnlyReceiver) lineLengthExceeded(data []byte) {
	if r.exceeded != nil {
		r.exceeded.LineLengthExceeded(data)
	} else if r.Transport != nil {
		r.Transport.LoseConnection()
	}
}

// SendLine writes line followed by the delimiter, in one Transport.Write.
// The line is not checked. It may be called from any goroutine.
func (r *LineOnlyReceiver) SendLine(line []byte) {
	sendLine(r.Transport, line, delimiterOf(r.Delimiter))
}

// ConnectionLost does nothing; it is here so that a protocol embedding the
// receiver needs only ConnectionMade to be a framework.Protocol.
func (r *LineOnlyReceiver) ConnectionLost(reason error) {}

func delimiterOf(d []byte) []byte {
	if len(d) == 0 {
		return defaultDelimiter
	}
	return d
}

func maxOf(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

// unterminatedLimit is MaxLength+len(delimiter), saturating.
func unterminatedLimit(maxLen, delimLen int) int {
	if maxLen > math.MaxInt-delimLen {
		return math.MaxInt
	}
	return maxLen + delimLen
}

func sendLine(t framework.Transport, line, delim []byte) {
	b := getBuf()
	*b = append(append(*b, line...), delim...)
	t.Write(*b)
	putBuf(b)
}

// Interface guards.
var (
	_ framework.Producer = (*LineReceiver)(nil)
)
