//go:build !linux

package endpoint

import "net"

// setAcceptedOptions does nothing here: connections are accepted only
// through net, which sets the options on each (see RawListener).
func setAcceptedOptions(ln *net.TCPListener, nagle bool, ka net.KeepAliveConfig) error {
	return nil
}
