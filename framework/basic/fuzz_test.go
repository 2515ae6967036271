package basic

import (
	"bytes"
	"testing"
)

// The fuzz targets take the input bytes and a control string that picks the
// harness, the settings and how the input is cut into chunks (see
// splitBy). Seed corpora are in testdata/fuzz/<FuzzName>/; the vectors are
// added as seeds too.

// maxFuzzInput keeps each run fast (mode flips and the models are
// quadratic); the receivers' logic has no size thresholds beyond MaxLength,
// which the fuzzers keep small.
const maxFuzzInput = 4 << 10

var fuzzDelimiters = [][]byte{
	[]byte("\r\n"), []byte("\n"), []byte("END"), []byte("aa"), []byte("\r\n\r\n"), nil,
}

var lineHarnesses = []string{
	"collect", "collect_exceeded", "close_on_quit", "line_tester",
	"flipping", "clearing", "mode_switch", "pause_each",
}

// fuzzMaxLength maps a control byte to a MaxLength: mostly small, so the
// limits are hit, sometimes the default.
func fuzzMaxLength(b byte) int {
	if b >= 250 {
		return 0
	}
	return 1 + int(b)%40
}

func ctlByte(ctl []byte, i int) byte {
	if i < len(ctl) {
		return ctl[i]
	}
	return 0
}

func addVectorSeeds(f *testing.F, protocols ...string) {
	vf := loadVectors(f)
	for _, v := range vf.Decode {
		for _, p := range protocols {
			if v.Protocol == p {
				var in []byte
				if v.Events != nil {
					for _, ev := range v.Events {
						in = append(in, ev.Data...)
					}
				} else {
					in = bytes.Join(v.Chunks, nil)
				}
				if len(in) <= maxFuzzInput {
					f.Add(in, []byte{0, 0, 6, 3})
				}
			}
		}
	}
}

type lineRun struct {
	out    *outcome
	tr     *fakeTransport
	rest   []byte
	paused bool
}

// runLine feeds chunks to a LineReceiver (or its model) running harness;
// after each chunk whose control byte has its high bit set it calls
// ResumeProducing. At the end it takes what is left in the buffer.
func runLine(t *testing.T, model bool, harness string, delim []byte, maxLen int, chunks [][]byte, ctl []byte) lineRun {
	r, tr, out, err := build("LineReceiver", harness, delim, maxLen, model)
	if err != nil {
		t.Fatal(err)
	}
	api := r.(lineAPI)
	for i, c := range chunks {
		if closed(tr) {
			break
		}
		r.DataReceived(c)
		if len(ctl) > 0 && ctl[i%len(ctl)]&0x80 != 0 && !closed(tr) {
			api.ResumeProducing()
		}
	}
	return lineRun{out: out, tr: tr, rest: api.ClearLineBuffer(), paused: api.Paused()}
}

func compareRuns(t *testing.T, what string, got, want lineRun) {
	t.Helper()
	if !equalMessages(got.out.messages, want.out.messages) {
		t.Fatalf("%s: messages %s, want %s", what, short(got.out.messages), short(want.out.messages))
	}
	if !equalMessages(got.out.exceeded, want.out.exceeded) {
		t.Fatalf("%s: exceeded %s, want %s", what, short(got.out.exceeded), short(want.out.exceeded))
	}
	if !equalMessages(got.out.cleared, want.out.cleared) {
		t.Fatalf("%s: cleared %s, want %s", what, short(got.out.cleared), short(want.out.cleared))
	}
	if got.tr.Lost() != want.tr.Lost() || got.tr.Pauses() != want.tr.Pauses() || got.tr.Resumes() != want.tr.Resumes() {
		t.Fatalf("%s: transport lost/pauses/resumes %d/%d/%d, want %d/%d/%d", what,
			got.tr.Lost(), got.tr.Pauses(), got.tr.Resumes(), want.tr.Lost(), want.tr.Pauses(), want.tr.Resumes())
	}
	if !bytes.Equal(got.tr.Written(), want.tr.Written()) {
		t.Fatalf("%s: written %q, want %q", what, got.tr.Written(), want.tr.Written())
	}
	if !bytes.Equal(got.rest, want.rest) || got.paused != want.paused {
		t.Fatalf("%s: left %q (paused %v), want %q (paused %v)", what, got.rest, got.paused, want.rest, want.paused)
	}
}

