package qotd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/frameworktest"
	"github.com/superd-dev/superd/internal/engine"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestConfig(t *testing.T) {
	long513 := strings.Repeat("a", 513)
	multi512 := strings.Repeat("é", 256) + strings.Repeat("😀", 256) // 512 code points, 1536 bytes
	multi513 := multi512 + "ü"
	tests := []struct {
		name    string
		body    string
		want    []string // the quotes, in turn
		wantErr []string // substrings of the error text
	}{
		{name: "default", body: "", want: []string{DefaultQuote}},
		{name: "quote", body: `  quote = "Carpe diem"`, want: []string{"Carpe diem"}},
		{name: "quote with escapes", body: `  quote = "tab\there \"quoted\""`, want: []string{"tab\there \"quoted\""}},
		{name: "quotes", body: `  quotes = ["one", "two", "three"]`, want: []string{"one", "two", "three"}},
		{name: "quotes one", body: `  quotes = ["solo"]`, want: []string{"solo"}},
		{name: "both", body: "  quote  = \"a\"\n  quotes = [\"b\"]",
			wantErr: []string{"superd.hcl:3,", `Invalid value for "quotes"`, "not both"}},
		{name: "empty list", body: `  quotes = []`,
			wantErr: []string{"superd.hcl:2,", `Invalid value for "quotes"`, "empty"}},
		{name: "quote 512 ascii", body: fmt.Sprintf("  quote = %q", strings.Repeat("a", 512)),
			want: []string{strings.Repeat("a", 512)}},
		{name: "quote 513 ascii", body: fmt.Sprintf("  quote = %q", long513),
			wantErr: []string{"superd.hcl:2,", `Invalid value for "quote"`, "513", "512"}},
		{name: "quote 512 multibyte", body: fmt.Sprintf("  quote = %q", multi512), want: []string{multi512}},
		{name: "quote 513 multibyte", body: fmt.Sprintf("  quote = %q", multi513),
			wantErr: []string{`Invalid value for "quote"`, "513"}},
		{name: "quotes one too long", body: fmt.Sprintf("  quotes = [\"ok\", %q]", long513),
			wantErr: []string{`Invalid value for "quotes"`, "quote 2", "513"}},
		{name: "quotes 512 multibyte", body: fmt.Sprintf("  quotes = [%q, \"x\"]", multi512), want: []string{multi512, "x"}},
		{name: "quote wrong type", body: `  quote = ["a"]`, wantErr: []string{"superd.hcl:2,", "quote"}},
		{name: "quotes wrong type", body: `  quotes = "a"`, wantErr: []string{"superd.hcl:2,", "quotes"}},
		{name: "unknown attribute", body: `  qoute = "x"`, wantErr: []string{"superd.hcl:2,", `Did you mean "quote"?`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc, err := servicetest.Block{Factory: "qotd", Name: "q", Body: tt.body}.Service(t)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("no error; want one containing %q", tt.wantErr)
				}
				var de *config.DiagnosticsError
				if !errors.As(err, &de) {
					t.Fatalf("error %T is not a *config.DiagnosticsError: %v", err, err)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error text lacks %q:\n%s", s, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error:\n%s", err)
			}
			fac, err := servicetest.Build(svc, nil)
			if err != nil {
				t.Fatal(err)
			}
			f := fac.(*Factory)
			var got []string
			for _, l := range f.lines {
				got = append(got, strings.TrimSuffix(l, "\r\n"))
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("quotes %q, want %q", got, tt.want)
			}
		})
	}
}

