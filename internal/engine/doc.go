// Package engine is the connection machinery behind superd's framework: it
// drives one framework.Protocol over one stream connection (TCP, unix or
// TLS) and is that protocol's framework.Transport, keeping the guarantees
// of SPEC section 5: callbacks one at a time and in order, ConnectionLost
// exactly once, writes that never block, flow control with the high-water
// mark and registered producers, graceful close with a bounded linger,
// half-close, and drain for shutdown and reload. Idle connections park in
// an epoll poller (Linux) and hold no goroutine; where superd runs on one
// CPU (GOMAXPROCS 1), the poller's loop also serves them, as an event
// loop does (serve_loop.go).
//
// The supervisor is its user: it builds a Conn for every accepted
// connection served by a protocol (NewConn, Run) and ends it (Drain,
// Abort). Service authors write against package framework only.
package engine
