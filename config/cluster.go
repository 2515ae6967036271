package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/superd-dev/superd/endpoint"
)

// Cluster is the top-level cluster block: how this superd joins NATS, which
// carries the rooms of services with cluster = true (SPEC section 13).
type Cluster struct {
	// Node names this superd in the cluster (default: the host name).
	// Unique per node: it is the embedded server's name and is recorded
	// with every name a node claims.
	Node string
	// Embedded is the embedded NATS server (the default); nil when
	// NATSURLs is set.
	Embedded *EmbeddedNATS
	// NATSURLs are the servers of an existing NATS deployment; empty with
	// an embedded server.
	NATSURLs []string
	// DefRange is the block header's range, for diagnostics.
	DefRange hcl.Range
}

// EmbeddedNATS is the nats block: the NATS server superd runs in-process.
type EmbeddedNATS struct {
	// Listen is its client address; "" (the default) accepts no client
	// but superd itself (in-process).
	Listen string
	// ClusterListen is its route address, where the other nodes' servers
	// connect; "" (the default): none, a cluster of one.
	ClusterListen string
	// Routes are the other nodes' route addresses (nats://HOST:PORT).
	Routes []string
	// StoreDir is JetStream's storage folder (resolved against the
	// configuration's folder). Default: superd-nats-NODE in the system's
	// temporary folder.
	StoreDir string
}

// Same reports whether c and o configure the same cluster (both nil
// included): a running superd cannot change its cluster on reload.
func (c *Cluster) Same(o *Cluster) bool {
	if c == nil || o == nil {
		return c == o
	}
	if c.Node != o.Node || !slices.Equal(c.NATSURLs, o.NATSURLs) || (c.Embedded == nil) != (o.Embedded == nil) {
		return false
	}
	if c.Embedded == nil {
		return true
	}
	a, b := c.Embedded, o.Embedded
	return a.Listen == b.Listen && a.ClusterListen == b.ClusterListen && a.StoreDir == b.StoreDir && slices.Equal(a.Routes, b.Routes)
}

var clusterSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "node"},
		{Name: "nats_urls"},
	},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "nats"},
	},
}

var natsSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "listen"},
		{Name: "cluster_listen"},
		{Name: "routes"},
		{Name: "store_dir"},
	},
}

// validNode: what NATS accepts as a server name and reads well in logs.
var validNode = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// decodeClusters decodes the cluster block (at most one) before the
// services, which need to know whether there is one.
func (d *decoder) decodeClusters(content *hcl.BodyContent) {
	for _, blk := range content.Blocks {
		if blk.Type != "cluster" {
			continue
		}
		if d.file.Cluster != nil {
			d.errorf(blk.DefRange, "Duplicate cluster block",
				"A cluster block was already declared at %s; write one at most.", d.file.Cluster.DefRange)
			continue
		}
		d.file.Cluster = d.decodeCluster(blk)
	}
}

func (d *decoder) decodeCluster(blk *hcl.Block) *Cluster {
	content, diags := blk.Body.Content(clusterSchema)
	d.diags = append(d.diags, diags...)
	c := &Cluster{DefRange: blk.DefRange}

	if a := content.Attributes["node"]; a != nil {
		if s, ok := d.str(a); ok {
			if !validNode.MatchString(s) {
				d.errorf(a.Expr.Range(), "Invalid node name",
					"node must be 1 to 64 letters, digits, dots, hyphens or underscores, starting with a letter or digit, not %q.", s)
			}
			c.Node = s
		}
	} else {
		host, err := os.Hostname()
		switch {
		case err != nil:
			d.errorf(blk.DefRange, "No node name", "The host name is unknown (%s); set node in the cluster block.", err)
		case !validNode.MatchString(host):
			d.errorf(blk.DefRange, "No node name",
				"The host name %q cannot name a node (1 to 64 letters, digits, dots, hyphens or underscores); set node in the cluster block.", host)
		}
		c.Node = host
	}

	var natsBlk *hcl.Block
	for _, b := range content.Blocks {
		if natsBlk != nil {
			d.errorf(b.DefRange, "Duplicate nats block", "A nats block was already declared at %s; write one at most.", natsBlk.DefRange)
			continue
		}
		natsBlk = b
	}
	if a := content.Attributes["nats_urls"]; a != nil {
		if natsBlk != nil {
			d.errorf(a.NameRange, "Both nats and nats_urls",
				"nats_urls connects to an existing NATS deployment, the nats block (at %s) configures the embedded server: write one or the other.", natsBlk.DefRange)
			return c
		}
		c.NATSURLs = d.natsURLs(a)
		return c
	}
	c.Embedded = &EmbeddedNATS{StoreDir: filepath.Join(os.TempDir(), "superd-nats-"+c.Node)}
	if natsBlk != nil {
		d.decodeNATS(natsBlk, c.Embedded)
	}
	return c
}

