package basic

import (
	"github.com/superd-dev/superd/framework/frameworktest"
)

// fakeTransport is the in-memory transport of the receivers' tests and of
// the vectors' schema: it records writes, close requests and pause state.
type fakeTransport = frameworktest.Transport

// closed reports whether the receiver has called LoseConnection.
func closed(t *fakeTransport) bool { return t.Lost() > 0 }
