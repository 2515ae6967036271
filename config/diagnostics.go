package config

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"

	"github.com/superd-dev/superd/internal/textwidth"
)

// DiagnosticsError is the error of Load and Parse when the configuration is
// invalid. It holds every diagnostic of the run (errors, and warnings if
// any) and the parsed sources, so each diagnostic can be shown with its
// source line.
type DiagnosticsError struct {
	Diags hcl.Diagnostics
	// Files is the parser's file cache, by file name (as used in the
	// diagnostics' ranges). It may be nil, e.g. when the file was not read.
	Files map[string]*hcl.File
}

// Diagnostics returns every diagnostic, sorted by position.
func (e *DiagnosticsError) Diagnostics() hcl.Diagnostics { return e.Diags }

// Error returns the text Write prints, without its final newline.
func (e *DiagnosticsError) Error() string {
	var b strings.Builder
	_ = e.Write(&b)
	return strings.TrimSuffix(b.String(), "\n")
}

// Write prints every diagnostic as
//
//	FILE:LINE,COL-COL: Summary; Detail
//	   12 | the source line
//	      |     ^^^^
//
// (the range in hcl.Range's String notation; "Warning: " precedes the
// summary of a warning). The source and caret lines are left out when the
// source is not known.
func (e *DiagnosticsError) Write(w io.Writer) error {
	return writeDiagnostics(w, e.Diags, e.Files)
}

func writeDiagnostics(w io.Writer, diags hcl.Diagnostics, files map[string]*hcl.File) error {
	var b bytes.Buffer
	for _, d := range diags {
		writeDiagnostic(&b, d, files)
	}
	_, err := w.Write(b.Bytes())
	return err
}

func writeDiagnostic(b *bytes.Buffer, d *hcl.Diagnostic, files map[string]*hcl.File) {
	if d.Subject != nil {
		b.WriteString(d.Subject.String())
		b.WriteString(": ")
	}
	if d.Severity == hcl.DiagWarning {
		b.WriteString("Warning: ")
	}
	b.WriteString(d.Summary)
	if d.Detail != "" {
		b.WriteString("; ")
		b.WriteString(d.Detail)
	}
	b.WriteByte('\n')
	if d.Subject != nil {
		if f := files[d.Subject.Filename]; f != nil {
			writeSnippet(b, *d.Subject, f.Bytes)
		}
	}
}

// writeSnippet prints the line where rng starts and a caret line under the
// part of it that rng covers.
func writeSnippet(b *bytes.Buffer, rng hcl.Range, src []byte) {
	start := rng.Start.Byte
	if start < 0 || start > len(src) || rng.Start.Line < 1 {
		return
	}
	lineStart := bytes.LastIndexByte(src[:start], '\n') + 1
	lineEnd := bytes.IndexByte(src[start:], '\n')
	if lineEnd < 0 {
		lineEnd = len(src)
	} else {
		lineEnd += start
	}
	line := bytes.TrimSuffix(src[lineStart:lineEnd], []byte("\r"))
	if lineStart == 0 {
		line = bytes.TrimPrefix(line, []byte("\ufeff")) // a byte order mark shows nothing
	}
	fmt.Fprintf(b, "%5d | %s\n", rng.Start.Line, visible(line))

	// The carets line up under the text as a terminal shows it: tabs are
	// kept, and each character is padded by the columns it takes (two for
	// a wide one, none for a byte order mark or a combining mark), as
	// visible writes it.
	var pad strings.Builder
	for _, r := range visible(src[lineStart:start]) {
		if r == '\t' {
			pad.WriteByte('\t')
		} else {
			pad.WriteString(strings.Repeat(" ", textwidth.Rune(r)))
		}
	}
	end := rng.End.Byte
	if end < start || end > lineEnd {
		end = lineEnd
	}
	n := max(textwidth.String(visible(src[start:end])), 1)
	fmt.Fprintf(b, "%5s | %s%s\n", "", pad.String(), strings.Repeat("^", n))
}

