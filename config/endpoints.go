package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/superd-dev/superd/endpoint"
	"github.com/superd-dev/superd/internal/osuser"
)

var endpointKinds = []string{endpoint.KindTCP, endpoint.KindTLS, endpoint.KindUnix, endpoint.KindUDP}

var endpointSchemas = map[string]*hcl.BodySchema{
	endpoint.KindTCP: {Attributes: []hcl.AttributeSchema{
		{Name: "address", Required: true},
		{Name: "name"},
		{Name: "backlog"},
		{Name: "nodelay"},
		{Name: "keepalive"},
		{Name: "keepalive_interval"},
		{Name: "keepalive_count"},
		{Name: "reuse_port"},
		{Name: "v6only"},
	}, Blocks: []hcl.BlockHeaderSchema{{Type: "proxy_protocol"}}},
	endpoint.KindTLS: {Attributes: []hcl.AttributeSchema{
		{Name: "address", Required: true},
		{Name: "name"},
		{Name: "backlog"},
		{Name: "nodelay"},
		{Name: "keepalive"},
		{Name: "keepalive_interval"},
		{Name: "keepalive_count"},
		{Name: "reuse_port"},
		{Name: "v6only"},
		{Name: "cert_file"},
		{Name: "key_file"},
		{Name: "client_ca_file"},
		{Name: "min_version"},
		{Name: "self_signed"},
		{Name: "alpn"},
	}, Blocks: []hcl.BlockHeaderSchema{{Type: "proxy_protocol"}, {Type: "certificate"}}},
	endpoint.KindUnix: {Attributes: []hcl.AttributeSchema{
		{Name: "path", Required: true},
		{Name: "name"},
		{Name: "mode"},
		{Name: "owner"},
		{Name: "group"},
	}},
	endpoint.KindUDP: {Attributes: []hcl.AttributeSchema{
		{Name: "address", Required: true},
		{Name: "name"},
		{Name: "reuse_port"},
		{Name: "read_buffer"},
		{Name: "write_buffer"},
	}},
}

// maxSocketBuffer bounds read_buffer and write_buffer (the kernel caps
// them lower anyway, at net.core.rmem_max and wmem_max).
const maxSocketBuffer = 1 << 30

func (d *decoder) decodeEndpoints(svc *Service, blk *hcl.Block, content *hcl.BodyContent) {
	n := 0
	for _, eb := range content.Blocks {
		if eb.Type != blockEndpoint {
			continue
		}
		n++
		if ep, ok := d.decodeEndpoint(svc, eb); ok {
			svc.Endpoints = append(svc.Endpoints, ep)
		}
	}
	if n == 0 && !hasEndpointBlock(blk.Body) {
		d.errorf(blk.DefRange, "Missing endpoint",
			"Service %q has no endpoint; add at least one, such as endpoint \"tcp\" { address = \"127.0.0.1:7007\" }.", svc.Name)
	}
}

// hasEndpointBlock reports whether body holds an endpoint block, even one
// HCL dropped for its labels, or a block whose misspelt type HCL takes
// for endpoint ("Did you mean"): both are reported already, and the
// endpoint is not missing as well.
func hasEndpointBlock(body hcl.Body) bool {
	if sb, ok := body.(*hclsyntax.Body); ok {
		for _, b := range sb.Blocks {
			if b.Type == blockEndpoint || suggestion(b.Type, []string{blockEndpoint}) != "" {
				return true
			}
		}
	}
	return false
}