func newFactory(t *testing.T, body string) *Factory {
	t.Helper()
	svc, err := servicetest.Block{Factory: "qotd", Name: "q", Body: body}.Service(t)
	if err != nil {
		t.Fatal(err)
	}
	fac, err := servicetest.Build(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fac.(*Factory)
}

func TestProtocolRoundRobin(t *testing.T) {
	f := newFactory(t, `  quotes = ["one", "two", "three"]`)
	for i, want := range []string{"one", "two", "three", "one", "two", "three", "one"} {
		p := f.BuildProtocol(nil)
		tr := &frameworktest.Transport{}
		p.ConnectionMade(tr)
		if got := string(tr.Written()); got != want+"\r\n" {
			t.Fatalf("connection %d: sent %q, want %q", i, got, want+"\r\n")
		}
		if tr.WriteCount() != 1 || tr.Lost() == 0 || tr.Aborted() {
			t.Fatalf("connection %d: %d writes, lost %v, aborted %v; want one write, then LoseConnection", i, tr.WriteCount(), tr.Lost() > 0, tr.Aborted())
		}
		p.DataReceived([]byte("ignored"))
		p.ConnectionLost(nil)
	}
}

func TestProtocolRoundRobinConcurrent(t *testing.T) {
	f := newFactory(t, `  quotes = ["a", "b", "c", "d"]`)
	const n = 400
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &frameworktest.Transport{}
			f.BuildProtocol(nil).ConnectionMade(tr)
			mu.Lock()
			counts[string(tr.Written())]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, q := range []string{"a", "b", "c", "d"} {
		if counts[q+"\r\n"] != n/4 {
			t.Errorf("quote %q handed out %d times, want %d (%v)", q, counts[q+"\r\n"], n/4, counts)
		}
	}
}

// TestOverLoopback serves the protocol over real loopback TCP connections
// with the framework's connection machinery: the client reads the quote and
// CRLF, then EOF.
func TestOverLoopback(t *testing.T) {
	multi := strings.Repeat("日本", 256)
	f := newFactory(t, fmt.Sprintf("  quotes = [\"first\", %q]", multi))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				engine.NewConn(c, nil).Serve(f.BuildProtocol(c.RemoteAddr()))
			}()
		}
	}()
	for i, want := range []string{"first", multi, "first"} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if string(got) != want+"\r\n" {
			t.Fatalf("connection %d: got %q, want %q", i, got, want+"\r\n")
		}
	}
}

func TestMain(m *testing.M) { servicetest.VerifyTestMain(m) }

// TestDatagrams: any datagram, empty included, gets the quote and CRLF;
// with quotes, in turn, sharing the turn with connections.
func TestDatagrams(t *testing.T) {
	servicetest.ServesBoth(t, "qotd")
	f := newFactory(t, "")
	var rec servicetest.DatagramRecorder
	p := servicetest.DatagramProtocol(t, f, &rec)
	for _, req := range []string{"", "quote please", strings.Repeat("?", 1000)} {
		p.DatagramReceived([]byte(req), servicetest.PeerUDP)
	}
	sent := rec.Sent()
	if len(sent) != 3 {
		t.Fatalf("%d replies to 3 datagrams", len(sent))
	}
	for i, d := range sent {
		if string(d.Data) != DefaultQuote+"\r\n" || d.To != servicetest.PeerUDP {
			t.Fatalf("reply %d: %q to %v", i, d.Data, d.To)
		}
	}

	f = newFactory(t, `  quotes = ["one", "two", "three"]`)
	p = servicetest.DatagramProtocol(t, f, &rec)
	q := servicetest.DatagramProtocol(t, f, &rec) // a second udp endpoint of the service
	var got []string
	for i := range 7 {
		if i == 3 {
			tr := &frameworktest.Transport{}
			f.BuildProtocol(nil).ConnectionMade(tr)
			got = append(got, "tcp:"+string(tr.Written()))
		}
		[]framework.DatagramProtocol{p, q}[i%2].DatagramReceived(nil, servicetest.PeerUDP)
		sent := rec.Sent()
		if len(sent) != 1 {
			t.Fatalf("datagram %d: %d replies", i, len(sent))
		}
		got = append(got, string(sent[0].Data))
	}
	want := []string{"one\r\n", "two\r\n", "three\r\n", "tcp:one\r\n", "two\r\n", "three\r\n", "one\r\n", "two\r\n"}
	if !slices.Equal(got, want) {
		t.Fatalf("quotes %q, want %q", got, want)
	}

	var nop servicetest.NopDatagramTransport
	p = servicetest.DatagramProtocol(t, f, &nop)
	if n := testing.AllocsPerRun(1000, func() { p.DatagramReceived(nil, servicetest.PeerUDP) }); n != 0 {
		t.Errorf("%v allocations per datagram, want 0", n)
	}
}

// TestDatagramsOverUDP: a real UDP client gets the quote.
func TestDatagramsOverUDP(t *testing.T) {
	multi := strings.Repeat("日本", 256) // 512 characters, 1536 bytes
	c, err := net.Dial("udp", servicetest.ServeUDP(t, newFactory(t, fmt.Sprintf("  quote = %q", multi))))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	for range 3 {
		if _, err := c.Write(nil); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != multi+"\r\n" {
			t.Fatalf("got %q", buf[:n])
		}
	}
}
