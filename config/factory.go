package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"path/filepath"
	"reflect"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/gocty"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/fsutil"
)

var (
	durationType = reflect.TypeOf(framework.Duration(0))
	pathType     = reflect.TypeOf(framework.Path(""))
)

// attrField is what the decoder knows of one field of a factory's
// configuration: the attribute's name ("BLOCK.NAME" inside a block),
// when the file set it its range, and whether it could not be decoded
// (a diagnostic says why; the field keeps its default).
type attrField struct {
	name   string
	rng    *hcl.Range
	failed bool
}

// factoryDecoder decodes one service's factory attributes.
type factoryDecoder struct {
	*decoder
	fields map[any]*attrField // by the field's address
}

// NewFactory builds the service's factory for superd to run: env carries
// log (tagged with the service and factory) and reg, through which the
// factory registers its own metric families.
func (s *Service) NewFactory(log *slog.Logger, reg prometheus.Registerer) (framework.Factory, error) {
	return s.Spec.New(&framework.Env{
		Service: s.Name,
		Log:     log.With("service", s.Name, "factory", s.Factory),
		Metrics: reg,
		Cluster: s.cluster,
		RunAs:   s.runAs.identity(),
	}, s.FactoryConfig)
}

// decodeFactory decodes the factory's attributes into a copy of its
// Config, checks them (their tags, then Validate), and builds the factory
// once, so that its own checks run as well (`superd validate` reports
// them) and an endpoint it cannot serve is reported.
func (d *decoder) decodeFactory(svc *Service, blk *hcl.Block, content *hcl.BodyContent) {
	spec := svc.Spec
	svc.cluster = d.file.Cluster != nil
	svc.runAs = d.file.RunAs
	fd := &factoryDecoder{decoder: d, fields: map[any]*attrField{}}
	var cfg any
	decoded := true
	if spec.Config != nil {
		v := reflect.New(reflect.TypeOf(spec.Config))
		v.Elem().Set(reflect.ValueOf(spec.Config))
		decoded = fd.decode(spec.Attributes(), v.Elem(), content, "")
		cfg = v.Interface()
	}
	if decoded {
		svc.FactoryConfig = cfg
	}

	// Validate and New run also when an attribute could not be decoded
	// (it keeps its default), so that the other attributes' mistakes are
	// reported at once too; what they say about an attribute that failed,
	// or about none, may follow from it and is left out.
	err := fd.check(svc, cfg, content, decoded)
	if err == nil {
		return
	}
	for _, err := range joined(err) {
		var fe *framework.FieldError
		field := errors.As(err, &fe) && fd.fields[fe.Field] != nil
		if !decoded && (!field || fd.fields[fe.Field].failed) {
			continue
		}
		if !field {
			d.errorf(blk.DefRange, "Invalid service configuration", "The %s factory rejected service %q: %s", spec.Name, svc.Name, sentence(err.Error()))
			continue
		}
		fl := fd.fields[fe.Field]
		at := blk.DefRange
		if fl.rng != nil {
			at = *fl.rng
		}
		d.errorf(at, fmt.Sprintf("Invalid value for %q", fl.name), "%s", sentence(fe.Err.Error()))
	}
}

// check runs the configuration's Validate, then builds the factory of svc
// from cfg, as superd will, so that its own checks are reported, and
// checks what it says of the endpoints. Where an attribute could not be
// decoded (!decoded), a panic of theirs over a default they did not
// expect is not the file's: it is ignored.
func (fd *factoryDecoder) check(svc *Service, cfg any, content *hcl.BodyContent, decoded bool) (err error) {
	if !decoded {
		defer func() {
			if recover() != nil {
				err = nil
			}
		}()
	}
	if val, ok := cfg.(framework.Validator); ok {
		err = val.Validate(func(f any) bool { fl := fd.fields[f]; return fl != nil && fl.rng != nil })
	}
	if err == nil {
		d, spec := fd.decoder, svc.Spec
		env := &framework.Env{
			Service: svc.Name,
			Log:     slog.New(slog.DiscardHandler),
			Metrics: prometheus.NewRegistry(),
			Cluster: svc.cluster,
			RunAs:   svc.runAs.identity(),
		}
		var f framework.Factory
		f, err = spec.New(env, cfg)
		if lh, ok := f.(framework.ListenerHandler); ok && err == nil && lh.ServesListeners() {
			d.checkListenerLimits(svc, content)
		}
		if ec, ok := f.(framework.EndpointChecker); ok && err == nil {
			for _, eb := range content.Blocks {
				if eb.Type != blockEndpoint || len(eb.Labels) == 0 {
					continue
				}
				if cerr := ec.CheckEndpoint(eb.Labels[0]); cerr != nil {
					d.errorf(eb.LabelRanges[0], "Endpoint kind not served",
						"Service %q cannot use a %s endpoint: %s", svc.Name, eb.Labels[0], sentence(cerr.Error()))
				}
			}
		}
	}
	return err
}

