package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// startChatCluster starts n superd nodes serving one chat room across them
// (CHATX): each embeds a NATS server routed to the others' on loopback,
// with its JetStream store in the working folder. It returns the first
// node, the others as its peers, once the room works: a name can be
// claimed on every node and a line from the first reaches the others.
func startChatCluster(ctx context.Context, o *options, work string, seq, n int) (*server, error) {
	routePorts, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	chatPorts, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	var nodes []*server
	fail := func(err error) (*server, error) {
		for _, s := range nodes {
			s.stop()
		}
		return nil, err
	}
	for i := range n {
		name := string(rune('a' + i))
		var routes []string
		for j, p := range routePorts {
			if j != i {
				routes = append(routes, fmt.Sprintf("%q", "nats://127.0.0.1:"+strconv.Itoa(p)))
			}
		}
		s := &server{name: "superd-" + name, done: make(chan struct{}), chatOnly: true,
			log: filepath.Join(work, fmt.Sprintf("%03d-superd-%s.log", seq, name))}
		s.addrs[tChat] = "127.0.0.1:" + strconv.Itoa(chatPorts[i])
		cfg := filepath.Join(work, fmt.Sprintf("%03d-superd-%s.hcl", seq, name))
		text := fmt.Sprintf(`# written by bench/matrix (CHATX)
metrics {
  address = ""
}

shutdown_timeout = "5s"

cluster {
  node = %q
  nats {
    cluster_listen = "127.0.0.1:%d"
    routes         = [%s]
    store_dir      = %q
  }
}

service "chat" "chat" {
  cluster            = true
  max_connections    = 0
  max_pending_output = 67108864
  endpoint "tcp" { address = %q }
}
`, name, routePorts[i], strings.Join(routes, ", "), filepath.Join(work, fmt.Sprintf("%03d-nats-%s", seq, name)), s.addrs[tChat])
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			return fail(err)
		}
		logf, err := os.Create(s.log)
		if err != nil {
			return fail(err)
		}
		s.cmd = exec.Command(o.superd, "run", "-config", cfg, "-log-level", "warn")
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		err = s.cmd.Start()
		logf.Close()
		if err != nil {
			return fail(err)
		}
		go func() { s.err = s.cmd.Wait(); close(s.done) }()
		nodes = append(nodes, s)
	}
	for _, s := range nodes {
		if err := s.waitReady(ctx, 15*time.Second); err != nil {
			return fail(fmt.Errorf("%s not ready: %v\n%s", s.name, err, tail(readFile(s.log), 10)))
		}
	}
	if err := roomAcross(ctx, nodes, 60*time.Second); err != nil {
		return fail(err)
	}
	first := nodes[0]
	first.peers = nodes[1:]
	var addrs []string
	for _, s := range nodes {
		addrs = append(addrs, s.addrs[tChat])
	}
	first.addrs[tChat] = strings.Join(addrs, ",")
	return first, nil
}

// roomAcross waits until the room spans the nodes: a probe user can take
// a name on each (JetStream has its leaders), and lines from the first
// node's user reach the others (the routes carry the room's interest).
// The probe users then leave.
func roomAcross(ctx context.Context, nodes []*server, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	type user struct {
		c net.Conn
		r *bufio.Reader
	}
	var users []user
	defer func() {
		for _, u := range users {
			u.c.Close()
		}
	}()
	for i, s := range nodes {
		c, err := net.DialTimeout("tcp", s.addrs[tChat], 5*time.Second)
		if err != nil {
			return err
		}
		u := user{c, bufio.NewReader(c)}
		users = append(users, u)
		name := fmt.Sprintf("probe-%d", i)
		c.SetDeadline(deadline)
		if line, err := u.r.ReadString('\n'); err != nil || line != "What's your name?\r\n" {
			return fmt.Errorf("%s: prompt %q, %v", s.name, line, err)
		}
		for {
			if _, err := fmt.Fprintf(c, "%s\r\n", name); err != nil {
				return err
			}
			line, err := u.r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("%s: claiming a name: %v", s.name, err)
			}
			if line == "Welcome, "+name+"!\r\n" {
				break
			}
			if line != "Name service unavailable, try again.\r\n" {
				return fmt.Errorf("%s: claiming a name: %q", s.name, line)
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				return fmt.Errorf("%s: names unavailable after %v", s.name, limit)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Probe lines from the first node until each other node's user has
	// one; what was sent before interest arrived is lost, the rest is read
	// up to an end marker.
	for k, u := range users[1:] {
		for {
			if _, err := fmt.Fprintf(users[0].c, "probe\r\n"); err != nil {
				return err
			}
			u.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			line, err := u.r.ReadString('\n')
			if err == nil && line == "<probe-0> probe\r\n" {
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				return fmt.Errorf("%s does not hear %s: %q, %v", nodes[k+1].name, nodes[0].name, line, err)
			}
		}
	}
	// Probes still on their way would reach the benchmark's users: read
	// them away, up to a last line (each sender's lines keep their order).
	if _, err := fmt.Fprintf(users[0].c, "probe end\r\n"); err != nil {
		return err
	}
	for k, u := range users[1:] {
		u.c.SetReadDeadline(deadline)
		for {
			line, err := u.r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("%s: waiting for the last probe: %v", nodes[k+1].name, err)
			}
			if line == "<probe-0> probe end\r\n" {
				break
			}
		}
	}
	return nil
}
