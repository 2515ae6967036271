package basic

import (
	"bytes"
	"fmt"
	"testing"
)

// benchStream builds about 64 KiB of frames and cuts it into chunks of
// chunkSize bytes (0: one chunk per 64 KiB read, as the framework reads).
func benchStream(frame []byte, chunkSize int) (chunks [][]byte, frames int) {
	frames = max((64<<10)/len(frame), 1)
	stream := bytes.Repeat(frame, frames)
	if chunkSize == 0 {
		chunkSize = len(stream)
	}
	return splitFixed(stream, chunkSize), frames
}

// runFrames feeds the chunks b.N times and reports the cost per message
// and messages per second, naming the message unit (line, string).
func runFrames(b *testing.B, r receiver, chunks [][]byte, frames int, unit string) {
	b.Helper()
	total := 0
	for _, c := range chunks {
		total += len(c)
	}
	b.SetBytes(int64(total))
	b.ReportAllocs()
	for b.Loop() {
		for _, c := range chunks {
			r.DataReceived(c)
		}
	}
	n := float64(b.N) * float64(frames)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/"+unit)
	b.ReportMetric(n/b.Elapsed().Seconds(), unit+"s/s")
}

// BenchmarkLineReceiver measures line delivery; "aligned" chunks end on a
// line boundary (nothing is copied), the others split lines across chunks
// (the partial line is copied).
func BenchmarkLineReceiver(b *testing.B) {
	for _, lineLen := range []int{16, 64, 1024} {
		line := append(bytes.Repeat([]byte("x"), lineLen-2), "\r\n"...)
		for _, chunk := range []struct {
			name string
			size int
		}{{"aligned", 0}, {"chunk1460", 1460}, {"chunk4093", 4093}} {
			b.Run(fmt.Sprintf("line%d/%s", lineLen, chunk.name), func(b *testing.B) {
				chunks, frames := benchStream(line, chunk.size)
				r := &LineReceiver{}
				r.Init(&nopTransport{}, &countLines{})
				runFrames(b, r, chunks, frames, "line")
			})
		}
	}
}

func BenchmarkLineOnlyReceiver(b *testing.B) {
	line := append(bytes.Repeat([]byte("x"), 62), "\r\n"...)
	chunks, frames := benchStream(line, 4093)
	r := &LineOnlyReceiver{}
	r.Init(&nopTransport{}, &countLines{})
	runFrames(b, r, chunks, frames, "line")
}

func BenchmarkNetstringReceiver(b *testing.B) {
	for _, size := range []int{16, 1024} {
		frame := fmt.Appendf(nil, "%d:%s,", size, bytes.Repeat([]byte("x"), size))
		b.Run(fmt.Sprintf("payload%d/chunk4093", size), func(b *testing.B) {
			chunks, frames := benchStream(frame, 4093)
			r := &NetstringReceiver{}
			r.Init(&nopTransport{}, &countLines{})
			runFrames(b, r, chunks, frames, "string")
		})
	}
}

func BenchmarkIntNStringReceiver(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 60)
	b.Run("Int8/payload60/chunk4093", func(b *testing.B) {
		chunks, frames := benchStream(append([]byte{60}, payload...), 4093)
		r := &Int8StringReceiver{}
		r.Init(&nopTransport{}, &countLines{})
		runFrames(b, r, chunks, frames, "string")
	})
	b.Run("Int16/payload60/chunk4093", func(b *testing.B) {
		chunks, frames := benchStream(append([]byte{0, 60}, payload...), 4093)
		r := &Int16StringReceiver{}
		r.Init(&nopTransport{}, &countLines{})
		runFrames(b, r, chunks, frames, "string")
	})
	b.Run("Int32/payload60/chunk4093", func(b *testing.B) {
		chunks, frames := benchStream(append([]byte{0, 0, 0, 60}, payload...), 4093)
		r := &Int32StringReceiver{}
		r.Init(&nopTransport{}, &countLines{})
		runFrames(b, r, chunks, frames, "string")
	})
}

func BenchmarkSend(b *testing.B) {
	msg := bytes.Repeat([]byte("x"), 64)
	tr := &nopTransport{}
	b.Run("SendLine", func(b *testing.B) {
		r := &LineReceiver{}
		r.Init(tr, &countLines{})
		b.ReportAllocs()
		for b.Loop() {
			r.SendLine(msg)
		}
	})
	b.Run("NetstringSendString", func(b *testing.B) {
		r := &NetstringReceiver{}
		r.Init(tr, &countLines{})
		b.ReportAllocs()
		for b.Loop() {
			r.SendString(msg)
		}
	})
	b.Run("Int32SendString", func(b *testing.B) {
		r := &Int32StringReceiver{}
		r.Init(tr, &countLines{})
		b.ReportAllocs()
		for b.Loop() {
			_ = r.SendString(msg)
		}
	})
}
