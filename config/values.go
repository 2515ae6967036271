package config

import (
	"math"
	"math/big"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// nonNullAttrs are the attributes of superd's own blocks that must have a
// value when written; null is an error for them, while it leaves the others
// unset (at their default).
var nonNullAttrs = map[string]bool{
	"address": true, "path": true, "rate": true,
	"cert_file": true, "key_file": true, "client_ca_file": true,
}

// value evaluates attr and converts it to ty. ok is false when the value is
// null (the attribute then counts as unset) or a diagnostic was reported.
func (d *decoder) value(attr *hcl.Attribute, ty cty.Type) (cty.Value, bool) {
	if d.holdsHugeNumber(attr.Expr.Range()) {
		return cty.NilVal, false // reported by checkNumbers
	}
	v, diags := attr.Expr.Value(d.ctx)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return cty.NilVal, false
	}
	if v.IsNull() {
		if nonNullAttrs[attr.Name] {
			d.errorf(attr.Expr.Range(), "Invalid value", "%s must not be null.", attr.Name)
		}
		return cty.NilVal, false
	}
	if !v.IsWhollyKnown() {
		d.errorf(attr.Expr.Range(), "Value not known", "The value of %s cannot be known while the file is read.", attr.Name)
		return cty.NilVal, false
	}
	cv, err := convert.Convert(v, ty)
	if err != nil {
		d.errorf(attr.Expr.Range(), "Incorrect attribute value type", "Inappropriate value for attribute %q: %s.", attr.Name, err)
		return cty.NilVal, false
	}
	if hasNullElement(cv) {
		d.errorf(attr.Expr.Range(), "Invalid value", "The value of %s must not contain null.", attr.Name)
		return cty.NilVal, false
	}
	if hasHugeNumber(cv) {
		d.errorf(attr.Expr.Range(), "Number out of range",
			"The value of %s is too large or too small to be used; numbers must be within about 1e-308 to 1e308.", attr.Name)
		return cty.NilVal, false
	}
	return cv, true
}

// holdsHugeNumber reports whether the expression in rng holds a number
// literal checkNumbers refused.
func (d *decoder) holdsHugeNumber(rng hcl.Range) bool {
	for _, h := range d.huge {
		if h.Filename == rng.Filename && h.Start.Byte >= rng.Start.Byte && h.End.Byte <= rng.End.Byte {
			return true
		}
	}
	return false
}

// hasNullElement reports whether a value holds null anywhere inside it.
func hasNullElement(v cty.Value) bool {
	found := false
	_ = cty.Walk(v, func(_ cty.Path, e cty.Value) (bool, error) {
		if e.IsNull() {
			found = true
			return false, nil
		}
		return !found, nil
	})
	return found
}

// hasHugeNumber reports whether a value holds a number outside float64's
// range anywhere inside it (checkNumbers only sees literals; a string
// converted to a number, or arithmetic, escapes it).
func hasHugeNumber(v cty.Value) bool {
	found := false
	_ = cty.Walk(v, func(_ cty.Path, e cty.Value) (bool, error) {
		if e.IsKnown() && !e.IsNull() && e.Type() == cty.Number && outOfRange(e.AsBigFloat()) {
			found = true
		}
		return !found, nil
	})
	return found
}

func (d *decoder) str(attr *hcl.Attribute) (string, bool) {
	v, ok := d.value(attr, cty.String)
	if !ok {
		return "", false
	}
	return v.AsString(), true
}

func (d *decoder) boolean(attr *hcl.Attribute) (bool, bool) {
	v, ok := d.value(attr, cty.Bool)
	if !ok {
		return false, false
	}
	return v.True(), true
}

func (d *decoder) number(attr *hcl.Attribute) (*big.Float, bool) {
	v, ok := d.value(attr, cty.Number)
	if !ok {
		return nil, false
	}
	return v.AsBigFloat(), true
}

// whole evaluates a whole number in [lo, hi].
func (d *decoder) whole(attr *hcl.Attribute, lo, hi int) (int, bool) {
	f, ok := d.number(attr)
	if !ok {
		return 0, false
	}
	if !f.IsInt() {
		d.errorf(attr.Expr.Range(), "Invalid whole number", "%s must be a whole number, not %s.", attr.Name, numberText(f))
		return 0, false
	}
	// The bounds exactly: float64(math.MaxInt) rounds up to 2^63, which
	// would pass and then be clamped.
	below, above := f.Cmp(new(big.Float).SetInt64(int64(lo))) < 0, f.Cmp(new(big.Float).SetInt64(int64(hi))) > 0
	switch {
	case below && hi == math.MaxInt:
		d.errorf(attr.Expr.Range(), "Value out of range", "%s must be at least %d, not %s.", attr.Name, lo, numberText(f))
	case above && hi == math.MaxInt:
		d.errorf(attr.Expr.Range(), "Value out of range", "%s must be at most %d, not %s.", attr.Name, hi, numberText(f))
	case below || above:
		d.errorf(attr.Expr.Range(), "Value out of range", "%s must be from %d to %d, not %s.", attr.Name, lo, hi, numberText(f))
	}
	if below || above {
		return 0, false
	}
	i, _ := f.Int64()
	return int(i), true
}

// strings evaluates a list of strings, with the range of each element (the
// element's own when written as a list literal, the attribute's otherwise).
func (d *decoder) strings(attr *hcl.Attribute) ([]string, []hcl.Range, bool) {
	v, ok := d.value(attr, cty.List(cty.String))
	if !ok {
		return nil, nil, false
	}
	var elemRanges []hcl.Range
	if tuple, isTuple := attr.Expr.(*hclsyntax.TupleConsExpr); isTuple && len(tuple.Exprs) == v.LengthInt() {
		for _, e := range tuple.Exprs {
			elemRanges = append(elemRanges, e.Range())
		}
	}
	var out []string
	var ranges []hcl.Range
	for i, e := range v.AsValueSlice() {
		out = append(out, e.AsString())
		if elemRanges != nil {
			ranges = append(ranges, elemRanges[i])
		} else {
			ranges = append(ranges, attr.Expr.Range())
		}
	}
	return out, ranges, true
}

// goDuration is Go's duration syntax, whatever the size.
var goDuration = regexp.MustCompile(`^[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$`)

// parseDuration is time.ParseDuration, and tells a duration too long to
// hold (over about 292 years) from text that is not a duration at all. A
// negative one too long to hold is the most negative duration, which every
// caller's lower bound refuses as negative.
func parseDuration(s string) (d time.Duration, tooLong bool, err error) {
	d, err = time.ParseDuration(s)
	switch {
	case err == nil || !goDuration.MatchString(s):
		return d, false, err
	case strings.HasPrefix(s, "-"):
		return math.MinInt64, false, nil
	}
	return 0, true, err
}

// maxDuration is the longest duration, for the message about one longer.
const maxDuration = time.Duration(math.MaxInt64)

// numberText writes a number as the file would: a whole number up to 21
// digits in full (9223372036854775807, not 9.223372036854775807e+18),
// others in the shortest form that reads back the same.
func numberText(f *big.Float) string {
	if f.IsInt() && f.MantExp(nil) <= 70 { // below 2^70, about 1.2e21
		return f.Text('f', 0)
	}
	return f.Text('g', -1)
}
