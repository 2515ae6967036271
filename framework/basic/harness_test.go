package basic

import (
	"bytes"
	"fmt"
	"strconv"

	"github.com/superd-dev/superd/framework"
)

// This file ports the test-side protocols ("harnesses") of the vectors'
// schema. Each one talks to its receiver through a small interface, so the
// same harness drives the real receivers and the naive models of
// model_test.go.

// outcome is what a harness records.
type outcome struct {
	messages        [][]byte
	exceeded        [][]byte
	exceededLengths []uint64
	cleared         [][]byte
}

// lineAPI is what the line harnesses need from a LineReceiver.
type lineAPI interface {
	DataReceived(data []byte)
	SetRawMode()
	SetLineMode(extra []byte)
	ClearLineBuffer() []byte
	PauseProducing()
	ResumeProducing()
	StopProducing()
	Paused() bool
}

// lineImpl is a LineReceiver implementation under test: the real one or
// the model.
type lineImpl interface {
	lineAPI
	setup(t framework.Transport, h LineHandler, delim []byte, maxLen int)
}

type realLine struct{ LineReceiver }

func (r *realLine) setup(t framework.Transport, h LineHandler, delim []byte, maxLen int) {
	r.Delimiter = delim
	r.MaxLength = maxLen
	r.Init(t, h)
}

type realLineOnly struct{ LineOnlyReceiver }

func (r *realLineOnly) setup(t framework.Transport, h LineHandler, delim []byte, maxLen int) {
	// Settings after Init, which must work as well.
	r.Init(t, h)
	r.Delimiter = delim
	r.MaxLength = maxLen
}

// Line harnesses.

type lineCollect struct {
	out  *outcome
	tr   *fakeTransport
	quit bool // close_on_quit
}

func (h *lineCollect) LineReceived(line []byte) {
	h.out.messages = append(h.out.messages, bytes.Clone(line))
	if h.quit && string(line) == "quit" {
		h.tr.LoseConnection()
	}
}

type lineCollectExceeded struct{ lineCollect }

func (h *lineCollectExceeded) LineLengthExceeded(data []byte) {
	h.out.exceeded = append(h.out.exceeded, bytes.Clone(data))
}

type lineTester struct {
	out    *outcome
	tr     *fakeTransport
	api    lineAPI
	maxLen int
	length int
}

func (h *lineTester) LineReceived(line []byte) {
	h.out.messages = append(h.out.messages, bytes.Clone(line))
	switch s := string(line); {
	case s == "":
		h.api.SetRawMode()
	case s == "pause":
		h.api.PauseProducing()
	case s == "rawpause":
		h.api.PauseProducing()
		h.api.SetRawMode()
		h.out.messages = append(h.out.messages, []byte{})
	case s == "stop":
		h.api.StopProducing()
	case len(s) >= 4 && s[:4] == "len ":
		n, err := strconv.Atoi(s[4:])
		if err != nil || n < 0 {
			n = 0 // Python would raise; any fixed choice does here
		}
		h.length = n
	case len(s) >= 7 && s[:7] == "produce":
		// A pull producer, as Twisted has it: resumed once registered.
		if h.tr.RegisterProducer(h.api) == nil {
			h.api.ResumeProducing()
		}
	case len(s) >= 9 && s[:9] == "unproduce":
		h.tr.UnregisterProducer()
	}
}

func (h *lineTester) RawDataReceived(data []byte) {
	take := data[:min(h.length, len(data))]
	rest := data[len(take):]
	h.length -= len(take)
	last := len(h.out.messages) - 1
	h.out.messages[last] = append(h.out.messages[last], take...)
	if h.length == 0 {
		h.api.SetLineMode(rest)
	}
}

func (h *lineTester) LineLengthExceeded(data []byte) {
	if len(data) > h.maxLen+1 {
		h.api.SetLineMode(data[h.maxLen+1:])
	}
}

