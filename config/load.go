package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/superd-dev/superd/endpoint"
)

// MaxFileSize is the largest configuration file Load reads. Parsing takes
// about a hundred times a file's size in memory, and a running superd reads
// its file again at every SIGHUP: a file replaced by something else (a log
// file, a device such as /dev/zero) must fail the reload, not exhaust the
// memory every service shares. A real file is a few kilobytes.
const MaxFileSize = 4 << 20

// ErrFileTooLarge is the cause of Load's *FileError for a file over
// MaxFileSize.
var ErrFileTooLarge = fmt.Errorf("it is over %d MiB, far more than any configuration needs", MaxFileSize>>20)

// Load reads, decodes and validates the configuration file at path. On
// failure the error is a *DiagnosticsError holding every problem found, or
// a *FileError when the file cannot be read at all (or is over
// MaxFileSize).
func Load(path string) (*File, error) {
	src, err := readFile(path)
	if err != nil {
		abs, aerr := filepath.Abs(path)
		if aerr != nil {
			abs = path
		}
		return nil, &FileError{Path: abs, Err: err}
	}
	return Parse(src, path)
}

// readFile is os.ReadFile with MaxFileSize. It reads what is not a regular
// file too (superd validate -config /dev/stdin), up to the limit.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	src, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(src) > MaxFileSize {
		return nil, ErrFileTooLarge
	}
	return src, nil
}

// FileError is the error of Load when the configuration file cannot be read
// (missing, unreadable, a folder): there is no position in it to show. It
// unwraps to the cause, so errors.Is(err, fs.ErrNotExist) tells a missing
// file.
type FileError struct {
	Path string // the file's absolute path (as given if it has none)
	Err  error
}

func (e *FileError) Error() string {
	if errors.Is(e.Err, fs.ErrNotExist) {
		return "configuration file " + e.Path + " does not exist"
	}
	var pe *fs.PathError
	if errors.As(e.Err, &pe) {
		return "cannot read configuration file " + e.Path + ": " + pe.Err.Error()
	}
	return "cannot read configuration file " + e.Path + ": " + e.Err.Error()
}

func (e *FileError) Unwrap() error { return e.Err }

// Parse decodes and validates src as the configuration file filename:
// filename names the file in diagnostics, and its folder is the one
// relative paths resolve against. Parse does not read filename itself, but
// it does check files the configuration refers to (TLS certificates,
// file()).
func Parse(src []byte, filename string) (*File, error) {
	if diags := checkNesting(src, filename); diags.HasErrors() {
		return nil, &DiagnosticsError{Diags: diags, Files: map[string]*hcl.File{filename: {Bytes: src}}}
	}
	parser := hclparse.NewParser()
	f, diags := parser.ParseHCL(src, filename)
	if hasSyntaxError(diags) {
		return nil, &DiagnosticsError{Diags: firstSyntaxError(tidy(diags, filename)), Files: parser.Files()}
	}
	// Number literals out of range, and expressions scaling numbers too
	// often, are reported here, and the attributes holding one are not
	// evaluated (see decoder.value); the rest of the file is checked as
	// usual.
	var huge hcl.Diagnostics
	if body, ok := f.Body.(*hclsyntax.Body); ok {
		huge = checkNumbers(body)
		diags = append(diags, huge...)
	}
	dir, err := filepath.Abs(filepath.Dir(filename))
	if err != nil {
		diags = append(diags, errorDiag(*fileStart(filename), "Cannot resolve the configuration folder", "%s.", err))
		return nil, &DiagnosticsError{Diags: tidy(diags, filename), Files: parser.Files()}
	}
	d := &decoder{
		file: &File{
			Path:            filename,
			Dir:             dir,
			MetricsAddress:  DefaultMetricsAddress,
			ShutdownTimeout: DefaultShutdownTimeout,
		},
		ctx:      evalContext(dir),
		diags:    diags,
		services: map[string]hcl.Range{},
		fileSums: map[string]string{},
	}
	for _, h := range huge {
		d.huge = append(d.huge, *h.Subject)
	}
	d.decodeRoot(f.Body)
	d.diags = tidy(d.diags, filename)
	if d.diags.HasErrors() {
		return nil, &DiagnosticsError{Diags: d.diags, Files: parser.Files()}
	}
	d.file.Warnings = d.diags
	d.file.files = parser.Files()
	return d.file, nil
}

