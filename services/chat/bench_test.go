package chat

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/engine"
)

// BenchmarkFanOut measures one chat line delivered to every other user of a
// room, through real framework connections (unix socket pairs whose far
// ends are drained), reported per delivery. The sender's broadcast only
// queues: each user's pending lines go out in one write.
func BenchmarkFanOut(b *testing.B) {
	for _, users := range []int{10, 200} {
		b.Run(fmt.Sprintf("users=%d", users), func(b *testing.B) {
			room := &Room{maxLine: 16384, service: "bench", users: map[string]*User{}}
			room.StartFactory()
			var drainers sync.WaitGroup
			var conns []*engine.Conn
			var peers []net.Conn
			done := make(chan struct{})
			for i := 0; i < users; i++ {
				ln, err := net.Listen("unix", fmt.Sprintf("%s/u%d.sock", b.TempDir(), i))
				if err != nil {
					b.Fatal(err)
				}
				client, err := net.Dial("unix", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				server, err := ln.Accept()
				ln.Close()
				if err != nil {
					b.Fatal(err)
				}
				drainers.Add(1)
				go func() { defer drainers.Done(); io.Copy(io.Discard, client) }()
				peers = append(peers, client)
				u := room.BuildProtocol(nil).(*User)
				c := engine.NewConn(server, &engine.ConnOptions{MaxPendingOutput: 64 << 20})
				conns = append(conns, c)
				made := make(chan struct{})
				go func() { c.Serve(&madeSignal{User: u, made: made}); <-done }()
				<-made
				// Register directly: the benchmark is about delivery.
				if !room.register(fmt.Sprintf("user%d", i), u) {
					b.Fatal("name taken")
				}
				u.name, u.named = fmt.Sprintf("user%d", i), true
			}
			sender := room.order[0]
			line := []byte("the quick brown fox jumps over the lazy dog")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sender.LineReceived(line)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*(users-1)), "ns/delivery")
			for _, c := range conns {
				c.LoseConnection()
			}
			for _, p := range peers {
				p.Close()
			}
			close(done)
			drainers.Wait()
		})
	}
}

// madeSignal tells the benchmark when ConnectionMade has run.
type madeSignal struct {
	*User
	made chan struct{}
}

func (m *madeSignal) ConnectionMade(t framework.Transport) {
	m.User.ConnectionMade(t)
	close(m.made)
}
