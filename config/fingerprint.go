package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"reflect"
	"slices"

	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// fingerprint returns a digest of everything that configures svc: its
// factory, the evaluated values of the factory's attributes, the folder
// relative paths resolve against, the limits and the endpoints, including
// the contents of client CA files, but not the contents of certificate and
// key files: certFingerprint holds those (see Service.CertFingerprint). The
// service's name is not part of it: reload pairs services by name first.
func (d *decoder) fingerprint(svc *Service) string {
	h := sha256.New()
	field(h, "factory", svc.Factory)
	field(h, "dir", d.file.Dir)
	if cfg := svc.FactoryConfig; cfg != nil {
		values := map[string]cty.Value{}
		configValues(svc.Spec.Attributes(), reflect.ValueOf(cfg).Elem(), "", values)
		names := make([]string, 0, len(values))
		for n := range values {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			v := values[n]
			js, err := ctyjson.Marshal(v, cty.DynamicPseudoType)
			if err != nil {
				field(h, "attr."+n, v.GoString())
			} else {
				field(h, "attr."+n, string(js))
			}
		}
	}
	l := svc.Limits
	field(h, "limits", fmt.Sprintf("%d %d %d %v %v %d %d %d",
		l.MaxConnections, l.MaxConnectionsPerIP, l.IdleTimeout, l.Allow, l.Deny, l.IPv6Prefix, l.MaxPendingOutput, l.MaxConnectionsPerUID))
	field(h, "access_log", fmt.Sprint(svc.AccessLog))
	field(h, "rate_limit", rateString(l.RateLimit))
	field(h, "rate_limit_per_ip", rateString(l.RateLimitPerIP))
	if l.RateLimitPerIPDatagramsOnly {
		field(h, "rate_limit_per_ip.datagrams_only", "true")
	}
	for i, ep := range svc.Endpoints {
		// Pointers would print as addresses, and lists of strings
		// ambiguously: their contents go apart, quoted.
		plain := ep
		plain.Proxy, plain.Certificates, plain.ALPN = nil, nil, nil
		field(h, fmt.Sprintf("endpoint.%d", i), fmt.Sprintf("%+v", plain))
		if ep.Proxy != nil {
			field(h, fmt.Sprintf("endpoint.%d.proxy", i), fmt.Sprintf("%+v", *ep.Proxy))
		}
		for j, c := range ep.Certificates {
			field(h, fmt.Sprintf("endpoint.%d.certificate.%d", i, j), fmt.Sprintf("%q %q", c.CertFile, c.KeyFile))
		}
		field(h, fmt.Sprintf("endpoint.%d.alpn", i), fmt.Sprintf("%q", ep.ALPN))
		if p := ep.ClientCAFile; p != "" {
			field(h, "sha256:"+p, d.fileSums[p])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// certFingerprint returns a digest of the contents of the certificate and
// key files of svc's tls endpoints, in order; "" when it has none.
func (d *decoder) certFingerprint(svc *Service) string {
	h := sha256.New()
	n := 0
	for i, ep := range svc.Endpoints {
		for j, c := range ep.CertificateFiles() {
			field(h, fmt.Sprintf("endpoint.%d.certificate.%d", i, j),
				fmt.Sprintf("%s %s", d.fileSums[c.CertFile], d.fileSums[c.KeyFile]))
			n++
		}
	}
	if n == 0 {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// field writes one unambiguous name=value line.
func field(h hash.Hash, name, value string) {
	fmt.Fprintf(h, "%q=%q\n", name, value)
}

func rateString(r *Rate) string {
	if r == nil {
		return "none"
	}
	return fmt.Sprintf("%g/%d", r.Rate, r.Burst)
}