func (d *decoder) decodeNATS(blk *hcl.Block, e *EmbeddedNATS) {
	content, diags := blk.Body.Content(natsSchema)
	d.diags = append(d.diags, diags...)
	addr := func(name, what string) (string, *hcl.Attribute) {
		a := content.Attributes[name]
		if a == nil {
			return "", nil
		}
		s, ok := d.str(a)
		if !ok || s == "" {
			return "", a
		}
		if addr, good := d.checkAddress(a, endpoint.KindTCP, s); good {
			d.claim(socket{addr: addr, written: s, desc: fmt.Sprintf("the embedded NATS server's %s %q", what, s), rng: a.Expr.Range()})
		}
		return s, a
	}
	e.Listen, _ = addr("listen", "client port")
	e.ClusterListen, _ = addr("cluster_listen", "route port")
	if a := content.Attributes["routes"]; a != nil {
		list, ranges, ok := d.strings(a)
		if ok {
			for i, s := range list {
				if err := checkNATSURL(s, []string{"nats", "nats-route"}, true); err != nil {
					d.errorf(ranges[i], "Invalid route", "%q in routes %s; write the route address of another node as nats://HOST:PORT.", s, err)
					continue
				}
				e.Routes = append(e.Routes, s)
			}
			if len(list) > 0 && e.ClusterListen == "" {
				d.errorf(a.NameRange, "Routes without cluster_listen",
					"The other nodes' servers connect back to this one's route port: set cluster_listen as well.")
			}
		}
	}
	if a := content.Attributes["store_dir"]; a != nil {
		if s, ok := d.str(a); ok {
			if s == "" {
				d.errorf(a.Expr.Range(), "Invalid store_dir", "store_dir must be a folder (JetStream's storage), not empty.")
			} else {
				e.StoreDir = resolvePath(d.file.Dir, s)
			}
		}
	}
}

func (d *decoder) natsURLs(a *hcl.Attribute) []string {
	list, ranges, ok := d.strings(a)
	if !ok {
		return nil
	}
	if len(list) == 0 {
		d.errorf(a.Expr.Range(), "No NATS server", "nats_urls must name at least one server, such as \"nats://127.0.0.1:4222\".")
		return nil
	}
	var out []string
	for i, s := range list {
		if err := checkNATSURL(s, []string{"nats", "tls", "ws", "wss"}, false); err != nil {
			d.errorf(ranges[i], "Invalid NATS URL", "%q in nats_urls %s; write nats://HOST:PORT (or tls://, ws://, wss://).", s, err)
			continue
		}
		out = append(out, s)
	}
	return out
}

// checkNATSURL checks SCHEME://[USER[:PASSWORD]@]HOST[:PORT] with one of
// schemes; needPort requires the port.
func checkNATSURL(s string, schemes []string, needPort bool) error {
	if !strings.Contains(s, "://") {
		return fmt.Errorf("has no scheme")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("is not a URL (%s)", trimURLError(err))
	}
	if !slices.Contains(schemes, u.Scheme) {
		return fmt.Errorf("has the scheme %q, not %s", u.Scheme, strings.Join(schemes, ", "))
	}
	if u.Hostname() == "" {
		return fmt.Errorf("has no host")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("has a path, query or fragment")
	}
	port := u.Port()
	if port == "" {
		if needPort {
			return fmt.Errorf("has no port")
		}
		return nil
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("has the port %q, not a number from 1 to 65535", port)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return fmt.Errorf("has a bad host and port")
	}
	return nil
}

func trimURLError(err error) string {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err.Error()
	}
	return err.Error()
}