type lineFlipping struct {
	out *outcome
	api lineAPI
}

func (h *lineFlipping) LineReceived(line []byte) {
	h.out.messages = append(h.out.messages, bytes.Clone(line))
	h.api.SetRawMode()
}

func (h *lineFlipping) RawDataReceived(data []byte) { h.api.SetLineMode(data[1:]) }

type lineClearing struct {
	out *outcome
	api lineAPI
}

func (h *lineClearing) LineReceived(line []byte) {
	h.out.messages = append(h.out.messages, bytes.Clone(line))
	h.out.cleared = append(h.out.cleared, h.api.ClearLineBuffer())
}

type lineModeSwitch struct {
	out *outcome
	api lineAPI
}

func (h *lineModeSwitch) LineReceived(line []byte) {
	h.out.messages = append(h.out.messages, append([]byte("L:"), line...))
	if string(line) == "RAW" {
		h.api.SetRawMode()
	}
}

func (h *lineModeSwitch) RawDataReceived(data []byte) {
	i := bytes.IndexByte(data, '|')
	if i < 0 {
		h.out.messages = append(h.out.messages, append([]byte("R:"), data...))
		return
	}
	h.out.messages = append(h.out.messages, append([]byte("R:"), data[:i]...))
	h.api.SetLineMode(data[i+1:])
}

// pauseEach serves lines and strings alike.
type pauseEach struct {
	out *outcome
	tr  *fakeTransport
	api interface{ PauseProducing() }
}

func (h *pauseEach) LineReceived(line []byte) { h.StringReceived(line) }

func (h *pauseEach) StringReceived(s []byte) {
	h.out.messages = append(h.out.messages, bytes.Clone(s))
	h.tr.Write(s)
	h.api.PauseProducing()
}

// String harnesses.

type stringCollect struct {
	out  *outcome
	tr   *fakeTransport
	quit bool
}

func (h *stringCollect) StringReceived(s []byte) {
	h.out.messages = append(h.out.messages, bytes.Clone(s))
	if h.quit && string(s) == "quit" {
		h.tr.LoseConnection()
	}
}

type stringCollectExceeded struct{ stringCollect }

func (h *stringCollectExceeded) LengthLimitExceeded(length uint64) {
	h.out.exceededLengths = append(h.out.exceededLengths, length)
}

// lineHandlerFor builds the named line harness around api.
func lineHandlerFor(harness string, out *outcome, tr *fakeTransport, api lineAPI, maxLen int) (LineHandler, error) {
	switch harness {
	case "collect":
		return &lineCollect{out: out, tr: tr}, nil
	case "close_on_quit":
		return &lineCollect{out: out, tr: tr, quit: true}, nil
	case "collect_exceeded":
		return &lineCollectExceeded{lineCollect{out: out, tr: tr}}, nil
	case "line_tester":
		return &lineTester{out: out, tr: tr, api: api, maxLen: maxLen}, nil
	case "flipping":
		return &lineFlipping{out: out, api: api}, nil
	case "clearing":
		return &lineClearing{out: out, api: api}, nil
	case "mode_switch":
		return &lineModeSwitch{out: out, api: api}, nil
	case "pause_each":
		return &pauseEach{out: out, tr: tr, api: api}, nil
	}
	return nil, fmt.Errorf("unknown line harness %q", harness)
}

// stringHandlerFor builds the named string harness; api is the receiver
// for pause_each.
func stringHandlerFor(harness string, out *outcome, tr *fakeTransport, api interface{ PauseProducing() }) (StringHandler, error) {
	switch harness {
	case "collect":
		return &stringCollect{out: out, tr: tr}, nil
	case "close_on_quit":
		return &stringCollect{out: out, tr: tr, quit: true}, nil
	case "collect_exceeded":
		return &stringCollectExceeded{stringCollect{out: out, tr: tr}}, nil
	case "pause_each":
		if api == nil {
			return nil, fmt.Errorf("pause_each needs a pausable receiver")
		}
		return &pauseEach{out: out, tr: tr, api: api}, nil
	}
	return nil, fmt.Errorf("unknown string harness %q", harness)
}

