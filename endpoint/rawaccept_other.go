//go:build !linux

package endpoint

import "net"

// setAcceptedOptions does nothing here: connections are accepted only
// through net, which sets the options on each (see RawListener).
func setAcceptedOptions(ln *net.TCPListener, nagle bool, ka net.KeepAliveConfig) error {
	return nil
}

// explicitKeepalive leaves ka as it is: net sets it on each connection.
func explicitKeepalive(ka net.KeepAliveConfig) (net.KeepAliveConfig, error) { return ka, nil }