func (d *decoder) decodeEndpoint(svc *Service, blk *hcl.Block) (endpoint.Config, bool) {
	kind := blk.Labels[0]
	schema, known := endpointSchemas[kind]
	if !known {
		d.errorf(blk.LabelRanges[0], "Unknown endpoint kind", "There is no endpoint kind %q.%s The kinds are %s.",
			kind, didYouMean(kind, endpointKinds), quotedList(endpointKinds))
		return endpoint.Config{}, false
	}
	content, diags := blk.Body.Content(schema)
	d.diags = append(d.diags, diags...)

	ep := endpoint.Config{Kind: kind}
	if a := content.Attributes["address"]; a != nil { // tcp, tls, udp
		if addr, good := d.str(a); good {
			ep.Label = kind + ":" + addr
			if ep.Addr, good = d.checkAddress(a, kind, addr); good {
				d.claim(socket{addr: ep.Addr, written: addr, desc: endpointDesc(ep.Label, svc.Name), rng: a.Expr.Range()})
			}
		}
	}
	if kind == endpoint.KindTCP || kind == endpoint.KindTLS {
		d.decodeTCPOptions(&ep, content)
	}
	switch kind {
	case endpoint.KindTLS:
		d.decodeTLS(&ep, blk, content)
	case endpoint.KindUDP:
		if a := content.Attributes["reuse_port"]; a != nil {
			ep.ReusePort, _ = d.boolean(a)
		}
		if a := content.Attributes["read_buffer"]; a != nil {
			ep.ReadBuffer, _ = d.whole(a, 1024, maxSocketBuffer)
		}
		if a := content.Attributes["write_buffer"]; a != nil {
			ep.WriteBuffer, _ = d.whole(a, 1024, maxSocketBuffer)
		}
	case endpoint.KindUnix:
		d.decodeUnix(&ep, svc, content)
	}
	for _, pb := range content.Blocks {
		if pb.Type != "proxy_protocol" {
			continue
		}
		if ep.Proxy != nil {
			d.errorf(pb.DefRange, "Duplicate proxy_protocol block", "An endpoint takes one proxy_protocol block at most.")
			continue
		}
		ep.Proxy = d.decodeProxyProtocol(pb)
	}
	if a := content.Attributes["name"]; a != nil {
		if n, good := d.str(a); good {
			if !validFDName(n) {
				d.errorf(a.Expr.Range(), "Invalid endpoint name",
					"%q cannot be a socket name: systemd's FileDescriptorName= takes 1 to 255 printable ASCII characters without spaces or ':'.", n)
			}
			ep.Name = n
		}
	}
	// Whatever went wrong above was reported, and fails the whole file.
	return ep, true
}

// decodeUnix decodes a unix endpoint: its path (a file, or "@NAME" for a
// Linux abstract socket), and for a file its mode, owner and group.
func (d *decoder) decodeUnix(ep *endpoint.Config, svc *Service, content *hcl.BodyContent) {
	written := ""
	if a := content.Attributes["path"]; a != nil {
		if p, good := d.str(a); good {
			written = p
			ep.Label = ep.Kind + ":" + p
			if ep.Addr, good = d.checkSocketPath(a, p); good {
				d.claim(socket{addr: ep.Addr, written: p, desc: endpointDesc(ep.Label, svc.Name), rng: a.Expr.Range()})
			}
		}
	}
	if endpoint.IsAbstract(written) {
		// No file: nothing the file attributes could apply to.
		for _, name := range []string{"mode", "owner", "group"} {
			if a := content.Attributes[name]; a != nil {
				d.errorf(a.NameRange, "No file for "+name,
					"path %q is a Linux abstract socket, which has no file, so no %s; remove %s, or give a path in the file system. "+
						"Anyone on the host (in its network namespace) may connect to an abstract socket: check who with the peer's credentials (max_connections_per_uid, exec's env).",
					written, name, name)
			}
		}
		return
	}
	ep.Mode = endpoint.DefaultUnixMode
	if a := content.Attributes["mode"]; a != nil {
		if s, good := d.str(a); good {
			if m, err := parseMode(s); err != nil {
				d.errorf(a.Expr.Range(), "Invalid file mode",
					"mode %q is not an octal file mode (%s); write it as a string such as \"0660\".", s, err)
			} else {
				ep.Mode = m
			}
		}
	}
	if a := content.Attributes["owner"]; a != nil {
		if s, good := d.str(a); good {
			if u, err := osuser.LookupUser(s); err != nil || s == "" {
				d.errorf(a.Expr.Range(), "Unknown user",
					"owner %q names no user on this system; give a user name or a numeric uid.", s)
			} else {
				ep.Owner = s
				ep.UID, _ = strconv.Atoi(u.Uid)
			}
		}
	}
	if a := content.Attributes["group"]; a != nil {
		if s, good := d.str(a); good {
			if gid, err := osuser.LookupGroup(s); err != nil || s == "" {
				d.errorf(a.Expr.Range(), "Unknown group",
					"group %q names no group on this system; give a group name or a numeric gid.", s)
			} else {
				ep.Group, ep.GID = s, int(gid)
			}
		}
	}
}

