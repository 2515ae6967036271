package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestClusterBlock(t *testing.T) {
	dir := t.TempDir()
	load := func(t *testing.T, text string) *File {
		t.Helper()
		path := filepath.Join(dir, "superd.hcl")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := Load(path)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		return f
	}

	t.Run("none", func(t *testing.T) {
		f := load(t, `service "testecho" "e" {
  endpoint "tcp" { address = "127.0.0.1:0" }
}
`)
		if f.Cluster != nil {
			t.Fatalf("cluster %+v without a block", f.Cluster)
		}
		if f.Service("e").cluster {
			t.Fatal("the factory was told there is a cluster")
		}
	})

	t.Run("embedded", func(t *testing.T) {
		// After the services: the factories still know there is a cluster.
		f := load(t, `service "testecho" "e" {
  endpoint "tcp" { address = "127.0.0.1:0" }
}
cluster {
  node = "a"
  nats {
    listen         = "127.0.0.1:4222"
    cluster_listen = "127.0.0.1:6222"
    routes         = ["nats://127.0.0.1:6223", "nats-route://127.0.0.1:6224"]
    store_dir      = "nats-store"
  }
}
`)
		c := f.Cluster
		if c == nil || c.Node != "a" || c.NATSURLs != nil || c.Embedded == nil {
			t.Fatalf("cluster %+v", c)
		}
		e := c.Embedded
		if e.Listen != "127.0.0.1:4222" || e.ClusterListen != "127.0.0.1:6222" ||
			!slices.Equal(e.Routes, []string{"nats://127.0.0.1:6223", "nats-route://127.0.0.1:6224"}) ||
			e.StoreDir != filepath.Join(dir, "nats-store") {
			t.Fatalf("nats %+v", e)
		}
		if !f.Service("e").cluster {
			t.Fatal("the factory was not told there is a cluster")
		}
	})

	t.Run("defaults", func(t *testing.T) {
		f := load(t, "cluster {}\n")
		host, _ := os.Hostname()
		c := f.Cluster
		if c.Node != host || c.Embedded == nil || c.Embedded.Listen != "" || c.Embedded.ClusterListen != "" ||
			c.Embedded.StoreDir != filepath.Join(os.TempDir(), "superd-nats-"+host) {
			t.Fatalf("cluster %+v, nats %+v", c, c.Embedded)
		}
	})

	t.Run("nats_urls", func(t *testing.T) {
		f := load(t, `cluster {
  node      = "b-2.example"
  nats_urls = ["nats://nats-1:4222", "tls://user:pw@nats-2", "nats://[::1]:4222"]
}
`)
		c := f.Cluster
		if c.Embedded != nil || len(c.NATSURLs) != 3 || c.Node != "b-2.example" {
			t.Fatalf("cluster %+v", c)
		}
	})

	t.Run("same", func(t *testing.T) {
		a := load(t, "cluster {\n  node = \"a\"\n  nats { cluster_listen = \"127.0.0.1:6222\" }\n}\n").Cluster
		b := load(t, "# a comment\ncluster {\n  node = \"a\"\n\n  nats { cluster_listen = \"127.0.0.1:6222\" }\n}\n").Cluster
		c := load(t, "cluster {\n  node = \"a\"\n  nats { cluster_listen = \"127.0.0.1:6223\" }\n}\n").Cluster
		d := load(t, "cluster {\n  node = \"a\"\n  nats_urls = [\"nats://x:1\"]\n}\n").Cluster
		var none *Cluster
		if !a.Same(b) || a.Same(c) || a.Same(d) || a.Same(none) || none.Same(a) || !none.Same(nil) {
			t.Fatal("Same is wrong")
		}
	})
}

