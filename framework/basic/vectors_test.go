package basic

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

// The vectors are a copy of shared/reference/twisted_vectors.json, checked
// against real Twisted; their "schema" key documents every field.
const vectorsFile = "testdata/twisted_vectors.json"

type vectorFile struct {
	Schema struct {
		Harnesses map[string]string `json:"harnesses"`
	} `json:"schema"`
	Decode []decodeVector `json:"decode_vectors"`
	Encode []encodeVector `json:"encode_vectors"`
}

type vectorSettings struct {
	MaxLength int     `json:"MAX_LENGTH"`
	Delimiter *string `json:"delimiter"`
}

type decodeVector struct {
	ID       string          `json:"id"`
	Protocol string          `json:"protocol"`
	Settings vectorSettings  `json:"settings"`
	Harness  string          `json:"harness"`
	Chunks   [][]byte        `json:"chunks"`
	Rechunk  json.RawMessage `json:"rechunk"`
	Events   []vectorEvent   `json:"events"`
	Expect   vectorExpect    `json:"expect"`
	Desc     string          `json:"desc"`
}

type vectorEvent struct {
	Op       string   `json:"op"`
	Data     []byte   `json:"data"`
	Messages [][]byte `json:"messages"`
	Paused   *bool    `json:"paused"`
	Closed   *bool    `json:"closed"`
}

type vectorExpect struct {
	Messages        [][]byte `json:"messages"`
	Closed          bool     `json:"closed"`
	Exceeded        [][]byte `json:"exceeded"`
	ExceededLengths []uint64 `json:"exceeded_lengths"`
	Cleared         [][]byte `json:"cleared"`
}

type encodeVector struct {
	ID          string         `json:"id"`
	Protocol    string         `json:"protocol"`
	Method      string         `json:"method"`
	Settings    vectorSettings `json:"settings"`
	Payload     []byte         `json:"payload"`
	PayloadFill *struct {
		Byte  byte `json:"byte"`
		Count int  `json:"count"`
	} `json:"payload_fill"`
	Expect struct {
		Prefix []byte `json:"prefix"`
		Suffix []byte `json:"suffix"`
		Error  string `json:"error"`
	} `json:"expect"`
}

func loadVectors(t testing.TB) *vectorFile {
	t.Helper()
	raw, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(raw, &vf); err != nil {
		t.Fatal(err)
	}
	return &vf
}

func (v *decodeVector) delimiter() []byte {
	if v.Settings.Delimiter == nil {
		return nil
	}
	return []byte(*v.Settings.Delimiter)
}

// chunkings returns the chunkings the vector's expectation holds for: the
// given one plus those its "rechunk" field claims.
func (v *decodeVector) chunkings(t *testing.T) map[string][][]byte {
	out := map[string][][]byte{"given": v.Chunks}
	all := bytes.Join(v.Chunks, nil)
	var sizes []int
	switch r := strings.TrimSpace(string(v.Rechunk)); {
	case r == "" || r == "null":
		return out
	case r == `"any"`:
		// What verify_with_twisted.py checks: every fixed size when short,
		// sizes 1..64 plus random ones when long, and 40 random splits.
		limit := len(all)
		if limit > 600 {
			limit = 64
		}
		for n := 1; n <= max(limit, 1); n++ {
			sizes = append(sizes, n)
		}
		rng := rand.New(rand.NewPCG(uint64(len(all)), 1))
		if len(all) > 600 {
			for range 20 {
				sizes = append(sizes, 65+rng.IntN(len(all)-64))
			}
		}
		for i := range 40 {
			var chunks [][]byte
			for rest := all; len(rest) > 0; {
				n := min(1+rng.IntN(max(len(all)/4, 2)), len(rest))
				chunks = append(chunks, rest[:n])
				rest = rest[n:]
			}
			if chunks == nil {
				chunks = [][]byte{{}}
			}
			out[fmt.Sprintf("random%d", i)] = chunks
		}
	default:
		if err := json.Unmarshal(v.Rechunk, &sizes); err != nil {
			t.Fatalf("bad rechunk %s: %v", r, err)
		}
	}
	for _, n := range sizes {
		out[fmt.Sprintf("size%d", n)] = splitFixed(all, n)
	}
	return out
}