// FuzzLineReceiver checks LineReceiver against the naive model of
// model_test.go under every harness, with random settings and chunkings,
// and checks that plain line collection does not depend on chunking.
func FuzzLineReceiver(f *testing.F) {
	addVectorSeeds(f, "LineReceiver")
	f.Fuzz(func(t *testing.T, data, ctl []byte) {
		if len(data) > maxFuzzInput {
			return
		}
		harness := lineHarnesses[int(ctlByte(ctl, 0))%len(lineHarnesses)]
		delim := fuzzDelimiters[int(ctlByte(ctl, 1))%len(fuzzDelimiters)]
		maxLen := fuzzMaxLength(ctlByte(ctl, 2))
		var splits []byte
		if len(ctl) > 3 {
			splits = ctl[3:]
		}
		chunks := splitBy(data, splits, 23)

		got := runLine(t, false, harness, delim, maxLen, chunks, splits)
		want := runLine(t, true, harness, delim, maxLen, chunks, splits)
		compareRuns(t, harness, got, want)

		if harness == "collect" {
			one := runLine(t, false, harness, delim, maxLen, [][]byte{data}, nil)
			bytewise := runLine(t, false, harness, delim, maxLen, splitFixed(data, 1), nil)
			for _, r := range []lineRun{one, bytewise} {
				if !equalMessages(r.out.messages, got.out.messages) || closed(r.tr) != closed(got.tr) {
					t.Fatalf("chunking changed the result: %s/%v vs %s/%v",
						short(r.out.messages), closed(r.tr), short(got.out.messages), closed(got.tr))
				}
			}
			// Re-encoding the lines gives back the input they came from.
			if !closed(got.tr) {
				r := &LineReceiver{Delimiter: delim}
				tr := &fakeTransport{}
				r.Init(tr, &lineCollect{})
				for _, m := range got.out.messages {
					r.SendLine(m)
				}
				if !bytes.HasPrefix(data, tr.Written()) {
					t.Fatalf("re-encoded lines %q are not a prefix of the input", tr.Written())
				}
			}
		}
	})
}

// FuzzLineOnlyReceiver checks LineOnlyReceiver against its naive model.
func FuzzLineOnlyReceiver(f *testing.F) {
	addVectorSeeds(f, "LineOnlyReceiver")
	f.Fuzz(func(t *testing.T, data, ctl []byte) {
		if len(data) > maxFuzzInput {
			return
		}
		harness := []string{"collect", "collect_exceeded", "close_on_quit"}[int(ctlByte(ctl, 0))%3]
		delim := fuzzDelimiters[int(ctlByte(ctl, 1))%len(fuzzDelimiters)]
		maxLen := fuzzMaxLength(ctlByte(ctl, 2))
		var splits []byte
		if len(ctl) > 3 {
			splits = ctl[3:]
		}
		chunks := splitBy(data, splits, 23)
		var outs [2]*outcome
		var trs [2]*fakeTransport
		for i, model := range []bool{false, true} {
			r, tr, out, err := build("LineOnlyReceiver", harness, delim, maxLen, model)
			if err != nil {
				t.Fatal(err)
			}
			feedChunks(r, tr, chunks)
			outs[i], trs[i] = out, tr
		}
		if !equalMessages(outs[0].messages, outs[1].messages) || !equalMessages(outs[0].exceeded, outs[1].exceeded) {
			t.Fatalf("messages %s exceeded %s, model %s %s", short(outs[0].messages), short(outs[0].exceeded),
				short(outs[1].messages), short(outs[1].exceeded))
		}
		if trs[0].Lost() != trs[1].Lost() {
			t.Fatalf("LoseConnection calls %d, model %d", trs[0].Lost(), trs[1].Lost())
		}
	})
}

