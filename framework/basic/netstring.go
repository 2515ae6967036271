package basic

import (
	"math"
	"strconv"

	"github.com/superd-dev/superd/framework"
)

// DefaultMaxStringLength is the string limit of NetstringReceiver and the
// IntN receivers when MaxLength is zero.
const DefaultMaxStringLength = 99999

// StringHandler receives the strings of a NetstringReceiver or an
// IntNStringReceiver.
type StringHandler interface {
	// StringReceived is called once per string (which may be empty). s is
	// valid only until StringReceived returns.
	StringReceived(s []byte)
}

// NetstringReceiver parses netstrings ("5:hello,"), like Twisted's
// NetstringReceiver.
//
// The length is decimal ASCII without sign, blanks or leading zeros ("0" is
// the only length starting with 0), at most MaxLength, followed by ':', the
// payload, and ','. Nothing may come between netstrings.
//
// Every parse error is handled the same way, as soon as the offending byte
// arrives (a length over MaxLength as soon as its digits exceed it, before
// the ':'): the receiver calls Transport.LoseConnection, stops parsing and
// stays broken; strings completed earlier in the same chunk have already
// been delivered. There is no callback for errors.
//
// Unlike the line receivers, a LoseConnection made by StringReceived does
// not stop delivery of the strings remaining in the current chunk, and there
// is no pausing.
type NetstringReceiver struct {
	// Transport is the connection, set by Init.
	Transport framework.Transport
	// MaxLength is the longest string accepted, in bytes; zero or negative
	// means DefaultMaxStringLength (99999).
	MaxLength int

	handler StringHandler
	in      stream
	busy    bool
	broken  bool

	// Length parser: payload is set once the ':' has been read.
	payload bool
	digits  int    // digits read so far
	length  uint64 // value of the digits
}

// Init prepares the receiver for a new connection: it stores t in
// Transport, makes h the receiver of strings and resets the parser.
// MaxLength is kept.
func (r *NetstringReceiver) Init(t framework.Transport, h StringHandler) {
	r.Transport = t
	r.handler = h
	r.in.reset()
	r.busy, r.broken = false, false
	r.payload, r.digits, r.length = false, 0, 0
}

// DataReceived parses data, delivering each complete netstring. Called from
// inside StringReceived, it only appends data to the buffer; the running
// call parses it.
func (r *NetstringReceiver) DataReceived(data []byte) {
	if r.broken {
		// The parser is stuck for good; say so again.
		r.fail()
		return
	}
	if r.busy {
		r.in.push(data)
		return
	}
	if r.handler == nil {
		panic("basic: NetstringReceiver.DataReceived called before Init")
	}
	r.busy = true
	r.in.ext = data
	defer r.done()
	r.parse()
}

func (r *NetstringReceiver) done() {
	r.busy = false
	if r.broken {
		r.in.reset()
		return
	}
	r.in.settle()
}

func (r *NetstringReceiver) parse() {
	in := &r.in
	for !r.broken {
		if !r.payload {
			if !r.parseLength() {
				return
			}
			continue
		}
		n := int(r.length)
		frame, ok := in.need(n + 1)
		if !ok {
			return
		}
		if frame[n] != ',' {
			r.fail()
			return
		}
		in.skip(n + 1)
		r.payload, r.digits, r.length = false, 0, 0
		in.pinned = true
		r.handler.StringReceived(frame[:n])
		in.pinned = false
	}
}

// parseLength consumes length bytes up to and including the ':'. It
// returns false when the input runs out or on error.
func (r *NetstringReceiver) parseLength() bool {
	// Capped so that the length plus the comma fits an int.
	maxLen := uint64(min(maxOf(r.MaxLength, DefaultMaxStringLength), math.MaxInt-1))
	for {
		buf := r.in.front()
		if len(buf) == 0 {
			return false
		}
		for i, c := range buf {
			switch {
			case c == ':' && r.digits > 0:
				r.in.skip(i + 1)
				r.payload = true
				return true
			case c < '0' || c > '9':
				r.fail()
				return false
			case r.digits == 1 && r.length == 0:
				// A leading zero followed by another digit.
				r.fail()
				return false
			}
			d := uint64(c - '0')
			if d > maxLen || r.length > (maxLen-d)/10 {
				// length*10 + d > maxLen, checked without overflow.
				r.fail()
				return false
			}
			r.length = r.length*10 + d
			r.digits++
		}
		r.in.skip(len(buf))
	}
}

func (r *NetstringReceiver) fail() {
	r.broken = true
	if r.Transport != nil {
		r.Transport.LoseConnection()
	}
}

// Broken reports whether a parse error has occurred.
func (r *NetstringReceiver) Broken() bool { return r.broken }

// SendString writes s as a netstring, in one Transport.Write. MaxLength is
// not checked. It may be called from any goroutine.
func (r *NetstringReceiver) SendString(s []byte) {
	b := getBuf()
	buf := strconv.AppendInt(*b, int64(len(s)), 10)
	buf = append(buf, ':')
	buf = append(buf, s...)
	*b = append(buf, ',')
	r.Transport.Write(*b)
	putBuf(b)
}

// ConnectionLost does nothing; it is here so that a protocol embedding the
// receiver needs only ConnectionMade to be a framework.Protocol.
func (r *NetstringReceiver) ConnectionLost(reason error) {}
