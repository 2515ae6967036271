package framework

import (
	"errors"
	"fmt"
)

// Reasons handed to ConnectionLost. A clean close wraps ErrConnectionDone;
// anything else is an error. The drop reasons (idle timeout, slow consumer,
// shutdown timeout, upstream) are aborts and also match ErrConnectionAborted.
var (
	// ErrConnectionDone: the connection closed in an orderly way (the peer
	// closed it, or LoseConnection finished flushing).
	ErrConnectionDone = errors.New("connection done")
	// ErrConnectionLost: the connection failed (reset, network error).
	ErrConnectionLost = errors.New("connection lost")
	// ErrConnectionAborted: AbortConnection was called.
	ErrConnectionAborted = fmt.Errorf("connection aborted: %w", ErrConnectionLost)
	// ErrIdleTimeout: nothing was received for the service's idle_timeout.
	ErrIdleTimeout = fmt.Errorf("idle timeout: %w", ErrConnectionAborted)
	// ErrSlowConsumer: the peer's unsent output passed max_pending_output.
	ErrSlowConsumer = fmt.Errorf("slow consumer: %w", ErrConnectionAborted)
	// ErrShutdownTimeout: the connection was still open when the shutdown
	// drain ran out of time.
	ErrShutdownTimeout = fmt.Errorf("shutdown timeout: %w", ErrConnectionAborted)
	// ErrUpstream: a protocol that forwards the connection elsewhere (the
	// proxy factory) could not reach its upstream, or lost it to an error,
	// and aborted the connection with Aborter.Abort.
	ErrUpstream = fmt.Errorf("upstream failed: %w", ErrConnectionAborted)
)

// IsClean reports whether reason (as given to ConnectionLost) is an orderly
// close rather than an error.
func IsClean(reason error) bool { return errors.Is(reason, ErrConnectionDone) }

// PanicError is the reason given to ConnectionLost when a callback of the
// connection's protocol panicked; the connection is aborted.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("protocol panic: %v", e.Value) }