// receiver is what a test feeds.
type receiver interface {
	DataReceived(data []byte)
}

// build makes a receiver of the given protocol running the given harness
// over a fresh fake transport. model selects the naive line models instead
// of the real line receivers.
func build(protocol, harness string, delim []byte, maxLen int, model bool) (receiver, *fakeTransport, *outcome, error) {
	tr := &fakeTransport{}
	out := &outcome{}
	switch protocol {
	case "LineReceiver":
		var impl lineImpl = &realLine{}
		if model {
			impl = &modelLine{}
		}
		h, err := lineHandlerFor(harness, out, tr, impl, maxLen)
		if err != nil {
			return nil, nil, nil, err
		}
		impl.setup(tr, h, delim, maxLen)
		return impl, tr, out, nil
	case "LineOnlyReceiver":
		if harness != "collect" && harness != "collect_exceeded" && harness != "close_on_quit" {
			return nil, nil, nil, fmt.Errorf("harness %q not for LineOnlyReceiver", harness)
		}
		h, err := lineHandlerFor(harness, out, tr, nil, maxLen)
		if err != nil {
			return nil, nil, nil, err
		}
		var impl interface {
			receiver
			setup(framework.Transport, LineHandler, []byte, int)
		} = &realLineOnly{}
		if model {
			impl = &modelLineOnly{}
		}
		impl.setup(tr, h, delim, maxLen)
		return impl, tr, out, nil
	case "NetstringReceiver":
		r := &NetstringReceiver{MaxLength: maxLen}
		h, err := stringHandlerFor(harness, out, tr, nil)
		if err != nil {
			return nil, nil, nil, err
		}
		r.Init(tr, h)
		return r, tr, out, nil
	case "Int8StringReceiver":
		return buildIntN(&Int8StringReceiver{}, harness, maxLen, tr, out)
	case "Int16StringReceiver":
		return buildIntN(&Int16StringReceiver{}, harness, maxLen, tr, out)
	case "Int32StringReceiver":
		return buildIntN(&Int32StringReceiver{}, harness, maxLen, tr, out)
	}
	return nil, nil, nil, fmt.Errorf("unknown protocol %q", protocol)
}

func buildIntN[P uint8 | uint16 | uint32](r *IntNStringReceiver[P], harness string, maxLen int, tr *fakeTransport, out *outcome) (receiver, *fakeTransport, *outcome, error) {
	h, err := stringHandlerFor(harness, out, tr, r)
	if err != nil {
		return nil, nil, nil, err
	}
	r.Init(tr, h)
	r.MaxLength = maxLen
	return r, tr, out, nil
}

// feedChunks feeds chunks in order, stopping once a close was requested
// (the vectors' feeding rule).
func feedChunks(r receiver, tr *fakeTransport, chunks [][]byte) {
	for _, c := range chunks {
		if closed(tr) {
			return
		}
		r.DataReceived(c)
	}
}

// splitFixed cuts data into chunks of size n (the last may be shorter).
func splitFixed(data []byte, n int) [][]byte {
	var out [][]byte
	for len(data) > n {
		out = append(out, data[:n])
		data = data[n:]
	}
	return append(out, data)
}

// splitBy cuts data into chunks whose sizes come from ctl (1 + b%mod each,
// cycling); with an empty ctl, data is one chunk.
func splitBy(data, ctl []byte, mod int) [][]byte {
	if len(ctl) == 0 {
		return [][]byte{data}
	}
	var out [][]byte
	for i := 0; len(data) > 0; i++ {
		n := min(1+int(ctl[i%len(ctl)])%mod, len(data))
		out = append(out, data[:n])
		data = data[n:]
	}
	if out == nil {
		out = [][]byte{{}}
	}
	return out
}