// WriteWarnings prints the file's warnings (if any) as DiagnosticsError's
// Write does.
func (f *File) WriteWarnings(w io.Writer) error {
	return writeDiagnostics(w, f.Warnings, f.files)
}

// Service returns the service called name, or nil.
func (f *File) Service(name string) *Service {
	for _, s := range f.Services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// decoder carries the state of one Parse.
type decoder struct {
	file  *File
	ctx   *hcl.EvalContext
	diags hcl.Diagnostics
	// services maps each service name to where it was declared.
	services map[string]hcl.Range
	// sockets are the addresses and paths taken so far, for conflicts.
	sockets []socket
	// fileSums are the SHA-256 of the TLS files read, by resolved path.
	fileSums map[string]string
	// huge are the number literals checkNumbers refused: an attribute
	// holding one is not evaluated.
	huge []hcl.Range
}

func (d *decoder) add(diag *hcl.Diagnostic) { d.diags = append(d.diags, diag) }

func (d *decoder) errorf(subject hcl.Range, summary, format string, args ...any) {
	d.add(errorDiag(subject, summary, format, args...))
}

var rootSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "shutdown_timeout"},
		{Name: "user"},
		{Name: "group"},
	},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "metrics"},
		{Type: "access_log"},
		{Type: "cluster"},
		{Type: "service", LabelNames: []string{"factory", "name"}},
	},
}

var metricsSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "address"},
	},
}

func (d *decoder) decodeRoot(body hcl.Body) {
	content, diags := body.Content(rootSchema)
	d.diags = append(d.diags, diags...)

	if attr, ok := content.Attributes["shutdown_timeout"]; ok {
		if v, ok := d.duration(attr); ok {
			d.file.ShutdownTimeout = v
		}
	}
	d.decodeRunAs(content)

	// The metrics listener binds its default address unless a metrics
	// block sets one: claim it first, so a clash is reported on the endpoint.
	if !metricsAddressSet(content) {
		if addr, err := endpoint.ParseAddress(endpoint.KindTCP, DefaultMetricsAddress); err == nil {
			d.claim(socket{addr: addr, written: DefaultMetricsAddress,
				desc: fmt.Sprintf("the metrics listener (default address %q)", DefaultMetricsAddress), rng: *fileStart(d.file.Path)})
		}
	}

	// Services need to know whether there is a cluster (cluster = true in
	// a chat service), wherever the block is written.
	d.decodeClusters(content)

	var metricsSeen, accessLogSeen *hcl.Range
	for _, blk := range content.Blocks {
		switch blk.Type {
		case "metrics":
			if metricsSeen != nil {
				d.errorf(blk.DefRange, "Duplicate metrics block",
					"A metrics block was already declared at %s; write one at most.", metricsSeen)
				continue
			}
			metricsSeen = blk.DefRange.Ptr()
			d.decodeMetrics(blk)
		case "service":
			d.decodeService(blk)
		case "access_log":
			if accessLogSeen != nil {
				d.errorf(blk.DefRange, "Duplicate access_log block",
					"An access_log block was already declared at %s; write one at most.", accessLogSeen)
				continue
			}
			accessLogSeen = blk.DefRange.Ptr()
			d.decodeAccessLog(blk)
		}
	}
}

// metricsAddressSet reports whether a metrics block writes an address.
func metricsAddressSet(content *hcl.BodyContent) bool {
	for _, blk := range content.Blocks {
		if blk.Type != "metrics" {
			continue
		}
		if attrs, diags := blk.Body.JustAttributes(); !diags.HasErrors() {
			if _, ok := attrs["address"]; ok {
				return true
			}
		} else {
			return true // reported by decodeMetrics
		}
	}
	return false
}