// FuzzNetstringReceiver checks that parsing does not depend on chunking,
// agrees with a one-shot model parser, and that re-encoding the strings
// reproduces the input they came from.
func FuzzNetstringReceiver(f *testing.F) {
	addVectorSeeds(f, "NetstringReceiver")
	f.Fuzz(func(t *testing.T, data, ctl []byte) {
		if len(data) > maxFuzzInput {
			return
		}
		maxLen := fuzzMaxLength(ctlByte(ctl, 0))
		if ctlByte(ctl, 0)%7 == 0 {
			maxLen = 1000
		}
		var splits []byte
		if len(ctl) > 1 {
			splits = ctl[1:]
		}
		wantMsgs, wantBad := modelNetstrings(data, maxLen)
		for _, chunks := range [][][]byte{{data}, splitFixed(data, 1), splitBy(data, splits, 29)} {
			r, tr, out, err := build("NetstringReceiver", "collect", nil, maxLen, false)
			if err != nil {
				t.Fatal(err)
			}
			feedChunks(r, tr, chunks)
			if !equalMessages(out.messages, wantMsgs) || closed(tr) != wantBad {
				t.Fatalf("%d chunks: %s closed %v, model %s closed %v",
					len(chunks), short(out.messages), closed(tr), short(wantMsgs), wantBad)
			}
		}
		// Round trip: the encoding of what was parsed is the input's prefix,
		// and parses back to the same strings.
		sender := &NetstringReceiver{}
		str := &fakeTransport{}
		sender.Init(str, &stringCollect{})
		for _, m := range wantMsgs {
			sender.SendString(m)
		}
		enc := str.Written()
		if !bytes.HasPrefix(data, enc) {
			t.Fatalf("re-encoded %q is not a prefix of the input", enc)
		}
		r, tr, out, _ := build("NetstringReceiver", "collect", nil, maxLen, false)
		r.DataReceived(enc)
		if !equalMessages(out.messages, wantMsgs) || closed(tr) {
			t.Fatalf("re-encoded strings parse to %s (closed %v)", short(out.messages), closed(tr))
		}
	})
}

// FuzzIntNStringReceiver does the same for the 8, 16 and 32-bit receivers,
// and checks that a receiver pausing after every string, resumed until it
// stays unpaused after each chunk, delivers the same strings.
func FuzzIntNStringReceiver(f *testing.F) {
	addVectorSeeds(f, "Int8StringReceiver", "Int16StringReceiver", "Int32StringReceiver")
	f.Fuzz(func(t *testing.T, data, ctl []byte) {
		if len(data) > maxFuzzInput {
			return
		}
		maxLen := fuzzMaxLength(ctlByte(ctl, 1))
		if ctlByte(ctl, 1)%5 == 0 {
			maxLen = 300
		}
		var splits []byte
		if len(ctl) > 2 {
			splits = ctl[2:]
		}
		switch ctlByte(ctl, 0) % 3 {
		case 0:
			fuzzIntN(t, &Int8StringReceiver{}, "Int8StringReceiver", data, maxLen, splits)
		case 1:
			fuzzIntN(t, &Int16StringReceiver{}, "Int16StringReceiver", data, maxLen, splits)
		default:
			fuzzIntN(t, &Int32StringReceiver{}, "Int32StringReceiver", data, maxLen, splits)
		}
	})
}

func fuzzIntN[P uint8 | uint16 | uint32](t *testing.T, sender *IntNStringReceiver[P], protocol string, data []byte, maxLen int, splits []byte) {
	wantMsgs, wantOver := modelIntN(data, sender.prefixLen(), maxLen)
	for _, chunks := range [][][]byte{{data}, splitFixed(data, 1), splitBy(data, splits, 29)} {
		r, tr, out, err := build(protocol, "collect", nil, maxLen, false)
		if err != nil {
			t.Fatal(err)
		}
		feedChunks(r, tr, chunks)
		if !equalMessages(out.messages, wantMsgs) || closed(tr) != wantOver {
			t.Fatalf("%d chunks: %s closed %v, model %s closed %v",
				len(chunks), short(out.messages), closed(tr), short(wantMsgs), wantOver)
		}

		r, tr, out, _ = build(protocol, "pause_each", nil, maxLen, false)
		p := r.(*IntNStringReceiver[P])
		for _, c := range chunks {
			if closed(tr) {
				break
			}
			p.DataReceived(c)
			for p.Paused() && !closed(tr) {
				p.ResumeProducing()
			}
		}
		if !equalMessages(out.messages, wantMsgs) || closed(tr) != wantOver {
			t.Fatalf("pausing, %d chunks: %s closed %v, model %s closed %v",
				len(chunks), short(out.messages), closed(tr), short(wantMsgs), wantOver)
		}
	}
	str := &fakeTransport{}
	sender.Init(str, &stringCollect{})
	for _, m := range wantMsgs {
		if err := sender.SendString(m); err != nil {
			t.Fatal(err)
		}
	}
	enc := str.Written()
	if !bytes.HasPrefix(data, enc) {
		t.Fatalf("re-encoded %q is not a prefix of the input", enc)
	}
	r, tr, out, _ := build(protocol, "collect", nil, maxLen, false)
	r.DataReceived(enc)
	if !equalMessages(out.messages, wantMsgs) || closed(tr) {
		t.Fatalf("re-encoded strings parse to %s (closed %v)", short(out.messages), closed(tr))
	}
}
