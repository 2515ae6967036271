package basic_test

import (
	"bytes"
	"fmt"
	"net"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/basic"
)

// answer is a small line protocol: it greets the client, answers each line,
// and closes on "quit".
type answer struct {
	basic.LineReceiver
}

func (a *answer) ConnectionMade(t framework.Transport) {
	a.LineReceiver.Init(t, a)
	a.SendLine([]byte("How are you?"))
}

func (a *answer) LineReceived(line []byte) {
	switch string(line) {
	case "quit":
		a.SendLine([]byte("Bye."))
		a.Transport.LoseConnection()
	case "Fine":
		a.SendLine([]byte("Glad to hear it."))
	default:
		// line is only valid during the call; SendLine copies it out.
		a.SendLine(append([]byte("I don't know what you mean: "), bytes.ToUpper(line)...))
	}
}

// answer is a framework.Protocol: ConnectionMade is its own, DataReceived
// and ConnectionLost come from the embedded LineReceiver.
var _ framework.Protocol = (*answer)(nil)

func ExampleLineReceiver() {
	p := &answer{}
	t := &printTransport{}
	p.ConnectionMade(t)

	// Chunks arrive cut anywhere; lines come out whole.
	for _, chunk := range []string{"Fi", "ne\r\nhm", "m\r\nquit\r\nignored\r\n"} {
		if t.closing {
			break // a real transport stops reading after LoseConnection
		}
		p.DataReceived([]byte(chunk))
	}
	// Output:
	// > "How are you?\r\n"
	// > "Glad to hear it.\r\n"
	// > "I don't know what you mean: HMM\r\n"
	// > "Bye.\r\n"
	// (closing)
}

// sum reads 32-bit length-prefixed strings and answers each with its
// length, as a netstring would be answered: the same pattern works for every
// receiver.
type sum struct {
	basic.Int32StringReceiver
	total int
}

func (s *sum) ConnectionMade(t framework.Transport) {
	s.MaxLength = 1 << 20 // settings are plain fields; zero means Twisted's default
	s.Int32StringReceiver.Init(t, s)
}

func (s *sum) StringReceived(b []byte) {
	s.total += len(b)
	if err := s.SendString(fmt.Appendf(nil, "%d so far", s.total)); err != nil {
		s.Transport.LoseConnection()
	}
}

func ExampleInt32StringReceiver() {
	p := &sum{}
	p.ConnectionMade(&printTransport{})
	p.DataReceived([]byte("\x00\x00\x00\x05hello\x00\x00"))
	p.DataReceived([]byte("\x00\x03abc"))
	// Output:
	// > "\x00\x00\x00\b5 so far"
	// > "\x00\x00\x00\b8 so far"
}

// printTransport prints what the protocol writes.
type printTransport struct{ closing bool }

func (t *printTransport) Write(b []byte)       { fmt.Printf("> %q\n", b) }
func (t *printTransport) WriteString(s string) { fmt.Printf("> %q\n", s) }
func (t *printTransport) LoseConnection() {
	if !t.closing {
		t.closing = true
		fmt.Println("(closing)")
	}
}
func (t *printTransport) AbortConnection()                          { t.LoseConnection() }
func (t *printTransport) Disconnecting() bool                       { return t.closing }
func (t *printTransport) PauseProducing()                           {}
func (t *printTransport) ResumeProducing()                          {}
func (t *printTransport) RegisterProducer(framework.Producer) error { return nil }
func (t *printTransport) UnregisterProducer()                       {}
func (t *printTransport) PeerAddr() net.Addr                        { return nil }
func (t *printTransport) LocalAddr() net.Addr                       { return nil }
