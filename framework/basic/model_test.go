package basic

import (
	"bytes"

	"github.com/superd-dev/superd/framework"
)

// Naive reference models, written straight from the receive algorithms of
// the Twisted semantics reference: one plain buffer, a fresh copy for
// everything handed out, no attempt at speed. The fuzz targets check the
// real receivers against them.

// modelLine is LineReceiver's algorithm (semantics §4.1).
type modelLine struct {
	tr       framework.Transport
	h        LineHandler
	delim    []byte
	maxLen   int
	buf      []byte
	rawMode  bool
	paused   bool
	stopped  bool
	busy     bool
	exceeded LineLengthExceededHandler
}

func (m *modelLine) setup(t framework.Transport, h LineHandler, delim []byte, maxLen int) {
	m.tr, m.h = t, h
	m.delim = delimiterOf(delim)
	m.maxLen = maxOf(maxLen, DefaultMaxLineLength)
	m.exceeded, _ = h.(LineLengthExceededHandler)
}

func (m *modelLine) DataReceived(data []byte) {
	m.buf = append(m.buf[:len(m.buf):len(m.buf)], data...)
	if m.busy {
		return
	}
	m.busy = true
	defer func() { m.busy = false }()
	for len(m.buf) > 0 && !m.paused {
		if m.rawMode {
			data := m.buf
			m.buf = nil
			m.h.(RawDataHandler).RawDataReceived(data)
			continue
		}
		i := bytes.Index(m.buf, m.delim)
		if i < 0 {
			if len(m.buf) >= m.maxLen+len(m.delim) {
				data := m.buf
				m.buf = nil
				m.lineLengthExceeded(data)
			}
			return
		}
		line := bytes.Clone(m.buf[:i])
		if len(line) > m.maxLen {
			data := m.buf
			m.buf = nil
			m.lineLengthExceeded(data)
			return
		}
		m.buf = m.buf[i+len(m.delim):] // never written in place: appends copy
		m.h.LineReceived(line)
		if m.tr.Disconnecting() {
			return
		}
	}
}

func (m *modelLine) lineLengthExceeded(data []byte) {
	if m.exceeded != nil {
		m.exceeded.LineLengthExceeded(data)
	} else {
		m.tr.LoseConnection()
	}
}

func (m *modelLine) SetRawMode() { m.rawMode = true }

func (m *modelLine) SetLineMode(extra []byte) {
	m.rawMode = false
	if len(extra) > 0 {
		m.DataReceived(extra)
	}
}

func (m *modelLine) ClearLineBuffer() []byte {
	b := m.buf
	m.buf = nil
	return b
}

func (m *modelLine) PauseProducing() {
	m.paused = true
	m.tr.PauseProducing()
}

func (m *modelLine) ResumeProducing() {
	if m.stopped {
		return
	}
	m.paused = false
	m.tr.ResumeProducing()
	m.DataReceived(nil)
}

func (m *modelLine) StopProducing() {
	m.paused = true
	m.stopped = true
	m.tr.LoseConnection()
}

func (m *modelLine) Paused() bool { return m.paused }

// modelLineOnly is LineOnlyReceiver's algorithm (semantics §5). (Its
// harnesses never call DataReceived re-entrantly.)
type modelLineOnly struct {
	tr       framework.Transport
	h        LineHandler
	exceeded LineLengthExceededHandler
	delim    []byte
	maxLen   int
	buf      []byte
}

func (m *modelLineOnly) setup(t framework.Transport, h LineHandler, delim []byte, maxLen int) {
	m.tr, m.h = t, h
	m.delim = delimiterOf(delim)
	m.maxLen = maxOf(maxLen, DefaultMaxLineLength)
	m.exceeded, _ = h.(LineLengthExceededHandler)
}

func (m *modelLineOnly) DataReceived(data []byte) {
	lines := bytes.Split(append(bytes.Clone(m.buf), data...), m.delim)
	m.buf = lines[len(lines)-1]
	for _, line := range lines[:len(lines)-1] {
		if m.tr.Disconnecting() {
			return
		}
		if len(line) > m.maxLen {
			m.lineLengthExceeded(line)
			return
		}
		m.h.LineReceived(line)
	}
	if len(m.buf) > m.maxLen {
		m.lineLengthExceeded(m.buf)
	}
}

func (m *modelLineOnly) lineLengthExceeded(data []byte) {
	if m.exceeded != nil {
		m.exceeded.LineLengthExceeded(data)
	} else {
		m.tr.LoseConnection()
	}
}

// modelNetstrings parses a whole input at once (semantics §6) and returns
// the strings it holds and whether it contains a parse error; without an
// error, the bytes after the last string are a valid beginning of one.
func modelNetstrings(in []byte, maxLen int) (msgs [][]byte, bad bool) {
	maxLen = maxOf(maxLen, DefaultMaxStringLength)
	for len(in) > 0 {
		i, n := 0, 0
		for ; i < len(in) && in[i] >= '0' && in[i] <= '9'; i++ {
			if i == 1 && in[0] == '0' {
				return msgs, true // leading zero
			}
			n = n*10 + int(in[i]-'0')
			if n > maxLen {
				return msgs, true
			}
		}
		if i == len(in) {
			return msgs, false // digits so far are fine
		}
		if i == 0 || in[i] != ':' {
			return msgs, true
		}
		rest := in[i+1:]
		if len(rest) <= n {
			return msgs, false // payload or comma still to come
		}
		if rest[n] != ',' {
			return msgs, true
		}
		msgs = append(msgs, rest[:n])
		in = rest[n+1:]
	}
	return msgs, false
}

// modelIntN parses a whole input of prefixLen-byte length-prefixed strings
// (semantics §7) and returns the strings and whether a length is over the
// limit.
func modelIntN(in []byte, prefixLen, maxLen int) (msgs [][]byte, over bool) {
	maxLen = maxOf(maxLen, DefaultMaxStringLength)
	for len(in) >= prefixLen {
		var n uint64
		for _, c := range in[:prefixLen] {
			n = n<<8 | uint64(c)
		}
		if n > uint64(maxLen) {
			return msgs, true
		}
		if uint64(len(in)-prefixLen) < n {
			return msgs, false
		}
		msgs = append(msgs, in[prefixLen:prefixLen+int(n)])
		in = in[prefixLen+int(n):]
	}
	return msgs, false
}
