package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/framework"
)

// Names of the attributes and blocks every service accepts.
const (
	attrMaxConnections       = "max_connections"
	attrMaxConnectionsPerIP  = "max_connections_per_ip"
	attrMaxConnectionsPerUID = "max_connections_per_uid"
	attrIdleTimeout          = "idle_timeout"
	attrAllow                = "allow"
	attrDeny                 = "deny"
	attrIPv6Prefix           = "ipv6_prefix"
	attrMaxPendingOutput     = "max_pending_output"
	attrAccessLog            = "access_log"
	blockEndpoint            = "endpoint"
	blockRateLimit           = "rate_limit"
	blockRateLimitPerIP      = "rate_limit_per_ip"
	blockProxyProtocol       = "proxy_protocol" // in an endpoint block
)

// commonAttrNames are the attributes every service accepts, as written in
// a service block.
var commonAttrNames = []string{
	attrMaxConnections,
	attrMaxConnectionsPerIP,
	attrMaxConnectionsPerUID,
	attrIdleTimeout,
	attrAllow,
	attrDeny,
	attrIPv6Prefix,
	attrMaxPendingOutput,
	attrAccessLog,
}

// rateType describes a rate_limit block in CommonAttributes.
var rateType = cty.Object(map[string]cty.Type{"rate": cty.Number, "burst": cty.Number})

// CommonAttributes documents what every service accepts whatever its
// factory, for `superd factories`: the attributes, then the rate_limit and
// rate_limit_per_ip blocks (typed as objects). Endpoint blocks are not
// listed.
var CommonAttributes = []framework.Attribute{
	{Name: attrMaxConnections, Type: cty.Number, Default: cty.NumberIntVal(0),
		Description: "open connections at once (0: unlimited); one more is closed at accept"},
	{Name: attrMaxConnectionsPerIP, Type: cty.Number, Default: cty.NumberIntVal(0),
		Description: "the same, per remote IP (0: unlimited)"},
	{Name: attrMaxConnectionsPerUID, Type: cty.Number, Default: cty.NumberIntVal(0),
		Description: "open connections at once per peer user id, on unix sockets (0: unlimited)"},
	{Name: attrIdleTimeout, Type: cty.String, TypeName: "duration",
		Description: "close a connection that has received nothing for this long (a Go duration such as \"5m\")"},
	{Name: attrAllow, Type: cty.List(cty.String),
		Description: "remote addresses let in, as CIDR ranges or single addresses (default: all)"},
	{Name: attrDeny, Type: cty.List(cty.String),
		Description: "remote addresses refused; deny wins over allow"},
	{Name: attrIPv6Prefix, Type: cty.Number, Default: cty.NumberIntVal(DefaultIPv6Prefix),
		Description: "prefix length grouping IPv6 sources for the per-source limits (0 to 128)"},
	{Name: attrMaxPendingOutput, Type: cty.Number, Default: cty.NumberIntVal(DefaultMaxPendingOutput),
		Description: fmt.Sprintf("bytes of unsent output above which a connection is dropped as slow_consumer (at least %d)", MinMaxPendingOutput)},
	{Name: attrAccessLog, Type: cty.Bool, Default: cty.False,
		Description: "write a line per connection of this service to the access log (see the top-level access_log block)"},
	{Name: blockRateLimit, Type: rateType,
		Description: "block { rate, burst }: new connections per second for the whole service (token bucket; burst defaults to rate rounded up)"},
	{Name: blockRateLimitPerIP, Type: rateType,
		Description: "block { rate, burst }: the same per source"},
}

var serviceBlocks = []hcl.BlockHeaderSchema{
	{Type: blockEndpoint, LabelNames: []string{"kind"}},
	{Type: blockRateLimit},
	{Type: blockRateLimitPerIP},
}

// serviceSchema is the schema of a service block: the factory's attributes
// (when the factory is known), then the common ones. Putting them in one
// schema makes HCL's "Did you mean" consider both.
func serviceSchema(spec *framework.Spec) *hcl.BodySchema {
	s := &hcl.BodySchema{Blocks: serviceBlocks}
	seen := map[string]bool{}
	if spec != nil {
		for _, a := range spec.Attributes() {
			if a.Block {
				s.Blocks = append(s.Blocks[:len(s.Blocks):len(s.Blocks)], hcl.BlockHeaderSchema{Type: a.Name})
				continue
			}
			s.Attributes = append(s.Attributes, hcl.AttributeSchema{Name: a.Name, Required: a.Required})
			seen[a.Name] = true
		}
	}
	for _, name := range commonAttrNames {
		if !seen[name] {
			s.Attributes = append(s.Attributes, hcl.AttributeSchema{Name: name})
		}
	}
	return s
}

