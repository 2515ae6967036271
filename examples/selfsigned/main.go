// Command selfsigned writes a self-signed certificate and its private key
// for each name given, as DIR/NAME.crt and DIR/NAME.key (mode 0600): the
// files of examples/sni.hcl's service with several names, which `make
// run-sni` writes first. A pair already there that is still valid for a week is
// kept. These certificates are for trying superd out on one machine, never
// for serving anyone else.
//
//	go run ./examples/selfsigned -dir /tmp/superd-tls one.localhost two.localhost
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/superd-dev/superd/endpoint"
)

func main() {
	dir := flag.String("dir", "", "the folder to write NAME.crt and NAME.key to (made if missing)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: selfsigned -dir DIR NAME...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *dir == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "selfsigned:", err)
		os.Exit(1)
	}
	for _, name := range flag.Args() {
		wrote, err := ensure(*dir, name, time.Now())
		if err != nil {
			fmt.Fprintf(os.Stderr, "selfsigned: %s: %v\n", name, err)
			os.Exit(1)
		}
		if wrote {
			fmt.Printf("selfsigned: wrote %s\n", filepath.Join(*dir, name+".crt"))
		}
	}
}

// ensure writes name's pair unless one still valid for a week is there.
func ensure(dir, name string, now time.Time) (bool, error) {
	certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if pair, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil && pair.Leaf != nil &&
		pair.Leaf.VerifyHostname(name) == nil && now.Add(7*24*time.Hour).Before(pair.Leaf.NotAfter) {
		return false, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "selfsigned: replacing %s: %v\n", certFile, err)
	}
	cert, err := endpoint.SelfSignedCertificate([]string{name}, now)
	if err != nil {
		return false, err
	}
	chain, key, err := endpoint.EncodeCertificatePEM(cert)
	if err != nil {
		return false, err
	}
	// The key first: a certificate is never left beside another's key.
	for _, f := range []struct {
		path string
		data []byte
	}{{keyFile, key}, {certFile, chain}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, f.data, 0o600); err != nil {
			return false, err
		}
		if err := os.Rename(tmp, f.path); err != nil {
			os.Remove(tmp)
			return false, err
		}
	}
	return true, nil
}