// certificateSchema is a tls endpoint's certificate block.
var certificateSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "cert_file", Required: true},
		{Name: "key_file", Required: true},
	},
}

// decodeTLS fills the TLS part of ep and checks that its files exist, are
// readable and hold a certificate and matching key (or CA certificates).
// The files are read and parsed by endpoint's functions, which the endpoint
// uses at start too: what validate accepts, start accepts.
func (d *decoder) decodeTLS(ep *endpoint.Config, blk *hcl.Block, content *hcl.BodyContent) {
	ep.MinVersion = endpoint.DefaultTLSMinVersion
	if a := content.Attributes["min_version"]; a != nil {
		if s, good := d.str(a); good {
			if v, known := endpoint.ParseTLSVersion(s); known {
				ep.MinVersion = v
			} else {
				d.errorf(a.Expr.Range(), "Invalid TLS version", "min_version must be \"1.2\" or \"1.3\", not %q.", s)
			}
		}
	}
	if a := content.Attributes["self_signed"]; a != nil {
		if v, good := d.boolean(a); good {
			ep.SelfSigned = v
		}
	}
	if a := content.Attributes["alpn"]; a != nil {
		ep.ALPN = d.alpn(a)
	}

	var blocks []*hcl.Block
	for _, b := range content.Blocks {
		if b.Type == "certificate" {
			blocks = append(blocks, b)
		}
	}
	certAttr, keyAttr := content.Attributes["cert_file"], content.Attributes["key_file"]
	single := certAttr != nil || keyAttr != nil
	switch {
	case ep.SelfSigned && (single || len(blocks) > 0):
		d.errorf(content.Attributes["self_signed"].Range, "Conflicting TLS settings",
			"A tls endpoint takes either certificate files (cert_file and key_file, or certificate blocks), or self_signed = true, not both.")
	case single && len(blocks) > 0:
		first := certAttr
		if first == nil {
			first = keyAttr
		}
		d.errorf(blocks[0].DefRange, "Conflicting TLS settings",
			"A tls endpoint takes either cert_file and key_file (one certificate) or certificate blocks (one per certificate, chosen by the client's SNI), not both; %s is set at %s. Move that pair into a certificate block of its own (the first block is the default).",
			first.Name, first.NameRange)
	case ep.SelfSigned, len(blocks) > 0:
	case !single:
		d.errorf(blk.DefRange, "Missing TLS certificate",
			"A tls endpoint needs cert_file and key_file, certificate blocks (certificate { cert_file = \"...\", key_file = \"...\" }, one per certificate, chosen by the client's SNI), or self_signed = true to make a certificate at start (for trying things out).")
	case certAttr == nil:
		d.errorf(blk.DefRange, "Missing cert_file", "A tls endpoint with a key_file needs its cert_file too.")
	case keyAttr == nil:
		d.errorf(blk.DefRange, "Missing key_file", "A tls endpoint with a cert_file needs its key_file too.")
	}

	if single {
		var f endpoint.CertificateFiles
		d.keyPair(&f, certAttr, keyAttr)
		ep.CertFile, ep.KeyFile = f.CertFile, f.KeyFile
	}
	seen := map[string]hcl.Range{} // cert_file paths of the blocks so far
	for _, b := range blocks {
		bc, diags := b.Body.Content(certificateSchema)
		d.diags = append(d.diags, diags...)
		var f endpoint.CertificateFiles
		d.keyPair(&f, bc.Attributes["cert_file"], bc.Attributes["key_file"])
		if a := bc.Attributes["cert_file"]; a != nil && f.CertFile != "" {
			if first, dup := seen[f.CertFile]; dup {
				d.errorf(a.Expr.Range(), "Duplicate certificate block",
					"%s is already the certificate of the block at %s; each certificate block names a different certificate.", f.CertFile, first)
			} else {
				seen[f.CertFile] = b.DefRange
			}
		}
		ep.Certificates = append(ep.Certificates, f)
	}

	if a := content.Attributes["client_ca_file"]; a != nil {
		var caPEM []byte
		ep.ClientCAFile, caPEM = d.tlsFile(a)
		if caPEM != nil {
			switch _, err := endpoint.ParseCertPool(caPEM); {
			case errors.Is(err, endpoint.ErrNoCertificate):
				d.errorf(a.Range, "Invalid client CA file", "%s holds no PEM certificate.", ep.ClientCAFile)
			case err != nil:
				d.errorf(a.Range, "Invalid client CA file", "%s: %s.", ep.ClientCAFile, err)
			}
		}
	}
}