func (d *decoder) decodeService(blk *hcl.Block) {
	factoryName, name := blk.Labels[0], blk.Labels[1]
	svc := &Service{
		Name:     name,
		Factory:  factoryName,
		DefRange: blk.DefRange,
		Limits:   DefaultLimits(),
	}

	switch first, dup := d.services[name]; {
	case strings.TrimSpace(name) == "":
		d.errorf(blk.LabelRanges[1], "Invalid service name",
			"A service needs a name, written as the second label: service %q \"NAME\".", factoryName)
	case dup:
		d.errorf(blk.LabelRanges[1], "Duplicate service name",
			"A service named %q was already declared at %s; service names must be unique in a file.", name, first)
	default:
		d.services[name] = blk.DefRange
	}

	spec, known := framework.Lookup(factoryName)
	var content *hcl.BodyContent
	var diags hcl.Diagnostics
	if known {
		content, diags = blk.Body.Content(serviceSchema(spec))
	} else {
		d.unknownFactory(blk)
		// The factory's attributes are unknown: leave them alone, but
		// still check everything else.
		content, _, diags = blk.Body.PartialContent(serviceSchema(nil))
	}
	d.diags = append(d.diags, diags...)

	d.decodeLimits(svc, content)
	d.decodeEndpoints(svc, blk, content)
	if known {
		svc.Spec = spec
		d.checkEndpointKinds(svc, spec, content)
		d.decodeFactory(svc, blk, content)
		if spec.DatagramGuards && svc.Limits.RateLimitPerIP == nil && svc.hasDatagrams() {
			r := DefaultDatagramRateLimitPerIP
			svc.Limits.RateLimitPerIP = &r
			svc.Limits.RateLimitPerIPDatagramsOnly = true
		}
	}
	svc.Fingerprint = d.fingerprint(svc)
	svc.CertFingerprint = d.certFingerprint(svc)
	d.file.Services = append(d.file.Services, svc)
}

// DefaultDatagramRateLimitPerIP applies to the udp endpoints of factories
// with DatagramGuards (the built-in services) when the service sets no
// rate_limit_per_ip: a spoofed source cannot turn them into an amplifier.
// It limits datagrams only: the service's connections stay unlimited.
var DefaultDatagramRateLimitPerIP = Rate{Rate: 10, Burst: 20}

func (s *Service) hasDatagrams() bool {
	for _, ep := range s.Endpoints {
		if ep.Kind == endpoint.KindUDP {
			return true
		}
	}
	return false
}

// checkEndpointKinds reports endpoints of a family the factory does not
// serve (a udp endpoint of a stream-only factory, or the reverse).
func (d *decoder) checkEndpointKinds(svc *Service, spec *framework.Spec, content *hcl.BodyContent) {
	for _, eb := range content.Blocks {
		if eb.Type != blockEndpoint || len(eb.Labels) == 0 {
			continue
		}
		kind := eb.Labels[0]
		if _, ok := endpointSchemas[kind]; !ok {
			continue
		}
		if endpoint.IsStream(kind) && !spec.Serves.HasStreams() {
			d.errorf(eb.LabelRanges[0], "Endpoint kind not served",
				"The %s factory serves datagrams only (udp endpoints), so service %q cannot have a %s endpoint.", spec.Name, svc.Name, kind)
		}
		if !endpoint.IsStream(kind) && !spec.Serves.HasDatagrams() {
			d.errorf(eb.LabelRanges[0], "Endpoint kind not served",
				"The %s factory serves streams only (tcp, tls and unix endpoints), so service %q cannot have a udp endpoint.", spec.Name, svc.Name)
		}
	}
}

func (d *decoder) unknownFactory(blk *hcl.Block) {
	var names []string
	for _, s := range framework.Specs() {
		names = append(names, s.Name)
	}
	given := blk.Labels[0]
	hint := didYouMean(given, names)
	if hint == "" {
		hint = " The registered factories are " + quotedList(names) + "."
	}
	d.errorf(blk.LabelRanges[0], "Unknown factory", "There is no factory named %q.%s", given, hint)
}

// sentence ends s with a full stop unless it already ends a sentence.
func sentence(s string) string {
	s = strings.TrimSpace(s)
	if s == "" || strings.ContainsAny(s[len(s)-1:], ".!?") {
		return s
	}
	return s + "."
}

