package endpoint

import (
	"syscall"
	"testing"
	"time"
)

// A listening socket that refuses some of the options of accepted
// connections (a Multipath TCP socket, which net.ListenConfig opens where
// the kernel has it, refuses TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT
// before Linux 6.10, and TCP_NODELAY before 5.17) still listens, with
// the options it takes, as net's connections did when it set them one by
// one and ignored what the kernel refused.
func TestListenWhereTheSocketRefusesAcceptedOptions(t *testing.T) {
	refused := map[int]bool{syscall.TCP_NODELAY: true, syscall.TCP_KEEPIDLE: true, syscall.TCP_KEEPINTVL: true, syscall.TCP_KEEPCNT: true}
	defer func(f func(int, int, int, int) error) { setsockoptInt = f }(setsockoptInt)
	setsockoptInt = func(fd, level, opt, v int) error {
		if level == syscall.IPPROTO_TCP && refused[opt] {
			return syscall.EOPNOTSUPP
		}
		return syscall.SetsockoptInt(fd, level, opt, v)
	}
	ln, err := Listen(tcpConfig(t, "127.0.0.1:0", TCPOptions{Keepalive: 42 * time.Second, KeepaliveInterval: 7 * time.Second}, false))
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	if got := sockopt(t, tcpListenerOf(ln), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); got != 1 {
		t.Errorf("SO_KEEPALIVE = %d on the listening socket, want 1 (the socket takes it)", got)
	}
}