// visible returns line as it may be written to a terminal: a control
// character other than a tab (a carriage return not ending the line, an
// escape starting a terminal sequence, NUL) is shown as its symbol (␍, ␛,
// ␀); a C1 control, a line or paragraph separator, a bidirectional
// override or isolate, or a byte that is not UTF-8 as U+FFFD. Written as
// they are, they moved the cursor, rewrote or reordered the line, or drove
// the terminal.
func visible(line []byte) string {
	var b strings.Builder
	for _, r := range string(line) {
		switch {
		case r == '\t':
			b.WriteRune(r)
		case r < 0x20:
			b.WriteRune(0x2400 + r) // ␀ to ␟
		case r == 0x7f:
			b.WriteRune('\u2421') // ␡
		case r >= 0x80 && r < 0xa0, r == '\u2028', r == '\u2029',
			r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
			b.WriteRune(utf8.RuneError)
		default:
			b.WriteRune(r) // a byte that is not UTF-8 is RuneError already
		}
	}
	return b.String()
}

// tidy gives every diagnostic a subject (the start of filename when it had
// none), drops exact repeats and sorts them by position, stably.
func tidy(diags hcl.Diagnostics, filename string) hcl.Diagnostics {
	type key struct {
		sev             hcl.DiagnosticSeverity
		summary, detail string
		rng             hcl.Range
	}
	seen := map[key]bool{}
	out := make(hcl.Diagnostics, 0, len(diags))
	for _, d := range diags {
		if d.Subject == nil {
			if d.Context != nil {
				d.Subject = d.Context
			} else {
				d.Subject = fileStart(filename)
			}
		}
		k := key{d.Severity, d.Summary, d.Detail, *d.Subject}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, d)
	}
	slices.SortStableFunc(out, func(a, b *hcl.Diagnostic) int {
		return cmp.Or(
			cmp.Compare(a.Subject.Filename, b.Subject.Filename),
			cmp.Compare(a.Subject.Start.Byte, b.Subject.Start.Byte),
		)
	})
	return out
}

// redefined is the summary of the parser's error about an attribute set
// twice in one body. It is no syntax error: the parser keeps the first
// definition and goes on with nothing out of step, so the file is checked
// further and its other mistakes are reported with it.
const redefined = "Attribute redefined"

// hasSyntaxError reports whether the parser's diagnostics hold an error
// other than an attribute set twice.
func hasSyntaxError(diags hcl.Diagnostics) bool {
	for _, d := range diags {
		if d.Severity == hcl.DiagError && d.Summary != redefined {
			return true
		}
	}
	return false
}

// firstSyntaxError keeps, of the parser's diagnostics (sorted by tidy), the
// first syntax error of each file and the warnings. After a syntax error
// the parser recovers as best it can, and what it reports next is mostly
// caused by the first (one missing quote makes every following line a
// string split over lines) and nothing tells the independent ones apart, so
// the user sees the one that matters, fixes it and runs again.
func firstSyntaxError(diags hcl.Diagnostics) hcl.Diagnostics {
	out := make(hcl.Diagnostics, 0, len(diags))
	seen := map[string]bool{} // files whose first error is kept
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			if d.Summary == redefined {
				continue // reported with the rest once the syntax is right
			}
			if seen[d.Subject.Filename] {
				continue
			}
			seen[d.Subject.Filename] = true
		}
		out = append(out, d)
	}
	return out
}

// fileStart is the range of the first character of a file, the position of
// diagnostics about the file as a whole.
func fileStart(filename string) *hcl.Range {
	p := hcl.Pos{Line: 1, Column: 1, Byte: 0}
	return &hcl.Range{Filename: filename, Start: p, End: p}
}

// Helpers to build diagnostics.

func errorDiag(subject hcl.Range, summary, format string, args ...any) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   fmt.Sprintf(format, args...),
		Subject:  subject.Ptr(),
	}
}

// suggestion returns the name of candidates closest to given (edit distance
// below 3, as HCL's own suggestions), or "".
func suggestion(given string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := levenshtein(given, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// didYouMean returns ` Did you mean "NAME"?` for the closest candidate, or "".
func didYouMean(given string, candidates []string) string {
	if s := suggestion(given, candidates); s != "" {
		return fmt.Sprintf(" Did you mean %q?", s)
	}
	return ""
}

// levenshtein returns the edit distance between a and b, counted in runes.
func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// quotedList writes names as `"a", "b" and "c"`.
func quotedList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	switch len(q) {
	case 0:
		return "(none)"
	case 1:
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " and " + q[len(q)-1]
}
