package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/framework"
)

// Test factories. config imports no service package, so the tests register
// their own, under names no real service uses.
func init() {
	framework.Register(framework.Spec{
		Name:        "testfactory",
		Description: "A factory for config's tests.",
		Config:      testConfig{Greeting: "hello", Repeat: 1},
		New: framework.Typed(func(_ *framework.Env, c *testConfig) (framework.Factory, error) {
			if c.Repeat > 10 {
				return nil, framework.Errorf(&c.Repeat, "repeat must be a whole number up to 10")
			}
			if c.Greeting == "fail" {
				return nil, errors.New("greeting says fail")
			}
			return framework.ForProtocol(func() framework.Protocol { return nil }), nil
		}),
	})
	framework.Register(framework.Spec{
		Name:        "testneeds",
		Description: "A test factory with a required attribute and a block.",
		Config:      needsConfig{},
		New: framework.Typed(func(_ *framework.Env, c *needsConfig) (framework.Factory, error) {
			if c.Opts != nil && c.Opts.Name == "bad" {
				return nil, framework.Errorf(&c.Opts.Name, "%q is a bad name", "bad")
			}
			return framework.ForProtocol(func() framework.Protocol { return nil }), nil
		}),
	})
	framework.Register(framework.Spec{
		Name:        "testecho",
		Description: "A test factory without attributes.",
		New: func(*framework.Env, any) (framework.Factory, error) {
			return framework.ForProtocol(func() framework.Protocol { return nil }), nil
		},
	})
}

// testConfig is testfactory's configuration.
type testConfig struct {
	Greeting string   `hcl:"greeting,optional"`
	Repeat   int      `hcl:"repeat,optional" min:"0"`
	Tags     []string `hcl:"tags,optional"`
}

// needsConfig is testneeds' configuration: a required attribute and a
// block.
type needsConfig struct {
	Target string `hcl:"target"`
	Opts   *struct {
		Name   string         `hcl:"name,optional"`
		Verify bool           `hcl:"verify,optional"`
		File   framework.Path `hcl:"file,optional"`
	} `hcl:"opts,block"`
}

// writeFiles writes name -> content into a new temporary folder and returns
// the folder.
func writeFiles(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// certPair returns a PEM certificate and its PEM key for name.
func certPair(t testing.TB, name string) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

// diagText returns what Write prints for err, failing unless err is a
// *DiagnosticsError whose every diagnostic has a position.
func diagText(t testing.TB, err error) string {
	t.Helper()
	var de *DiagnosticsError
	if !errors.As(err, &de) {
		t.Fatalf("error is %T (%v), want *DiagnosticsError", err, err)
	}
	if len(de.Diagnostics()) == 0 {
		t.Fatal("DiagnosticsError without diagnostics")
	}
	for _, d := range de.Diagnostics() {
		if d.Subject == nil || d.Subject.Filename == "" || d.Subject.Start.Line < 1 {
			t.Fatalf("diagnostic without position: %v", d)
		}
	}
	var b strings.Builder
	if err := de.Write(&b); err != nil {
		t.Fatal(err)
	}
	if got := de.Error(); got != strings.TrimSuffix(b.String(), "\n") {
		t.Fatalf("Error() and Write differ:\n%s\n---\n%s", got, b.String())
	}
	return b.String()
}