// keyPair reads one certificate and its key (either attribute may be
// missing, already reported) into f, and checks that they match.
func (d *decoder) keyPair(f *endpoint.CertificateFiles, certAttr, keyAttr *hcl.Attribute) {
	var certPEM, keyPEM []byte
	if certAttr != nil {
		f.CertFile, certPEM = d.tlsFile(certAttr)
	}
	if keyAttr != nil {
		f.KeyFile, keyPEM = d.tlsFile(keyAttr)
	}
	if certPEM != nil && keyPEM != nil {
		if _, err := endpoint.ParseKeyPair(certPEM, keyPEM); err != nil {
			d.errorf(certAttr.Range, "Invalid TLS certificate or key",
				"%s and %s do not make a certificate and its key: %s.", f.CertFile, f.KeyFile, err)
		}
	}
}

// alpn decodes a tls endpoint's alpn list: protocol names of 1 to 255
// bytes, none twice (see endpoint.CheckALPN).
func (d *decoder) alpn(a *hcl.Attribute) []string {
	protos, ranges, ok := d.strings(a)
	if !ok {
		return nil
	}
	for i, p := range protos {
		if p == "" || len(p) > 255 {
			d.errorf(ranges[i], "Invalid ALPN protocol",
				"An ALPN protocol name is 1 to 255 bytes long, such as \"h2\" or \"http/1.1\"; this one is %d bytes long.", len(p))
			continue
		}
		if j := slices.Index(protos[:i], p); j >= 0 {
			d.errorf(ranges[i], "Duplicate ALPN protocol", "%q is already listed, at %s.", p, ranges[j])
		}
	}
	return protos
}

// tlsFile reads the file an attribute names (resolved against the
// configuration folder). It returns nil data after reporting a problem.
func (d *decoder) tlsFile(attr *hcl.Attribute) (string, []byte) {
	s, ok := d.str(attr)
	if !ok {
		return "", nil
	}
	if s == "" {
		d.errorf(attr.Expr.Range(), "Missing file name", "%s must name a file.", attr.Name)
		return "", nil
	}
	p := resolvePath(d.file.Dir, s)
	data, err := endpoint.ReadTLSFile(p)
	if err != nil {
		// Where the file was looked for matters only for a relative path.
		hint := ""
		if !filepath.IsAbs(s) {
			hint = fmt.Sprintf(" Relative paths resolve against the configuration file's folder, %s.", d.file.Dir)
		}
		d.errorf(attr.Expr.Range(), "Cannot read "+attr.Name, "%s.%s", err, hint)
		return p, nil
	}
	sum := sha256.Sum256(data)
	d.fileSums[p] = hex.EncodeToString(sum[:])
	return p, data
}

