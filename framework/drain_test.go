package framework

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// blockingCollector collects data; its first DataReceived waits for a
// signal, so the test can queue more input in the socket meanwhile.
type blockingCollector struct {
	BaseProtocol
	entered chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	got     bytes.Buffer
	lost    chan error
}

func (b *blockingCollector) DataReceived(data []byte) {
	b.mu.Lock()
	b.got.Write(data)
	b.mu.Unlock()
	b.once.Do(func() {
		close(b.entered)
		<-b.release
	})
}

func (b *blockingCollector) ConnectionLost(reason error) { b.lost <- reason }

// TestDrainDeliversWhatHasArrived: input already in the socket when Drain is
// called reaches the protocol (a logfile line sent before SIGTERM is
// written), then the connection closes cleanly.
func TestDrainDeliversWhatHasArrived(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = t.TempDir() + "/d.sock"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			client, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			nc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			p := &blockingCollector{entered: make(chan struct{}), release: make(chan struct{}), lost: make(chan error, 1)}
			c := NewConn(nc, ConnOptions{})
			go c.Serve(p)

			client.Write([]byte("first\n"))
			<-p.entered // the protocol is busy; more input queues in the socket
			rest := bytes.Repeat([]byte("queued line\n"), 1000)
			if _, err := client.Write(rest); err != nil {
				t.Fatal(err)
			}
			// Wait until the kernel holds it all on the server side.
			deadline := time.Now().Add(5 * time.Second)
			for inputQueued(t, nc) < len(rest) {
				if time.Now().After(deadline) {
					t.Fatalf("only %d of %d bytes queued", inputQueued(t, nc), len(rest))
				}
				time.Sleep(time.Millisecond)
			}
			c.Drain()
			close(p.release)
			select {
			case reason := <-p.lost:
				if !IsClean(reason) {
					t.Errorf("reason %v, want clean", reason)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("connection did not end after Drain")
			}
			p.mu.Lock()
			got := p.got.String()
			p.mu.Unlock()
			if want := "first\n" + string(rest); got != want {
				t.Errorf("delivered %d bytes, want %d", len(got), len(want))
			}
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Errorf("client: %d %v, want EOF", n, err)
			}
		})
	}
}

// TestDrainWakesAnIdleReader: Drain on a connection waiting for input closes
// it cleanly at once.
func TestDrainWakesAnIdleReader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c := NewConn(nc, ConnOptions{})
	done := make(chan error, 1)
	go func() { done <- c.Serve(&BaseProtocol{}) }()
	c.Drain()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client: %d %v, want EOF", n, err)
	}
	client.Close()
	select {
	case reason := <-done:
		if !IsClean(reason) {
			t.Errorf("reason %v", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}