// decode sets the fields of v (a struct) from content; false when a
// diagnostic was reported.
func (fd *factoryDecoder) decode(attrs []framework.Attribute, v reflect.Value, content *hcl.BodyContent, prefix string) bool {
	ok := true
	for _, a := range attrs {
		fv := v.Field(a.Index)
		fl := &attrField{name: prefix + a.Name}
		fd.fields[fv.Addr().Interface()] = fl
		if a.Block {
			fl.failed = !fd.block(a, fv, fl, content)
			ok = ok && !fl.failed
			continue
		}
		attr := content.Attributes[a.Name]
		if attr == nil {
			fl.failed = a.Required // Content reported a missing one
			ok = ok && !fl.failed
			continue
		}
		fl.rng = &attr.Range
		val, set, good := fd.valueOf(attr, a.Type, a.Required)
		if !set {
			fl.failed = !good
			ok = ok && good
			continue
		}
		fl.failed = !fd.assign(a, fv, val, attr, fl.name)
		ok = ok && !fl.failed
	}
	return ok
}

// block decodes a block attribute: a struct, or a map of any attributes.
func (fd *factoryDecoder) block(a framework.Attribute, fv reflect.Value, fl *attrField, content *hcl.BodyContent) bool {
	var blocks []*hcl.Block
	for _, b := range content.Blocks {
		if b.Type == a.Name {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) == 0 {
		return true
	}
	// The first block is decoded also when another follows it, so that
	// its own mistakes are reported with the duplicate.
	ok := true
	for _, dup := range blocks[1:] {
		fd.errorf(dup.DefRange, fmt.Sprintf("Duplicate %s block", a.Name),
			"Only one %s block is allowed. Another was defined at %s.", a.Name, blocks[0].DefRange)
		ok = false
	}
	b := blocks[0]
	fl.rng = &b.DefRange
	if a.Nested != nil {
		schema := &hcl.BodySchema{}
		for _, n := range a.Nested {
			schema.Attributes = append(schema.Attributes, hcl.AttributeSchema{Name: n.Name, Required: n.Required})
		}
		// Its attributes are decoded also after an unknown one (a
		// typo) was reported, so that their mistakes are too.
		c, diags := b.Body.Content(schema)
		fd.diags = append(fd.diags, diags...)
		nv := reflect.New(fv.Type().Elem())
		fv.Set(nv)
		return fd.decode(a.Nested, nv.Elem(), c, fl.name+".") && !diags.HasErrors() && ok
	}
	attrs, diags := b.Body.JustAttributes()
	fd.diags = append(fd.diags, diags...)
	if diags.HasErrors() {
		return false
	}
	m := reflect.MakeMap(fv.Type())
	for name, attr := range attrs {
		// An error about one entry (framework.MapEntry) is reported at it.
		fd.fields[framework.MapEntry{Map: fv.Addr().Interface(), Key: name}] = &attrField{name: fl.name + "." + name, rng: &attr.Range}
		val, set, good := fd.valueOf(attr, a.Type.ElementType(), false)
		if !set {
			ok = ok && good
			continue
		}
		e := reflect.New(fv.Type().Elem())
		if err := gocty.FromCtyValue(val, e.Interface()); err != nil {
			fd.errorf(attr.Expr.Range(), "Incorrect attribute value type", "Inappropriate value for attribute %q: %s.", name, err)
			ok = false
			continue
		}
		m.SetMapIndex(reflect.ValueOf(name), e.Elem())
	}
	fv.Set(m)
	return ok
}

// valueOf is decoder.value for a factory attribute: set is false when it
// is null (it keeps its default; an error when it is required), ok is
// false after a diagnostic.
func (fd *factoryDecoder) valueOf(attr *hcl.Attribute, ty cty.Type, required bool) (v cty.Value, set, ok bool) {
	n := len(fd.diags)
	v, good := fd.value(attr, ty)
	switch {
	case good:
		return v, true, true
	case len(fd.diags) > n || fd.holdsHugeNumber(attr.Expr.Range()):
		return cty.NilVal, false, false
	case required:
		fd.errorf(attr.Expr.Range(), "Invalid value", "%s must not be null.", attr.Name)
		return cty.NilVal, false, false
	}
	return cty.NilVal, false, true
}

// assign converts val into the field, applying the field type's rules and
// the tags' bounds.
func (fd *factoryDecoder) assign(a framework.Attribute, fv reflect.Value, val cty.Value, attr *hcl.Attribute, name string) bool {
	invalid := func(format string, args ...any) bool {
		fd.errorf(attr.Range, fmt.Sprintf("Invalid value for %q", name), format, args...)
		return false
	}
	switch t := fv.Type(); {
	case t == durationType:
		s := val.AsString()
		dur, tooLong, err := parseDuration(s)
		switch {
		case tooLong:
			return invalid("%q is too long: a duration is at most %s.", s, maxDuration)
		case err != nil:
			return invalid("%q is not a duration (use Go syntax such as \"10s\" or \"1m30s\").", s)
		}
		if lo, _ := time.ParseDuration(a.Min); a.Min != "" && dur < lo {
			return invalid("%s must be at least %s, not %q.", a.Name, a.Min, s)
		}
		if hi, _ := time.ParseDuration(a.Max); a.Max != "" && dur > hi {
			return invalid("%s must be at most %s, not %q.", a.Name, a.Max, s)
		}
		fv.SetInt(int64(dur))
		return true
	case t == pathType:
		p := val.AsString()
		if p != "" && !filepath.IsAbs(p) {
			p = filepath.Join(fd.file.Dir, p)
		}
		fv.SetString(p)
		return true
	case a.Type == cty.Number:
		f := val.AsBigFloat()
		whole := isInteger(t)
		if (whole && !f.IsInt()) || outside(f, a.Min, a.Max) {
			return invalid("%s.", boundsText(a, whole, f))
		}
		if lo, hi, ok := intRange(t); ok && outside(f, lo, hi) {
			// Within the tags' bounds, but not the field's type's:
			// the bounds said are those of both.
			b := a
			if a.Min == "" || outside(mustFloat(a.Min), lo, "") {
				b.Min = lo
			}
			if a.Max == "" || outside(mustFloat(a.Max), "", hi) {
				b.Max = hi
			}
			return invalid("%s.", boundsText(b, true, f))
		}
	}
	if err := gocty.FromCtyValue(val, fv.Addr().Interface()); err != nil {
		return invalid("%s.", err)
	}
	return true
}

// isInteger reports whether t is an integer type or a pointer to one.
func isInteger(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// intRange is the range of an integer type (or of a pointer to one), as
// text; ok is false for another type.
func intRange(t reflect.Type) (lo, hi string, ok bool) {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if !isInteger(t) {
		return "", "", false
	}
	bits := uint(t.Bits())
	switch t.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "0", new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), bits), big.NewInt(1)).String(), true
	}
	limit := new(big.Int).Lsh(big.NewInt(1), bits-1)
	return new(big.Int).Neg(limit).String(), new(big.Int).Sub(limit, big.NewInt(1)).String(), true
}

