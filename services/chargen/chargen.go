// Package chargen implements the character generator service of RFC 864:
// lines of 72 characters taken from the 95 printable ASCII characters (32
// to 126) in a ring, each line starting one character further on, each
// followed by CRLF, sent until the peer closes; on udp, one reply per
// datagram of a random length from 0 to 512 bytes of the same pattern.
//
// Name: chargen. Attributes: none beyond the common ones. Serves streams
// (tcp, tls, unix) and datagrams (udp).
//
//	service "chargen" "chargen" {
//	  endpoint "tcp" { address = "127.0.0.1:7019" }
//	}
//
// On a stream, chargen is a producer registered with its transport: it
// writes while the transport wants output and stops when the transport
// pauses it (unsent output above the high-water mark). Its writes never
// take the output more than a byte past the mark (the transport tells how
// much room is left: framework.OutputRoomer), so a peer that reads nothing
// costs no CPU, and no memory beyond the high-water mark; a peer that reads
// gets the pattern as fast as it reads.
// What the peer sends is read and dropped, as the RFC says.
package chargen

import (
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"

	"github.com/superd-dev/superd/framework"
)

const (
	// LineLength is the number of characters of a line, without its CRLF.
	LineLength = 72
	// MaxDatagram is the longest reply to a datagram (RFC 864: 0 to 512).
	MaxDatagram = 512

	first    = ' '                 // the ring is ' ' (32) to '~' (126)
	ringSize = 95                  // printable ASCII characters
	lineSize = LineLength + 2      // with CRLF
	period   = ringSize * lineSize // the pattern repeats every 95 lines
	// chunkSize is the most one Write sends: a couple of hundred lines,
	// so output moves in large writes; less when the high-water mark is
	// nearer than that.
	chunkSize = 16 << 10
)

// pattern is the stream from its first line on, long enough that a chunk
// or a datagram starting anywhere in the first period is one slice of it
// (the pattern repeats every period bytes, so that is every place).
var pattern = func() []byte {
	b := make([]byte, period+max(chunkSize, MaxDatagram))
	for i := range b {
		line, col := i/lineSize, i%lineSize
		switch {
		case col < LineLength:
			b[i] = byte(first + (line+col)%ringSize)
		case col == LineLength:
			b[i] = '\r'
		default:
			b[i] = '\n'
		}
	}
	return b
}()

func init() {
	framework.Register(framework.Spec{
		Name:           "chargen",
		Description:    "RFC 864 character generator: 72-column lines until the peer closes (udp: 0 to 512 bytes)",
		Serves:         framework.Streams | framework.Datagrams,
		DatagramGuards: true, // a small service: the classic reflection target
		New: func(*framework.Env, any) (framework.Factory, error) {
			return Factory{}, nil
		},
	})
}

// Factory builds chargen protocols: one per connection, and one per udp
// endpoint.
type Factory struct{}

// BuildProtocol implements framework.Factory.
func (Factory) BuildProtocol(net.Addr) framework.Protocol { return new(Chargen) }

// BuildDatagramProtocol implements framework.DatagramFactory.
func (Factory) BuildDatagramProtocol(t framework.DatagramTransport) framework.DatagramProtocol {
	return &DatagramChargen{Transport: t}
}

// Chargen is the protocol of one connection, and its transport's producer.
//
// The transport calls PauseProducing, ResumeProducing and StopProducing
// from its own goroutines, whenever its output crosses the high-water mark
// or drains: a pause can arrive from inside one of our own writes, and a
// resume while a previous ResumeProducing is still writing. So the state
// is under mu, never held across a Write (a pause delivered from inside
// the Write takes mu), and one goroutine at a time writes (producing):
// a ResumeProducing that finds another writing only lifts the pause, and
// that writer carries on, so chunks never overlap and the pattern stays
// continuous.
type Chargen struct {
	framework.BaseProtocol

	mu        sync.Mutex
	paused    bool
	stopped   bool
	producing bool // a ResumeProducing is writing
	off       int  // where the next chunk starts in pattern, < period

	chunks atomic.Int64 // chunks written: tests watch it stand still while paused
}

// ConnectionMade registers the protocol as its transport's producer and
// starts writing.
func (c *Chargen) ConnectionMade(t framework.Transport) {
	c.BaseProtocol.ConnectionMade(t)
	if err := t.RegisterProducer(c); err != nil {
		// Only a second producer is refused, and this is the first.
		t.AbortConnection()
		return
	}
	// As Twisted's push producers do, start by ourselves. Output written
	// inside a callback is sent when it returns, so this writes up to the
	// high-water mark, is paused by the transport, and returns.
	c.ResumeProducing()
}

// ResumeProducing writes chunks of the pattern until the transport pauses
// or stops the producer.
func (c *Chargen) ResumeProducing() {
	c.mu.Lock()
	c.paused = false
	if c.producing || c.stopped {
		c.mu.Unlock()
		return
	}
	c.producing = true
	room, _ := c.Transport.(framework.OutputRoomer)
	for !c.paused && !c.stopped {
		n := chunkSize
		if room != nil {
			// Up to the mark, and one byte past it once there: that
			// write is the one that pauses us.
			n = min(n, room.OutputRoom()+1)
		}
		off := c.off
		c.off = (off + n) % period
		c.mu.Unlock()
		if c.Transport.Disconnecting() {
			// Writes are dropped from here on, so none would pause us:
			// stop instead of spinning until StopProducing arrives.
			c.mu.Lock()
			c.stopped = true
			break
		}
		c.Transport.Write(pattern[off : off+n])
		c.chunks.Add(1)
		c.mu.Lock()
	}
	c.producing = false
	c.mu.Unlock()
}

// PauseProducing stops the writing, after the chunk being written if any.
func (c *Chargen) PauseProducing() {
	c.mu.Lock()
	c.paused = true
	c.mu.Unlock()
}

// StopProducing stops the writing for good: the connection is gone.
func (c *Chargen) StopProducing() {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
}

// DatagramChargen answers every datagram of one udp endpoint with a
// random length (0 to MaxDatagram bytes) of the pattern.
type DatagramChargen struct {
	Transport framework.DatagramTransport
	// line is the line the next reply starts with: each reply starts one
	// line further on, as inetd's do. Calls for one endpoint never
	// overlap, so it needs no lock.
	line int
}

// DatagramReceived sends a reply to from; the request's content is
// ignored, as the RFC says.
func (d *DatagramChargen) DatagramReceived(_ []byte, from net.Addr) {
	off := d.line * lineSize
	d.line = (d.line + 1) % ringSize
	d.Transport.WriteTo(pattern[off:off+rand.IntN(MaxDatagram+1)], from)
}

// Interface guards.
var (
	_ framework.Factory          = Factory{}
	_ framework.DatagramFactory  = Factory{}
	_ framework.Protocol         = (*Chargen)(nil)
	_ framework.Producer         = (*Chargen)(nil)
	_ framework.DatagramProtocol = (*DatagramChargen)(nil)
)
