//go:build unix

package endpoint

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A certificate file that is a FIFO is refused at once, as validate
// refuses it: reading it would block until some writer came.
func TestTLSConfigRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := WriteSelfSignedFiles(dir, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip("no FIFO:", err)
	}
	for _, cfg := range []Config{
		{Kind: KindTLS, CertFile: fifo, KeyFile: keyFile},
		{Kind: KindTLS, CertFile: certFile, KeyFile: keyFile, ClientCAFile: fifo},
	} {
		done := make(chan error, 1)
		go func() {
			_, err := TLSConfig(cfg, time.Now())
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), fifo+" is not a regular file") {
				t.Errorf("TLSConfig with a FIFO: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("TLSConfig blocked reading a FIFO")
		}
	}
}
