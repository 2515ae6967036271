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

	"github.com/zclconf/go-cty/cty"

	"github.com/superd-dev/superd/framework"
)

// Test factories. config imports no service package, so the tests register
// their own, under names no real service uses.
func init() {
	framework.Register(framework.Spec{
		Name:        "testfactory",
		Description: "A factory for config's tests.",
		Attributes: []framework.Attribute{
			{Name: "greeting", Type: cty.String, Default: cty.StringVal("hello")},
			{Name: "repeat", Type: cty.Number, Default: cty.NumberIntVal(1)},
			{Name: "tags", Type: cty.List(cty.String)},
		},
		New: func(c *framework.Config) (framework.Factory, error) {
			if !c.IsWholeNumber("repeat") || c.Int("repeat") > 10 {
				return nil, c.Errorf("repeat", "repeat must be a whole number up to 10")
			}
			if c.String("greeting") == "fail" {
				return nil, errors.New("greeting says fail")
			}
			return framework.ForProtocol(func() framework.Protocol { return nil }), nil
		},
	})
	framework.Register(framework.Spec{
		Name:        "testneeds",
		Description: "A test factory with a required attribute and an object-typed block.",
		Attributes: []framework.Attribute{
			{Name: "target", Type: cty.String, Required: true},
			{Name: "opts", Type: optsType, Block: true},
		},
		New: func(c *framework.Config) (framework.Factory, error) {
			if b := c.Block("opts"); b != nil && b.String("name") == "bad" {
				return nil, b.Errorf("name", "%q is a bad name", "bad")
			}
			return framework.ForProtocol(func() framework.Protocol { return nil }), nil
		},
	})
	framework.Register(framework.Spec{
		Name:        "testecho",
		Description: "A test factory without attributes.",
		New: func(c *framework.Config) (framework.Factory, error) {
			return framework.ForProtocol(func() framework.Protocol { return nil }), nil
		},
	})
}

// optsType is testneeds' object-typed block.
var optsType = cty.Object(map[string]cty.Type{"name": cty.String, "verify": cty.Bool, "file": cty.String})

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