// mustFloat parses a bound checked when the factory registered.
func mustFloat(s string) *big.Float {
	f, _, _ := big.ParseFloat(s, 10, 64, big.ToNearestEven)
	return f
}

func outside(f *big.Float, lo, hi string) bool {
	if lo != "" {
		if b, _, _ := big.ParseFloat(lo, 10, 64, big.ToNearestEven); f.Cmp(b) < 0 {
			return true
		}
	}
	if hi != "" {
		if b, _, _ := big.ParseFloat(hi, 10, 64, big.ToNearestEven); f.Cmp(b) > 0 {
			return true
		}
	}
	return false
}

// boundsText says what a number attribute must be: "max_line_length must
// be a whole number of at least 1, not 0".
func boundsText(a framework.Attribute, whole bool, f *big.Float) string {
	what := "a number"
	if whole {
		what = "a whole number"
	}
	switch {
	case a.Min != "" && a.Max != "":
		what += " from " + a.Min + " to " + a.Max
	case a.Min != "":
		what += " of at least " + a.Min
	case a.Max != "":
		what += " of at most " + a.Max
	}
	return fmt.Sprintf("%s must be %s, not %s", a.Name, what, numberText(f))
}

// configValues returns the value of every attribute of a decoded
// configuration (defaults included), by name ("BLOCK.NAME" inside a
// block), for the fingerprint.
func configValues(attrs []framework.Attribute, v reflect.Value, prefix string, out map[string]cty.Value) {
	for _, a := range attrs {
		fv := v.Field(a.Index)
		name := prefix + a.Name
		switch {
		case a.Nested != nil:
			if !fv.IsNil() {
				configValues(a.Nested, fv.Elem(), name+".", out)
			}
			continue
		case fv.Type() == durationType:
			out[name] = cty.StringVal(time.Duration(fv.Int()).String())
			continue
		case fv.Type() == pathType && a.Contents && fv.String() != "":
			out[name] = cty.StringVal(fv.String() + " " + contentsDigest(fv.String()))
			continue
		case fv.Type() == pathType:
			out[name] = cty.StringVal(fv.String())
			continue
		}
		if cv, ok := fv.Interface().(cty.Value); ok {
			out[name] = cv
			continue
		}
		cv, err := gocty.ToCtyValue(fv.Interface(), a.Type)
		if err != nil {
			cv = cty.StringVal(fmt.Sprintf("%#v", fv.Interface()))
		}
		out[name] = cv
	}
}