func TestDecodeVectors(t *testing.T) {
	vf := loadVectors(t)
	if len(vf.Decode) == 0 {
		t.Fatal("no decode vectors")
	}
	for _, v := range vf.Decode {
		if _, ok := vf.Schema.Harnesses[v.Harness]; !ok {
			t.Errorf("%s: harness %q not in the schema", v.ID, v.Harness)
		}
		t.Run(v.ID, func(t *testing.T) {
			if v.Events != nil {
				runEvents(t, &v)
				return
			}
			chunkings := v.chunkings(t)
			names := slices.Sorted(func(yield func(string) bool) {
				for k := range chunkings {
					if !yield(k) {
						return
					}
				}
			})
			for _, name := range names {
				r, tr, out, err := build(v.Protocol, v.Harness, v.delimiter(), v.Settings.MaxLength, false)
				if err != nil {
					t.Fatal(err)
				}
				feedChunks(r, tr, chunkings[name])
				checkOutcome(t, name, &v.Expect, out, tr)
			}
		})
	}
}

// runEvents plays a flow-control vector.
func runEvents(t *testing.T, v *decodeVector) {
	r, tr, out, err := build(v.Protocol, v.Harness, v.delimiter(), v.Settings.MaxLength, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range v.Events {
		switch ev.Op {
		case "data":
			if !closed(tr) {
				r.DataReceived(ev.Data)
			}
		case "resume":
			r.(interface{ ResumeProducing() }).ResumeProducing()
		case "check":
			if !equalMessages(out.messages, ev.Messages) {
				t.Fatalf("event %d: messages %q, want %q", i, out.messages, ev.Messages)
			}
			if ev.Paused != nil {
				if got := r.(interface{ Paused() bool }).Paused(); got != *ev.Paused {
					t.Fatalf("event %d: paused %v, want %v", i, got, *ev.Paused)
				}
				// The receiver pauses and resumes its transport with it.
				if tr.Paused() != *ev.Paused {
					t.Fatalf("event %d: transport paused %v, want %v", i, tr.Paused(), *ev.Paused)
				}
			}
			if ev.Closed != nil && closed(tr) != *ev.Closed {
				t.Fatalf("event %d: closed %v, want %v", i, closed(tr), *ev.Closed)
			}
		default:
			t.Fatalf("unknown event op %q", ev.Op)
		}
	}
	checkOutcome(t, "events", &v.Expect, out, tr)
}

func checkOutcome(t *testing.T, chunking string, want *vectorExpect, out *outcome, tr *fakeTransport) {
	t.Helper()
	if !equalMessages(out.messages, want.Messages) {
		t.Errorf("%s: messages %s, want %s", chunking, short(out.messages), short(want.Messages))
	}
	if closed(tr) != want.Closed {
		t.Errorf("%s: closed %v, want %v", chunking, closed(tr), want.Closed)
	}
	if !equalMessages(out.exceeded, want.Exceeded) {
		t.Errorf("%s: exceeded %s, want %s", chunking, short(out.exceeded), short(want.Exceeded))
	}
	if !slices.Equal(out.exceededLengths, want.ExceededLengths) {
		t.Errorf("%s: exceeded lengths %v, want %v", chunking, out.exceededLengths, want.ExceededLengths)
	}
	if !equalMessages(out.cleared, want.Cleared) {
		t.Errorf("%s: cleared %s, want %s", chunking, short(out.cleared), short(want.Cleared))
	}
}

func equalMessages(a, b [][]byte) bool {
	return slices.EqualFunc(a, b, bytes.Equal)
}

// short renders messages for failure output, truncating long ones.
func short(msgs [][]byte) string {
	var sb strings.Builder
	sb.WriteString("[")
	for i, m := range msgs {
		if i > 0 {
			sb.WriteString(" ")
		}
		if len(m) > 40 {
			fmt.Fprintf(&sb, "%q...(%d bytes)", m[:40], len(m))
		} else {
			fmt.Fprintf(&sb, "%q", m)
		}
	}
	sb.WriteString("]")
	return sb.String()
}

func TestEncodeVectors(t *testing.T) {
	vf := loadVectors(t)
	if len(vf.Encode) == 0 {
		t.Fatal("no encode vectors")
	}
	for _, v := range vf.Encode {
		t.Run(v.ID, func(t *testing.T) {
			payload := v.Payload
			if v.PayloadFill != nil {
				payload = bytes.Repeat([]byte{v.PayloadFill.Byte}, v.PayloadFill.Count)
			}
			var delim []byte
			if v.Settings.Delimiter != nil {
				delim = []byte(*v.Settings.Delimiter)
			}
			tr := &fakeTransport{}
			var err error
			switch v.Protocol + "." + v.Method {
			case "LineReceiver.sendLine":
				r := &LineReceiver{Delimiter: delim}
				r.Init(tr, &lineCollect{})
				r.SendLine(payload)
			case "LineOnlyReceiver.sendLine":
				r := &LineOnlyReceiver{Delimiter: delim}
				r.Init(tr, &lineCollect{})
				r.SendLine(payload)
			case "NetstringReceiver.sendString":
				r := &NetstringReceiver{}
				r.Init(tr, &stringCollect{})
				r.SendString(payload)
			case "Int8StringReceiver.sendString":
				r := &Int8StringReceiver{}
				r.Init(tr, &stringCollect{})
				err = r.SendString(payload)
			case "Int16StringReceiver.sendString":
				r := &Int16StringReceiver{}
				r.Init(tr, &stringCollect{})
				err = r.SendString(payload)
			case "Int32StringReceiver.sendString":
				r := &Int32StringReceiver{}
				r.Init(tr, &stringCollect{})
				err = r.SendString(payload)
			default:
				t.Fatalf("unknown protocol/method %s.%s", v.Protocol, v.Method)
			}
			if v.Expect.Error != "" {
				if v.Expect.Error != "StringTooLongError" {
					t.Fatalf("unknown expected error %q", v.Expect.Error)
				}
				if !errors.Is(err, ErrStringTooLong) {
					t.Errorf("error %v, want ErrStringTooLong", err)
				}
				if len(tr.Writes()) != 0 {
					t.Errorf("%d writes after an error, want none", len(tr.Writes()))
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			want := slices.Concat(v.Expect.Prefix, payload, v.Expect.Suffix)
			if len(tr.Writes()) != 1 {
				t.Fatalf("%d writes, want exactly 1", len(tr.Writes()))
			}
			if !bytes.Equal(tr.Writes()[0], want) {
				t.Errorf("wrote %s, want %s", short([][]byte{tr.Writes()[0]}), short([][]byte{want}))
			}
		})
	}
}

// TestDecodeVectorsMatchModels runs the vectors through the naive models
// too, so the fuzz targets compare against models that are themselves
// checked against Twisted.
func TestDecodeVectorsMatchModels(t *testing.T) {
	vf := loadVectors(t)
	prefixLen := map[string]int{"Int8StringReceiver": 1, "Int16StringReceiver": 2, "Int32StringReceiver": 4}
	for _, v := range vf.Decode {
		if v.Protocol == "NetstringReceiver" || prefixLen[v.Protocol] > 0 {
			if v.Harness != "collect" {
				continue
			}
			t.Run(v.ID, func(t *testing.T) {
				in := bytes.Join(v.Chunks, nil)
				var msgs [][]byte
				var bad bool
				if n := prefixLen[v.Protocol]; n > 0 {
					msgs, bad = modelIntN(in, n, v.Settings.MaxLength)
				} else {
					msgs, bad = modelNetstrings(in, v.Settings.MaxLength)
				}
				if !equalMessages(msgs, v.Expect.Messages) || bad != v.Expect.Closed {
					t.Errorf("model: %s closed %v, want %s closed %v", short(msgs), bad, short(v.Expect.Messages), v.Expect.Closed)
				}
			})
			continue
		}
		t.Run(v.ID, func(t *testing.T) {
			r, tr, out, err := build(v.Protocol, v.Harness, v.delimiter(), v.Settings.MaxLength, true)
			if err != nil {
				t.Fatal(err)
			}
			if v.Events != nil {
				for _, ev := range v.Events {
					switch ev.Op {
					case "data":
						if !closed(tr) {
							r.DataReceived(ev.Data)
						}
					case "resume":
						r.(interface{ ResumeProducing() }).ResumeProducing()
					}
				}
			} else {
				feedChunks(r, tr, v.Chunks)
			}
			checkOutcome(t, "model", &v.Expect, out, tr)
		})
	}
}