// parseMode parses an octal permission string such as "0660" or "0o660".
func parseMode(s string) (fs.FileMode, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	if t == "" {
		return 0, fmt.Errorf("it is empty")
	}
	for _, c := range t {
		if c < '0' || c > '7' {
			return 0, fmt.Errorf("%q is not an octal digit", c)
		}
	}
	m, err := strconv.ParseUint(t, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("permissions go from 0000 to 0777")
	}
	if m == 0 {
		return 0, fmt.Errorf("0000 lets no one connect; give the owner at least, such as \"0600\"")
	}
	return fs.FileMode(m), nil
}

// checkSocketPath checks the path of a unix endpoint (written: as in the
// file) and returns its address, resolved against the configuration folder
// (an abstract socket's "@NAME" is no path, and stays as written).
func (d *decoder) checkSocketPath(attr *hcl.Attribute, written string) (endpoint.Address, bool) {
	path := written
	if path != "" && !endpoint.IsAbstract(written) {
		path = resolvePath(d.file.Dir, written)
	}
	addr, err := endpoint.ParseAddress(endpoint.KindUnix, path)
	switch {
	case errors.Is(err, endpoint.ErrSocketPathTooLong):
		d.errorf(attr.Expr.Range(), "Socket path too long", "%s; use a shorter path.", upperFirst(err.Error()))
	case err != nil:
		d.errorf(attr.Expr.Range(), "Invalid socket path", "%s.", err)
	}
	return addr, err == nil
}

func endpointDesc(label, service string) string {
	return fmt.Sprintf("endpoint %q of service %q", label, service)
}

// socket is a listener claimed by an endpoint (or the metrics server).
type socket struct {
	addr    endpoint.Address
	written string // the address or path as written
	desc    string // `endpoint "tcp:ADDRESS" of service "NAME"`, as written
	rng     hcl.Range
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// claim reports a conflict with any socket claimed earlier, then records s.
// Conflicts are endpoint.Address's: the supervisor shares sockets by the
// same addresses' keys, so what the file may hold and what a reload
// carries over agree.
func (d *decoder) claim(s socket) {
	for _, o := range d.sockets {
		if !o.addr.Conflicts(s.addr) {
			continue
		}
		why := ""
		switch {
		case s.written == o.written:
		case s.addr.Wildcard() || o.addr.Wildcard():
			why = " (an address without a host, 0.0.0.0 or [::] takes its port on every address)"
		case s.addr.Network != endpoint.NetworkUnix:
			why = fmt.Sprintf(" (both are %s)", s.addr)
		}
		d.errorf(s.rng, "Duplicate endpoint address",
			"%s would listen where %s, declared at %s, already does%s; give each one its own address.",
			upperFirst(s.desc), o.desc, o.rng, why)
		break
	}
	d.sockets = append(d.sockets, s)
}

// addressHint follows every diagnostic about a tcp, tls or udp address.
const addressHint = `write "127.0.0.1:7007", "[::1]:7007" (IPv6 in brackets) or ":7007" (every address)`

// checkAddress parses a HOST:PORT address (IPv4, [IPv6], a host name, or no
// host for every address) with a numeric port.
func (d *decoder) checkAddress(attr *hcl.Attribute, kind, addr string) (endpoint.Address, bool) {
	a, err := endpoint.ParseAddress(kind, addr)
	if err != nil {
		d.errorf(attr.Expr.Range(), "Invalid address", "%s; %s.", upperFirst(err.Error()), addressHint)
		return endpoint.Address{}, false
	}
	return a, true
}

// validFDName reports whether s can be a LISTEN_FDNAMES entry.
func validFDName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c > '~' || c == ':' {
			return false
		}
	}
	return true
}

var proxyProtocolSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "trusted", Required: true},
		{Name: "required"},
		{Name: "timeout"},
	},
}

