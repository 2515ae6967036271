// This file owns the engine's own reasons for ending a connection (the
// public ones are framework's).

package engine

import (
	"fmt"

	"github.com/superd-dev/superd/framework"
)

// errClosingInput: the peer sent more than lingerMaxInput bytes after the
// connection began closing; it was reset rather than read without bound.
var errClosingInput = fmt.Errorf("peer kept sending after the close (over %d bytes discarded): %w",
	lingerMaxInput, framework.ErrConnectionLost)

// lostError wraps the network error that ended a connection.
type lostError struct{ err error }

func (e *lostError) Error() string { return "connection lost: " + e.err.Error() }
func (e *lostError) Unwrap() []error {
	return []error{framework.ErrConnectionLost, e.err}
}
