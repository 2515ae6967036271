package framework

import "net"

// DatagramProtocol handles the datagrams arriving on one udp endpoint of a
// service, as Twisted's DatagramProtocol does. Calls for one endpoint come
// from one goroutine at a time.
type DatagramProtocol interface {
	// DatagramReceived is called with each datagram let in (allow, deny
	// and the rate limits are applied before). data and from are only
	// valid until it returns (superd reuses them, so a datagram costs no
	// allocation): copy what you keep. data may be empty.
	DatagramReceived(data []byte, from net.Addr)
}

// DatagramTransport is a DatagramProtocol's handle on its socket. Its
// methods are safe from any goroutine.
type DatagramTransport interface {
	// WriteTo sends one datagram to addr and never blocks: when the
	// socket's buffer is full the datagram is dropped (and counted as
	// send_failed). For built-in services superd also drops replies that
	// would reflect (see SPEC section 10). b may be reused after it
	// returns.
	WriteTo(b []byte, addr net.Addr)
	// LocalAddr is the address the socket is bound to.
	LocalAddr() net.Addr
}

// DatagramFactory is implemented by factories that serve udp endpoints.
// BuildDatagramProtocol is called once per udp endpoint when the service
// starts serving it.
type DatagramFactory interface {
	BuildDatagramProtocol(t DatagramTransport) DatagramProtocol
}

// DatagramFunc adapts a function to DatagramProtocol.
type DatagramFunc func(data []byte, from net.Addr)

// DatagramReceived calls f(data, from).
func (f DatagramFunc) DatagramReceived(data []byte, from net.Addr) { f(data, from) }
