//go:build unix

package endpoint

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// A certificate file that is a FIFO is refused at once, as validate
// refuses it: reading it would block until some writer came.
func TestTLSServerRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := testkit.WriteSelfSignedFiles(dir, []string{"localhost"})
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
			_, err := NewTLSServer(cfg, time.Now())
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), fifo+" is not a regular file") {
				t.Errorf("NewTLSServer with a FIFO: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("NewTLSServer blocked reading a FIFO")
		}
	}
}