func TestClusterInvalid(t *testing.T) {
	tests := []struct {
		name string
		hcl  string
		want []wantDiag
	}{
		{
			name: "both nats and nats_urls",
			hcl: `cluster {
  node = "a"
  nats { listen = "127.0.0.1:4222" }
  nats_urls = ["nats://127.0.0.1:4222"]
}
`,
			want: []wantDiag{{"4,3-12", "Both nats and nats_urls", "write one or the other"}},
		},
		{
			name: "two cluster blocks",
			hcl: `cluster { node = "a" }
cluster { node = "b" }
`,
			want: []wantDiag{{"2,1-8", "Duplicate cluster block", "write one at most"}},
		},
		{
			name: "two nats blocks",
			hcl: `cluster {
  node = "a"
  nats {}
  nats {}
}
`,
			want: []wantDiag{{"4,3-7", "Duplicate nats block", ""}},
		},
		{
			name: "bad node",
			hcl: `cluster { node = "a b" }
`,
			want: []wantDiag{{"1,18-23", "Invalid node name", `not "a b"`}},
		},
		{
			name: "bad URLs",
			hcl: `cluster {
  node      = "a"
  nats_urls = ["nats://ok:4222", "http://x:1", "nats://:4222", "nats://x:99999", "nats://x:1/path", "127.0.0.1:4222"]
}
`,
			want: []wantDiag{
				{"3,34-46", "Invalid NATS URL", `has the scheme "http"`},
				{"3,48-62", "Invalid NATS URL", "has no host"},
				{"3,64-80", "Invalid NATS URL", "99999"},
				{"3,82-99", "Invalid NATS URL", "path"},
				{"3,101-117", "Invalid NATS URL", "no scheme"},
			},
		},
		{
			name: "empty nats_urls",
			hcl: `cluster {
  node      = "a"
  nats_urls = []
}
`,
			want: []wantDiag{{"3,15-17", "No NATS server", ""}},
		},
		{
			name: "bad addresses and routes",
			hcl: `cluster {
  node = "a"
  nats {
    listen         = "localhost"
    cluster_listen = "127.0.0.1:6222"
    routes         = ["nats://127.0.0.1", "tls://127.0.0.1:6223"]
    store_dir      = ""
  }
}
`,
			want: []wantDiag{
				{"4,22-33", "Invalid address", "not HOST:PORT"},
				{"6,23-41", "Invalid route", "has no port"},
				{"6,43-65", "Invalid route", `scheme "tls"`},
				{"7,22-24", "Invalid store_dir", ""},
			},
		},
		{
			name: "routes without cluster_listen",
			hcl: `cluster {
  node = "a"
  nats {
    routes = ["nats://127.0.0.1:6223"]
  }
}
`,
			want: []wantDiag{{"4,5-11", "Routes without cluster_listen", "set cluster_listen"}},
		},
		{
			name: "a port taken by a service",
			hcl: `cluster {
  node = "a"
  nats { listen = "127.0.0.1:4222" }
}
service "testecho" "e" {
  endpoint "tcp" { address = "127.0.0.1:4222" }
}
`,
			want: []wantDiag{{"6,30-46", "Duplicate endpoint address", "the embedded NATS server's client port"}},
		},
		{
			name: "unknown attribute",
			hcl: `cluster {
  node = "a"
  nats { cluster_listn = "127.0.0.1:6222" }
}
`,
			want: []wantDiag{{"3,10-23", "Unsupported argument", `Did you mean "cluster_listen"?`}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"superd.hcl": tt.hcl})
			path := filepath.Join(dir, "superd.hcl")
			f, err := Load(path)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", f)
			}
			out := diagText(t, err)
			lines := strings.Split(out, "\n")
			headers := 0
			for _, l := range lines {
				if strings.HasPrefix(l, path+":") {
					headers++
				}
			}
			if headers != len(tt.want) {
				t.Errorf("%d diagnostics, want %d:\n%s", headers, len(tt.want), out)
			}
			for _, w := range tt.want {
				found := false
				for _, l := range lines {
					if strings.HasPrefix(l, path+":"+w.pos+": "+w.summary) && strings.Contains(l, w.detail) {
						found = true
						break
					}
				}
				if !found {
					t.Errorf("no line starting %q and holding %q in:\n%s", path+":"+w.pos+": "+w.summary, w.detail, out)
				}
			}
		})
	}
}