func (d *decoder) decodeMetrics(blk *hcl.Block) {
	content, diags := blk.Body.Content(metricsSchema)
	d.diags = append(d.diags, diags...)
	attr, ok := content.Attributes["address"]
	if !ok {
		return
	}
	addr, ok := d.str(attr)
	if !ok {
		return
	}
	d.file.MetricsAddress = addr
	if addr == "" {
		return
	}
	if a, ok := d.checkAddress(attr, endpoint.KindTCP, addr); ok {
		d.claim(socket{addr: a, written: addr, desc: fmt.Sprintf("the metrics listener %q", addr), rng: attr.Expr.Range()})
	}
}

// duration evaluates a Go duration string; it must not be negative.
func (d *decoder) duration(attr *hcl.Attribute) (time.Duration, bool) {
	s, ok := d.str(attr)
	if !ok {
		return 0, false
	}
	v, tooLong, err := parseDuration(s)
	switch {
	case tooLong:
		d.errorf(attr.Expr.Range(), "Invalid duration", "The value of %s, %q, is too long: a duration is at most %s.", attr.Name, s, maxDuration)
		return 0, false
	case err != nil:
		d.errorf(attr.Expr.Range(), "Invalid duration",
			"The value of %s, %q, is not a duration; use Go syntax such as \"10s\", \"1m30s\" or \"500ms\".", attr.Name, s)
		return 0, false
	}
	if v < 0 {
		d.errorf(attr.Expr.Range(), "Invalid duration", "%s must not be negative, but it is %q.", attr.Name, s)
		return 0, false
	}
	return v, true
}

// maxNumberExp bounds the binary exponent of number literals: beyond
// float64's range (about 1e308) they are not meaningful anywhere in the
// file, and turning such a number into text (as string conversion does)
// would take minutes.
const maxNumberExp = 1024

// maxNesting bounds how deep brackets, quotes and templates nest, and how
// many unary operators follow each other, in a configuration file: HCL's
// parser and evaluator recurse once per level, and a file nesting deep
// enough (100,000 parentheses) exhausts the stack, which no recover
// catches: superd validate, or a running superd at reload, would die. A
// real file nests a few levels.
const maxNesting = 256

// checkNesting reports, before the file is parsed, where it nests deeper
// than maxNesting.
func checkNesting(src []byte, filename string) hcl.Diagnostics {
	tokens, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	depth, unary := 0, 0
	for _, tok := range tokens {
		switch tok.Type {
		case hclsyntax.TokenOParen, hclsyntax.TokenOBrack, hclsyntax.TokenOBrace, hclsyntax.TokenOQuote,
			hclsyntax.TokenOHeredoc, hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			depth++
		case hclsyntax.TokenCParen, hclsyntax.TokenCBrack, hclsyntax.TokenCBrace, hclsyntax.TokenCQuote,
			hclsyntax.TokenCHeredoc, hclsyntax.TokenTemplateSeqEnd:
			depth--
		}
		if tok.Type == hclsyntax.TokenBang || tok.Type == hclsyntax.TokenMinus {
			unary++
		} else {
			unary = 0
		}
		if depth > maxNesting || unary > maxNesting {
			return hcl.Diagnostics{errorDiag(tok.Range, "Nested too deeply",
				"Brackets, quotes and templates may nest, and operators follow one another, at most %d deep here.", maxNesting)}
		}
	}
	return nil
}

// maxScaling bounds how many multiplications and divisions one attribute's
// expression holds. Each may take a number's binary exponent up by about
// maxNumberExp, and a number converted to a string (a string attribute, a
// template's interpolation, a function's argument) is written out digit by
// digit, in time that grows with the square of its digits, before any
// check can see it: 20,000 multiplications of 1e300 in a 120 KB file took
// 15 s, ten times as many hours. A real file multiplies a few numbers (4 *
// 1024 * 1024).
const maxScaling = 64

