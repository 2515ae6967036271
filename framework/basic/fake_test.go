package basic

import (
	"bytes"
	"errors"
	"net"

	"github.com/superd-dev/superd/framework"
)

// fakeTransport is the in-memory transport of the vectors' schema: it
// records writes, close requests and pause state, and calls a registered
// producer's ResumeProducing at once (a pull producer, as Twisted does).
type fakeTransport struct {
	writes        [][]byte
	lost          int // LoseConnection calls
	aborted       bool
	disconnecting bool
	paused        bool
	pauses        int
	resumes       int
	producer      framework.Producer
}

var _ framework.Transport = (*fakeTransport)(nil)

func (t *fakeTransport) Write(b []byte) {
	if len(b) > 0 {
		t.writes = append(t.writes, bytes.Clone(b))
	}
}

func (t *fakeTransport) WriteString(s string) { t.Write([]byte(s)) }

func (t *fakeTransport) LoseConnection() {
	t.lost++
	t.disconnecting = true
}

func (t *fakeTransport) AbortConnection() {
	t.aborted = true
	t.disconnecting = true
}

func (t *fakeTransport) Disconnecting() bool { return t.disconnecting }

func (t *fakeTransport) PauseProducing() {
	t.paused = true
	t.pauses++
}

func (t *fakeTransport) ResumeProducing() {
	t.paused = false
	t.resumes++
}

func (t *fakeTransport) RegisterProducer(p framework.Producer) error {
	if t.producer != nil {
		return errors.New("fake: a producer is already registered")
	}
	t.producer = p
	p.ResumeProducing()
	return nil
}

func (t *fakeTransport) UnregisterProducer() { t.producer = nil }

func (t *fakeTransport) PeerAddr() net.Addr  { return &net.UnixAddr{Net: "unix"} }
func (t *fakeTransport) LocalAddr() net.Addr { return &net.UnixAddr{Name: "fake", Net: "unix"} }

func (t *fakeTransport) closed() bool { return t.lost > 0 }

func (t *fakeTransport) written() []byte { return bytes.Join(t.writes, nil) }
