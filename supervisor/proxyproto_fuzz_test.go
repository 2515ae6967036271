package supervisor

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzReadHeader: no input makes the header reader panic, read more than
// a header's worth, or return a PROXY header without a source.
func FuzzReadHeader(f *testing.F) {
	for _, seed := range []string{
		"PROXY TCP4 192.0.2.10 192.0.2.1 40000 7\r\nhello",
		"PROXY TCP6 2001:db8::10 2001:db8::1 40000 7\r\n",
		"PROXY UNKNOWN\r\n",
		"PROXY TCP4 1.2.3.4",
		"GET / HTTP/1.0\r\n\r\n",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x0a\xc0\x00\x02\x01\x9c\x40\x00\x07",
		"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 512)
		h, err := readHeader(br)
		if err != nil {
			return
		}
		consumed := len(data) - br.Buffered()
		if consumed > 16+65535 {
			t.Fatalf("consumed %d bytes for a header", consumed)
		}
		if h.Command.IsProxy() && h.TransportProtocol.IsStream() && h.SourceAddr == nil {
			t.Fatalf("a PROXY header without a source: %+v", h)
		}
	})
}