// DefaultProxyHeaderTimeout bounds the wait for a PROXY header.
const DefaultProxyHeaderTimeout = 5 * time.Second

// decodeProxyProtocol decodes an endpoint's proxy_protocol block: the
// peers trusted to send a header (required, non-empty), whether they must
// (default true) and within what time (default 5s).
func (d *decoder) decodeProxyProtocol(blk *hcl.Block) *endpoint.ProxyProtocol {
	content, diags := blk.Body.Content(proxyProtocolSchema)
	d.diags = append(d.diags, diags...)
	pp := &endpoint.ProxyProtocol{Required: true, Timeout: DefaultProxyHeaderTimeout}
	if a := content.Attributes["trusted"]; a != nil {
		n := len(d.diags)
		pp.Trusted = d.prefixes(a)
		if len(pp.Trusted) == 0 && !d.diags[n:].HasErrors() {
			d.errorf(a.Expr.Range(), "No trusted proxies",
				"trusted must name at least one address range allowed to send a PROXY header, such as [\"10.0.0.0/8\"].")
		}
	}
	if a := content.Attributes["required"]; a != nil {
		if v, ok := d.boolean(a); ok {
			pp.Required = v
		}
	}
	if a := content.Attributes["timeout"]; a != nil {
		if v, ok := d.duration(a); ok {
			if v <= 0 {
				d.errorf(a.Expr.Range(), "Invalid timeout", "timeout must be above 0, such as \"5s\".")
			}
			pp.Timeout = v
		}
	}
	return pp
}

// maxBacklog is the most listen(2) takes (older kernels keep 16 bits).
const maxBacklog = 65535

// maxKeepalive is the longest keepalive idle time and interval Linux
// takes (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL): a longer one fails the
// listen.
const maxKeepalive = 32767 * time.Second

// decodeTCPOptions decodes the socket options of a tcp or tls endpoint.
func (d *decoder) decodeTCPOptions(ep *endpoint.Config, content *hcl.BodyContent) {
	o := &ep.TCP
	if a := content.Attributes["backlog"]; a != nil {
		o.Backlog, _ = d.whole(a, 1, maxBacklog)
	}
	if a := content.Attributes["nodelay"]; a != nil {
		if v, ok := d.boolean(a); ok {
			o.Nagle = !v
		}
	}
	if a := content.Attributes["keepalive"]; a != nil {
		if v, ok := d.duration(a); ok {
			o.Keepalive = v
			if v == 0 {
				o.Keepalive = -1 // "0s": none
			} else if v < time.Second || v > maxKeepalive || v%time.Second != 0 {
				d.errorf(a.Expr.Range(), "Invalid keepalive", "keepalive is whole seconds of idle time, from \"1s\" to \"32767s\" (\"0s\" turns keepalive off).")
			}
		}
	}
	if a := content.Attributes["keepalive_interval"]; a != nil {
		if v, ok := d.duration(a); ok {
			if v < time.Second || v > maxKeepalive || v%time.Second != 0 {
				d.errorf(a.Expr.Range(), "Invalid keepalive_interval", "keepalive_interval is whole seconds between probes, from \"1s\" to \"32767s\".")
			}
			o.KeepaliveInterval = v
		}
	}
	if a := content.Attributes["keepalive_count"]; a != nil {
		o.KeepaliveCount, _ = d.whole(a, 1, 127)
	}
	if a := content.Attributes["reuse_port"]; a != nil {
		ep.ReusePort, _ = d.boolean(a)
	}
	if a := content.Attributes["v6only"]; a != nil {
		o.V6Only, _ = d.boolean(a)
		if written := strings.TrimPrefix(ep.Label, ep.Kind+":"); o.V6Only && !strings.HasPrefix(written, "[") {
			d.errorf(a.Expr.Range(), "v6only needs an IPv6 address",
				"v6only keeps IPv4 clients off an IPv6 listener; the address %q is not one (write \"[::]:PORT\").", written)
		}
	}
}
