// Package qotd implements the Quote of the Day service of RFC 865: on
// connect it sends a quote and CRLF, then closes.
//
// Name: qotd. Attributes:
//
//	quote  = "..."          one quote (default "An apple a day keeps the doctor away")
//	quotes = ["...", ...]   several: each connection gets the next one, round and round
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

	"github.com/zclconf/go-cty/cty"

	"github.com/superd-dev/superd/framework"
)

// DefaultQuote is the quote of a qotd service that sets neither attribute.
const DefaultQuote = "An apple a day keeps the doctor away"

// MaxQuoteLength is RFC 865's limit, in characters.
const MaxQuoteLength = 512

func init() {
	framework.Register(framework.Spec{
		Name:        "qotd",
		Description: "RFC 865 quote of the day: sends a quote on connect, then closes",
		Attributes: []framework.Attribute{
			{Name: "quote", Type: cty.String, Default: cty.StringVal(DefaultQuote),
				Description: "the quote sent to every connection"},
			{Name: "quotes", Type: cty.List(cty.String),
				Description: "quotes sent in turn, one per connection (instead of quote)"},
		},
		New: New,
	})
}

// New builds a qotd factory from its configuration.
func New(cfg *framework.Config) (framework.Factory, error) {
	quotes := []string{cfg.String("quote")}
	if cfg.IsSet("quotes") {
		if cfg.IsSet("quote") {
			return nil, cfg.Errorf("quotes", "set either quote or quotes, not both")
		}
		quotes = cfg.Strings("quotes")
		if len(quotes) == 0 {
			return nil, cfg.Errorf("quotes", "the list is empty; give at least one quote")
		}
	}
	attr := "quote"
	if cfg.IsSet("quotes") {
		attr = "quotes"
	}
	for i, q := range quotes {
		if n := utf8.RuneCountInString(q); n > MaxQuoteLength {
			return nil, cfg.Errorf(attr, "quote %d is %d characters long; RFC 865 allows at most %d", i+1, n, MaxQuoteLength)
		}
	}
	f := &Factory{}
	for _, q := range quotes {
		f.lines = append(f.lines, q+"\r\n")
	}
	return f, nil
}

// Factory hands out quotes in turn.
type Factory struct {
	lines []string // each quote with its CRLF
	next  atomic.Uint64
}

// BuildProtocol implements framework.Factory.
func (f *Factory) BuildProtocol(net.Addr) framework.Protocol {
	i := (f.next.Add(1) - 1) % uint64(len(f.lines))
	return &QOTD{line: f.lines[i]}
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
