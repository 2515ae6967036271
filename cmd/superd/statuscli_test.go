package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// An HTTP server that is not superd's status (a 404) makes `superd
// status` exit 1 saying what it answered, and nothing else: the message
// ended with the Go text of no error, "<nil>".
func TestStatusNotFoundMessage(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	var stdout, stderr strings.Builder
	code := cmdStatus([]string{"-address", strings.TrimPrefix(srv.URL, "http://")}, &stdout, &stderr)
	if code != exitFailure || !strings.Contains(stderr.String(), "404 Not Found") || strings.Contains(stderr.String(), "<nil>") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}
