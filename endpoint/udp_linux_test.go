package endpoint

import (
	"testing"

	"golang.org/x/sys/unix"
)

// read_buffer and write_buffer reach the socket (Linux doubles what it is
// asked, for its bookkeeping).
func TestListenUDPBuffers(t *testing.T) {
	uc := listenUDP(t, Config{Kind: KindUDP, Addr: mustParse(KindUDP, "127.0.0.1:0"), ReadBuffer: 4096, WriteBuffer: 8192})
	raw, err := uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var rcv, snd int
	var gerr error
	raw.Control(func(fd uintptr) {
		rcv, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		if gerr == nil {
			snd, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		}
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	if rcv != 2*4096 || snd != 2*8192 {
		t.Errorf("SO_RCVBUF %d, SO_SNDBUF %d; want %d and %d", rcv, snd, 2*4096, 2*8192)
	}
	udpRoundTrip(t, uc)
}