// joined lists the errors that err joins (errors.Join, at any depth), or
// err alone: a factory reports each mistake as one error.
func joined(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, joined(e)...)
	}
	return out
}

// checkListenerLimits refuses, for a service that hands its listening
// sockets to its program (wait mode), the limits that superd applies to
// each connection or datagram it takes: it takes none, the program reads
// the socket itself, so they would silently apply to nothing. So would an
// endpoint's proxy_protocol, and worse: superd reads no header, so the
// program would get it as the first bytes of each connection.
func (d *decoder) checkListenerLimits(svc *Service, content *hcl.BodyContent) {
	const detail = "Service %q hands its listening sockets to its program (wait mode), which takes the connections and datagrams itself: superd sees none of them, so %s would apply to nothing. Remove it; on tcp, wait = false takes the connections one by one, where it applies."
	for _, name := range []string{attrMaxConnections, attrAllow, attrDeny, attrMaxConnectionsPerIP, attrMaxConnectionsPerUID} {
		if a := content.Attributes[name]; a != nil {
			d.errorf(a.NameRange, "Limit not applied in wait mode", detail, svc.Name, name)
		}
	}
	// What superd does to a connection it holds: it holds none here.
	for _, name := range []string{attrIdleTimeout, attrMaxPendingOutput} {
		if a := content.Attributes[name]; a != nil {
			d.errorf(a.NameRange, "Limit not applied in wait mode",
				"Service %q hands its listening sockets to its program (wait mode), which takes the connections itself: superd holds none of them, so %s would apply to nothing. Remove it.", svc.Name, name)
		}
	}
	for _, b := range content.Blocks {
		switch b.Type {
		case blockRateLimit, blockRateLimitPerIP:
			d.errorf(b.TypeRange, "Limit not applied in wait mode", detail, svc.Name, b.Type)
		case blockEndpoint:
			if len(b.Labels) == 0 || b.Labels[0] != endpoint.KindTCP {
				continue // other kinds: no proxy_protocol there, or no wait mode
			}
			inner, _, _ := b.Body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: blockProxyProtocol}}})
			for _, pb := range inner.Blocks {
				d.errorf(pb.TypeRange, "PROXY header not read in wait mode",
					"Service %q hands its listening sockets to its program (wait mode), which takes the connections itself: superd reads no PROXY header, so the program would get it as the first bytes of each connection. Remove proxy_protocol; on tcp, wait = false reads the header and gives the program the client's address.", svc.Name)
			}
		}
	}
}

// maxContentsFile bounds what contentsDigest reads of a file.
const maxContentsFile = 16 << 20

// contentsDigest is the SHA-256 of the file at path (a Path attribute
// tagged contents:"true"), for the fingerprint: a file the factory read
// when it was built, whose new contents a reload must not miss. A file
// that cannot be read digests as its error (New reports it).
func contentsDigest(path string) string {
	data, err := fsutil.ReadRegularFile(path, maxContentsFile)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}