// checkNumbers reports number literals too large or too small to be used,
// and expressions multiplying or dividing more than maxScaling times.
func checkNumbers(body *hclsyntax.Body) hcl.Diagnostics {
	var diags hcl.Diagnostics
	_ = hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
		if attr, ok := n.(*hclsyntax.Attribute); ok {
			scaling := 0
			_ = hclsyntax.VisitAll(attr.Expr, func(n hclsyntax.Node) hcl.Diagnostics {
				if op, ok := n.(*hclsyntax.BinaryOpExpr); ok && (op.Op == hclsyntax.OpMultiply || op.Op == hclsyntax.OpDivide) {
					scaling++
				}
				return nil
			})
			if scaling > maxScaling {
				diags = append(diags, errorDiag(attr.Expr.Range(), "Too many multiplications",
					"This expression multiplies or divides %d times; one expression may do so at most %d times.", scaling, maxScaling))
			}
			return nil
		}
		// A string taken as a number by arithmetic ("1e3000000" + 0)
		// is converted inside the evaluation, where no check sees it.
		var operands []hclsyntax.Expression
		switch op := n.(type) {
		case *hclsyntax.BinaryOpExpr:
			switch op.Op {
			case hclsyntax.OpAdd, hclsyntax.OpSubtract, hclsyntax.OpMultiply, hclsyntax.OpDivide, hclsyntax.OpModulo:
				operands = []hclsyntax.Expression{op.LHS, op.RHS}
			}
		case *hclsyntax.UnaryOpExpr:
			if op.Op == hclsyntax.OpNegate {
				operands = []hclsyntax.Expression{op.Val}
			}
		}
		for _, e := range operands {
			for {
				p, ok := e.(*hclsyntax.ParenthesesExpr)
				if !ok {
					break
				}
				e = p.Expression
			}
			t, ok := e.(*hclsyntax.TemplateExpr)
			if !ok || !t.IsStringLiteral() {
				continue
			}
			lit := t.Parts[0].(*hclsyntax.LiteralValueExpr)
			if lit.Val.Type() != cty.String || lit.Val.IsNull() || !lit.Val.IsKnown() {
				continue
			}
			if v, err := cty.ParseNumberVal(lit.Val.AsString()); err == nil && outOfRange(v.AsBigFloat()) {
				diags = append(diags, errorDiag(t.SrcRange, "Number out of range",
					"This string is taken as a number here, and that number is too large or too small to be used; numbers must be within about 1e-308 to 1e308."))
			}
		}

		lit, ok := n.(*hclsyntax.LiteralValueExpr)
		if !ok || lit.Val.Type() != cty.Number || lit.Val.IsNull() || !lit.Val.IsKnown() {
			return nil
		}
		if outOfRange(lit.Val.AsBigFloat()) {
			diags = append(diags, errorDiag(lit.SrcRange, "Number out of range",
				"This number is too large or too small to be used; numbers must be within about 1e-308 to 1e308."))
		}
		return nil
	})
	return diags
}

// outOfRange reports whether f is beyond float64's range (maxNumberExp).
func outOfRange(f *big.Float) bool {
	return f.IsInf() || f.Sign() != 0 && (f.MantExp(nil) > maxNumberExp || f.MantExp(nil) < -maxNumberExp)
}

var accessLogSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "path"},
		{Name: "format"},
	},
}

// decodeAccessLog decodes the access_log block: path ("stderr", the
// default, or a file) and format ("json", the default, or "text").
func (d *decoder) decodeAccessLog(blk *hcl.Block) {
	content, diags := blk.Body.Content(accessLogSchema)
	d.diags = append(d.diags, diags...)
	al := &AccessLog{Path: "stderr", Format: "json"}
	if a := content.Attributes["path"]; a != nil {
		if p, ok := d.str(a); ok {
			switch {
			case p == "":
				d.errorf(a.Expr.Range(), "Invalid access log path", `path must be "stderr" or a file.`)
			case p == "stderr":
			default:
				al.Path = resolvePath(d.file.Dir, p)
			}
		}
	}
	if a := content.Attributes["format"]; a != nil {
		if f, ok := d.str(a); ok {
			if f != "json" && f != "text" {
				d.errorf(a.Expr.Range(), "Invalid access log format", `format must be "json" or "text" (logfmt), not %q.`, f)
			}
			al.Format = f
		}
	}
	d.file.AccessLog = al
}
