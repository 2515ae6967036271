// Package engine is the connection machinery behind superd's framework: it
// drives one framework.Protocol over one stream connection (TCP, unix or
// TLS) and is that protocol's framework.Transport, keeping the guarantees
// of SPEC section 5: callbacks one at a time and in order, ConnectionLost
// exactly once, writes that never block, flow control with the high-water
// mark and registered producers, graceful close with a bounded linger,
// half-close, and drain for shutdown and reload. On Linux, TCP and unix
// connections park in epoll loops (one per P) as soon as they have nothing
// to read, hold no goroutine there, and have their input served by the
// loop itself (read, DataReceived, write), as an event loop does; streams,
// TLS and everything that must wait run on a goroutine of their own.
//
// The supervisor is its user: it builds a Conn for every accepted
// connection served by a protocol (NewConn, Run) and ends it (Drain,
// Abort). Service authors write against package framework only.
package engine