func (d *decoder) decodeLimits(svc *Service, content *hcl.BodyContent) {
	l := &svc.Limits
	if a := content.Attributes[attrMaxConnections]; a != nil {
		if v, ok := d.whole(a, 0, math.MaxInt); ok {
			l.MaxConnections = v
		}
	}
	if a := content.Attributes[attrMaxConnectionsPerUID]; a != nil {
		if v, ok := d.whole(a, 0, math.MaxInt); ok {
			l.MaxConnectionsPerUID = v
		}
	}
	if a := content.Attributes[attrMaxConnectionsPerIP]; a != nil {
		if v, ok := d.whole(a, 0, math.MaxInt); ok {
			l.MaxConnectionsPerIP = v
		}
	}
	if a := content.Attributes[attrIdleTimeout]; a != nil {
		if v, ok := d.duration(a); ok {
			l.IdleTimeout = v
		}
	}
	if a := content.Attributes[attrAllow]; a != nil {
		l.Allow = d.prefixes(a)
	}
	if a := content.Attributes[attrDeny]; a != nil {
		l.Deny = d.prefixes(a)
	}
	if a := content.Attributes[attrIPv6Prefix]; a != nil {
		if v, ok := d.whole(a, 0, 128); ok {
			l.IPv6Prefix = v
		}
	}
	if a := content.Attributes[attrAccessLog]; a != nil {
		if v, ok := d.boolean(a); ok {
			svc.AccessLog = v
		}
	}
	if a := content.Attributes[attrMaxPendingOutput]; a != nil {
		if v, ok := d.whole(a, MinMaxPendingOutput, math.MaxInt); ok {
			l.MaxPendingOutput = v
		}
	}

	seen := map[string]hcl.Range{}
	for _, blk := range content.Blocks {
		if blk.Type != blockRateLimit && blk.Type != blockRateLimitPerIP {
			continue
		}
		if first, dup := seen[blk.Type]; dup {
			d.errorf(blk.DefRange, "Duplicate "+blk.Type+" block",
				"A %s block was already declared at %s; write one at most.", blk.Type, first)
			continue
		}
		seen[blk.Type] = blk.DefRange
		r := d.decodeRate(blk)
		if blk.Type == blockRateLimit {
			l.RateLimit = r
		} else {
			l.RateLimitPerIP = r
		}
	}
}

var rateSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "rate", Required: true},
		{Name: "burst"},
	},
}

// decodeRate decodes a rate_limit or rate_limit_per_ip block. rate is new
// connections per second (> 0, may be fractional); burst (>= 1, whole)
// defaults to rate rounded up.
func (d *decoder) decodeRate(blk *hcl.Block) *Rate {
	content, diags := blk.Body.Content(rateSchema)
	d.diags = append(d.diags, diags...)
	ok := !diags.HasErrors()
	r := &Rate{}
	if a := content.Attributes["rate"]; a != nil {
		f, good := d.number(a)
		if good {
			r.Rate, _ = f.Float64()
			if f.Sign() <= 0 || math.IsInf(r.Rate, 0) || r.Rate == 0 {
				d.errorf(a.Expr.Range(), "Value out of range",
					"rate must be a number of new connections per second above 0 (it may be fractional, such as 0.5), not %s.", numberText(f))
				good = false
			}
		}
		ok = ok && good
	}
	burstSet := false
	if a := content.Attributes["burst"]; a != nil {
		n := len(d.diags)
		v, good := d.whole(a, 1, math.MaxInt32)
		if good || len(d.diags) > n { // otherwise null: unset, as elsewhere
			burstSet = true
			r.Burst = v
			ok = ok && good
		}
	}
	if !burstSet && ok {
		r.Burst = int(min(max(math.Ceil(r.Rate), 1), math.MaxInt32))
	}
	if !ok {
		return nil
	}
	return r
}

// prefixes evaluates a list of CIDR prefixes; a bare address stands for
// itself (/32 or /128).
func (d *decoder) prefixes(attr *hcl.Attribute) []netip.Prefix {
	list, ranges, ok := d.strings(attr)
	if !ok {
		return nil
	}
	var out []netip.Prefix
	for i, s := range list {
		p, err := parsePrefix(s)
		if err != nil {
			d.errorf(ranges[i], "Invalid CIDR",
				"%q in %s is not an address range: %s. Write CIDR notation such as \"10.0.0.0/8\" or \"2001:db8::/32\", or a single address.",
				s, attr.Name, err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// parsePrefix parses "ADDR/BITS" or a bare "ADDR". Host bits are cleared,
// and an IPv4-mapped IPv6 range is turned into its IPv4 range, so that the
// prefix matches peers however the listener reports them.
func parsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, trimNetipError(err)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, trimNetipError(err)
		}
		if a.Zone() != "" {
			return p, errors.New("an address with a zone cannot be matched")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			// Masked, it would be an IPv6 range (::/8 for
			// ::ffff:10.0.0.0/8), holding none of the IPv4 addresses
			// it names.
			return p, fmt.Errorf("an IPv4-mapped range is 96 bits longer than its IPv4 one; for IPv4 addresses write %s", netip.PrefixFrom(a.Unmap(), min(p.Bits(), 32)).Masked())
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// trimNetipError drops the quoted input netip repeats in its messages.
func trimNetipError(err error) error {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return errors.New(msg)
}
