// Package qotd implements the Quote of the Day service of RFC 865: on
// connect it sends a quote and CRLF, then closes; on udp, any datagram is
// answered with a quote and CRLF.
//
// Name: qotd. Serves streams (tcp, tls, unix) and datagrams (udp).
// Attributes:
//
//	quote  = "..."          one quote (default "An apple a day keeps the doctor away")
//	quotes = ["...", ...]   several: each connection (or datagram) gets the next one, round and round
//
// Setting both is an error, and so is a quote longer than 512 characters
// (the RFC's limit, counted in Unicode code points).
//
//	service "qotd" "apple" {
//	  quote = "An apple a day keeps the doctor away"
//	  endpoint "tcp" { address = "127.0.0.1:8007" }
//	}
package qotd

import (
	"net"
	"sync/atomic"
	"unicode/utf8"

	"github.com/superd-dev/superd/framework"
)

// DefaultQuote is the quote of a qotd service that sets neither attribute.
const DefaultQuote = "An apple a day keeps the doctor away"

// MaxQuoteLength is RFC 865's limit, in characters.
const MaxQuoteLength = 512

func init() {
	framework.Register(framework.Spec{
		Name:           "qotd",
		Description:    "RFC 865 quote of the day: sends a quote on connect, then closes",
		Serves:         framework.Streams | framework.Datagrams,
		DatagramGuards: true, // a small service: the classic reflection target
		Config:         Config{Quote: DefaultQuote},
		New:            framework.Typed(New),
	})
}

// Config is the configuration of a qotd service.
type Config struct {
	Quote  string   `hcl:"quote,optional" doc:"the quote sent to every connection"`
	Quotes []string `hcl:"quotes,optional" doc:"quotes sent in turn, one per connection or datagram (instead of quote)"`
}

// Validate allows quote or quotes, and quotes of at most MaxQuoteLength
// characters.
func (c *Config) Validate(set framework.IsSet) error {
	quotes, field := []string{c.Quote}, any(&c.Quote)
	if set(&c.Quotes) {
		if set(&c.Quote) {
			return framework.Errorf(&c.Quotes, "set either quote or quotes, not both")
		}
		if len(c.Quotes) == 0 {
			return framework.Errorf(&c.Quotes, "the list is empty; give at least one quote")
		}
		quotes, field = c.Quotes, &c.Quotes
	}
	for i, q := range quotes {
		if n := utf8.RuneCountInString(q); n > MaxQuoteLength {
			return framework.Errorf(field, "quote %d is %d characters long; RFC 865 allows at most %d", i+1, n, MaxQuoteLength)
		}
	}
	return nil
}

// New builds a qotd factory from its configuration.
func New(_ *framework.Env, cfg *Config) (framework.Factory, error) {
	quotes := cfg.Quotes
	if quotes == nil {
		quotes = []string{cfg.Quote}
	}
	f := &Factory{}
	for _, q := range quotes {
		f.lines = append(f.lines, q+"\r\n")
		f.datagrams = append(f.datagrams, []byte(q+"\r\n"))
	}
	return f, nil
}

// Factory hands out quotes in turn, to connections and datagrams alike:
// one turn for the whole service, whatever its endpoints.
type Factory struct {
	lines     []string // each quote with its CRLF
	datagrams [][]byte // the same as bytes, so a reply needs no conversion
	next      atomic.Uint64
}

// turn returns the index of the next quote.
func (f *Factory) turn() uint64 { return (f.next.Add(1) - 1) % uint64(len(f.lines)) }

// BuildProtocol implements framework.Factory.
func (f *Factory) BuildProtocol(net.Addr) framework.Protocol {
	return &QOTD{line: f.lines[f.turn()]}
}

// BuildDatagramProtocol implements framework.DatagramFactory.
func (f *Factory) BuildDatagramProtocol(t framework.DatagramTransport) framework.DatagramProtocol {
	return &DatagramQOTD{factory: f, transport: t}
}

// QOTD is the protocol of one connection.
type QOTD struct {
	framework.BaseProtocol
	line string
}

// ConnectionMade sends the quote and closes.
func (q *QOTD) ConnectionMade(t framework.Transport) {
	t.WriteString(q.line)
	t.LoseConnection()
}

// DatagramQOTD answers every datagram of one udp endpoint with the next
// quote.
type DatagramQOTD struct {
	factory   *Factory
	transport framework.DatagramTransport
}

// DatagramReceived sends a quote to from; the request's content is
// ignored, as the RFC says. The quote is shared by every endpoint: WriteTo
// only reads it.
func (d *DatagramQOTD) DatagramReceived(_ []byte, from net.Addr) {
	d.transport.WriteTo(d.factory.datagrams[d.factory.turn()], from)
}

// Interface guards.
var (
	_ framework.Factory          = (*Factory)(nil)
	_ framework.DatagramFactory  = (*Factory)(nil)
	_ framework.Protocol         = (*QOTD)(nil)
	_ framework.DatagramProtocol = (*DatagramQOTD)(nil)
	_ framework.Validator        = (*Config)(nil)
)
