// Package testkit holds what superd's tests share that needs nothing of
// superd itself: certificates for TLS endpoints and their clients, and
// loopback addresses that are free to listen on. Only _test.go files
// import it, so none of it is part of the superd binary or of any
// package's API; because it imports no superd package, a package's own
// tests (endpoint's included) can use it without an import cycle.
//
// Helpers for testing protocols live in framework/frameworktest, the
// configuration loader for one service block in
// services/internal/servicetest.
package testkit
