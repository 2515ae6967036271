//go:build !linux

package endpoint

import "net"

// Quiesce does nothing on this system: a listener sharing its port
// (reuse_port) resets what is still queued when it closes (see the Linux
// version).
func Quiesce(ln net.Listener) error { return nil }
