package engine

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/basic"
)

// The framing vectors of twisted-semantics (checked against real Twisted)
// drive the receivers through a fake transport in package basic. Here the
// ones that hold for any chunking, with the harnesses that only collect,
// run through a real connection: the receiver embedded in a protocol, the
// input sent over loopback, cut wherever the sockets cut it. What a
// receiver sees of the transport (Disconnecting once it has asked to
// close, no input after that) is the engine's, not a model's.
const vectorsFile = "../../framework/basic/testdata/twisted_vectors.json"

type wireVector struct {
	ID       string `json:"id"`
	Protocol string `json:"protocol"`
	Settings struct {
		MaxLength int     `json:"MAX_LENGTH"`
		Delimiter *string `json:"delimiter"`
	} `json:"settings"`
	Harness string          `json:"harness"`
	Chunks  [][]byte        `json:"chunks"`
	Rechunk json.RawMessage `json:"rechunk"`
	Expect  struct {
		Messages        [][]byte `json:"messages"`
		Closed          bool     `json:"closed"`
		Exceeded        [][]byte `json:"exceeded"`
		ExceededLengths []uint64 `json:"exceeded_lengths"`
	} `json:"expect"`
}

// closeRecorder is the transport the receiver is given: the connection,
// with LoseConnection recorded (the vectors' "closed").
type closeRecorder struct {
	framework.Transport
	closed atomic.Bool
}

func (c *closeRecorder) LoseConnection() {
	c.closed.Store(true)
	c.Transport.LoseConnection()
}

// vectorProtocol serves one vector: it embeds no receiver itself but
// forwards DataReceived to the one the vector names, and records what the
// harness records.
type vectorProtocol struct {
	v    *wireVector
	tr   *closeRecorder
	recv interface{ DataReceived([]byte) }

	mu              sync.Mutex
	messages        [][]byte
	exceeded        [][]byte
	exceededLengths []uint64
	lost            chan error
}

func (p *vectorProtocol) record(b []byte) {
	p.mu.Lock()
	p.messages = append(p.messages, bytes.Clone(b))
	p.mu.Unlock()
	if p.v.Harness == "close_on_quit" && string(b) == "quit" {
		p.tr.LoseConnection()
	}
}

type lineSink struct{ *vectorProtocol }

func (s lineSink) LineReceived(line []byte) { s.record(line) }

type lineSinkExceeded struct{ lineSink }

func (s lineSinkExceeded) LineLengthExceeded(data []byte) {
	s.mu.Lock()
	s.exceeded = append(s.exceeded, bytes.Clone(data))
	s.mu.Unlock()
}

type stringSink struct{ *vectorProtocol }

func (s stringSink) StringReceived(b []byte) { s.record(b) }

type stringSinkExceeded struct{ stringSink }

func (s stringSinkExceeded) LengthLimitExceeded(n uint64) {
	s.mu.Lock()
	s.exceededLengths = append(s.exceededLengths, n)
	s.mu.Unlock()
}

func (p *vectorProtocol) ConnectionMade(t framework.Transport) {
	p.tr = &closeRecorder{Transport: t}
	v := p.v
	exceeded := v.Harness == "collect_exceeded"
	var lh basic.LineHandler = lineSink{p}
	var sh basic.StringHandler = stringSink{p}
	if exceeded {
		lh, sh = lineSinkExceeded{lineSink{p}}, stringSinkExceeded{stringSink{p}}
	}
	var delim []byte
	if v.Settings.Delimiter != nil {
		delim = []byte(*v.Settings.Delimiter)
	}
	max := v.Settings.MaxLength
	switch v.Protocol {
	case "LineReceiver":
		r := &basic.LineReceiver{Delimiter: delim, MaxLength: max}
		r.Init(p.tr, lh)
		p.recv = r
	case "LineOnlyReceiver":
		r := &basic.LineOnlyReceiver{Delimiter: delim, MaxLength: max}
		r.Init(p.tr, lh)
		p.recv = r
	case "NetstringReceiver":
		r := &basic.NetstringReceiver{MaxLength: max}
		r.Init(p.tr, sh)
		p.recv = r
	case "Int8StringReceiver":
		r := &basic.Int8StringReceiver{MaxLength: max}
		r.Init(p.tr, sh)
		p.recv = r
	case "Int16StringReceiver":
		r := &basic.Int16StringReceiver{MaxLength: max}
		r.Init(p.tr, sh)
		p.recv = r
	case "Int32StringReceiver":
		r := &basic.Int32StringReceiver{MaxLength: max}
		r.Init(p.tr, sh)
		p.recv = r
	default:
		panic("unknown protocol " + v.Protocol)
	}
}

func (p *vectorProtocol) DataReceived(b []byte) { p.recv.DataReceived(b) }

func (p *vectorProtocol) ConnectionLost(error) {}

func TestVectorsOverConnections(t *testing.T) {
	raw, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var vf struct {
		Decode []wireVector `json:"decode_vectors"`
	}
	if err := json.Unmarshal(raw, &vf); err != nil {
		t.Fatal(err)
	}
	ran := 0
	for i := range vf.Decode {
		v := &vf.Decode[i]
		if string(v.Rechunk) != `"any"` || !slices.Contains([]string{"collect", "collect_exceeded", "close_on_quit"}, v.Harness) {
			continue // holds for the given chunking only, or needs a harness of package basic's
		}
		ran++
		t.Run(v.ID, func(t *testing.T) {
			p := dialPair(t, "tcp", pairOpts{})
			proto := &vectorProtocol{v: v}
			s := serve(t, p.server, ConnOptions{}, proto)
			go func() {
				// The client sends the input in the vector's chunks, then
				// its end of stream; once the server has asked to close,
				// the rest may meet a reset, which is fine.
				for _, c := range v.Chunks {
					if _, err := p.client.Write(c); err != nil {
						return
					}
				}
				closeWriteQuiet(p.client)
			}()
			readAll(p.client, serveWait) // until the server closes
			s.wait(t, serveWait)
			proto.mu.Lock()
			defer proto.mu.Unlock()
			if !slices.EqualFunc(proto.messages, v.Expect.Messages, bytes.Equal) {
				t.Errorf("messages %q, want %q", clip(proto.messages), clip(v.Expect.Messages))
			}
			if got := proto.tr.closed.Load(); got != v.Expect.Closed {
				t.Errorf("closed %v, want %v", got, v.Expect.Closed)
			}
			if !slices.EqualFunc(proto.exceeded, v.Expect.Exceeded, bytes.Equal) {
				t.Errorf("exceeded %q, want %q", clip(proto.exceeded), clip(v.Expect.Exceeded))
			}
			if !slices.Equal(proto.exceededLengths, v.Expect.ExceededLengths) {
				t.Errorf("exceeded lengths %v, want %v", proto.exceededLengths, v.Expect.ExceededLengths)
			}
		})
	}
	if ran < 80 {
		t.Errorf("only %d vectors ran over a connection", ran)
	}
}

// closeWriteQuiet sends the client's end of stream, ignoring an error (the
// server may have closed already).
func closeWriteQuiet(c any) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// clip shortens messages for a failure's output.
func clip(msgs [][]byte) [][]byte {
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		if len(m) > 40 {
			m = append(bytes.Clone(m[:40]), "..."...)
		}
		out[i] = m
	}
	return out
}
