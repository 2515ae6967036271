package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/superd-dev/superd/internal/testkit"
)

// The room across nodes (SPEC section 13), end to end: superd processes on
// loopback, each embedding a NATS server routed to the others, or all
// pointed at a separately started nats-server (nats_urls).

// clusterNode is one superd of a cluster test.
type clusterNode struct {
	name  string
	d     *daemon
	chat  string // the chat endpoint
	path  string // its configuration file
	maddr string
}

// clusterConfig is a node's file: metrics, the cluster block given, and a
// chat service "lobby" across the cluster.
func clusterConfig(chatAddr, clusterBlock, nameTTL string) string {
	return fmt.Sprintf(`
metrics { address = "METRICS" }
shutdown_timeout = "5s"
%s
service "chat" "lobby" {
  cluster  = true
  name_ttl = %q
  endpoint "tcp" { address = %q }
}
`, clusterBlock, nameTTL, chatAddr)
}

// startClusterNode writes a node's file and runs superd on it (-log-level
// info: the embedded server's debug log is long).
func startClusterNode(t *testing.T, name, clusterBlock, nameTTL string) *clusterNode {
	t.Helper()
	n := &clusterNode{name: name, chat: freeAddr(t)}
	n.path, n.maddr = writeConfig(t, clusterConfig(n.chat, clusterBlock, nameTTL))
	n.d = startCmd(t, exec.Command(superdBin, "run", "-config", n.path, "-log-level", "info"), n.maddr)
	return n
}

// embeddedBlock is node i's cluster block among route addresses routes.
func embeddedBlock(t *testing.T, names, routes []string, i int) string {
	var others []string
	for j, r := range routes {
		if j != i {
			others = append(others, fmt.Sprintf("%q", "nats://"+r))
		}
	}
	return fmt.Sprintf(`cluster {
  node = %q
  nats {
    cluster_listen = %q
    routes         = [%s]
    store_dir      = %q
  }
}`, names[i], routes[i], strings.Join(others, ", "), filepath.Join(t.TempDir(), "nats"))
}

// chatJoinRetry connects to addr and chooses name, trying again while the
// answer is "Name service unavailable" (JetStream not ready yet, or
// electing a leader) or "Name taken" (a name being freed), until limit.
func chatJoinRetry(t *testing.T, addr, name string, limit time.Duration) *chatClient {
	t.Helper()
	cc := chatDial(t, "tcp", addr, name)
	start := time.Now()
	deadline := start.Add(limit)
	var answers []string // what came back, and when, before the welcome
	for {
		cc.send(name + "\r\n")
		got, err := cc.line(10 * time.Second)
		if err != nil {
			t.Fatalf("%s: %q, %v", name, got, err)
		}
		switch got {
		case "Welcome, " + name + "!\r\n":
			if len(answers) > 0 {
				t.Logf("%s welcome after %v; before: %s", name, time.Since(start).Round(time.Millisecond), strings.Join(compress(answers), ", "))
			}
			return cc
		case "Name service unavailable, try again.\r\n":
			answers = append(answers, "unavailable")
		case "Name taken, please choose another.\r\n":
			answers = append(answers, "taken")
		default:
			t.Fatalf("%s: got %q", name, got)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %q after %v", name, got, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// compress turns [a a a b b a] into [3x a, 2x b, 1x a].
func compress(s []string) []string {
	var out []string
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] == s[i] {
			j++
		}
		out = append(out, fmt.Sprintf("%dx %s", j-i, s[i]))
		i = j
	}
	return out
}

// probeHeard sends probe lines from "from" until every one of to has heard
// one (interest spreads over the routes in a moment), then reads the
// stray probes away: after it, lines from "from" reach every one of to.
func probeHeard(t *testing.T, from *chatClient, to ...*chatClient) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	heard := make([]bool, len(to))
	sent := 0
	for {
		from.send("probe\r\n")
		sent++
		all := true
		for i, c := range to {
			for !heard[i] {
				got, err := c.line(100 * time.Millisecond)
				if err != nil {
					break
				}
				if got != "<"+from.id+"> probe\r\n" {
					t.Fatalf("%s: while waiting for %s's probe got %q", c.id, from.id, got)
				}
				heard[i] = true
			}
			all = all && heard[i]
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's probes not heard by all of %d users after %d tries", from.id, len(to), sent)
		}
	}
	// The probes sent before interest reached a node were dropped by NATS;
	// the others arrive: read until a marker.
	from.send("probe end\r\n")
	for _, c := range to {
		for {
			got, err := c.line(10 * time.Second)
			if err != nil {
				t.Fatalf("%s: %q, %v", c.id, got, err)
			}
			if got == "<"+from.id+"> probe end\r\n" {
				break
			}
			if got != "<"+from.id+"> probe\r\n" {
				t.Fatalf("%s: got %q among %s's probes", c.id, got, from.id)
			}
		}
	}
}

// TestClusterThreeNodes: three superd processes, each embedding a NATS
// server routed to the other two, one chat room across them.
func TestClusterThreeNodes(t *testing.T) {
	// Longer than NATS takes to elect a new leader for the names bucket
	// (4 to 9 s) should the killed node have led it.
	const nameTTL = 12 * time.Second
	names := []string{"a", "b", "c"}
	routes := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	nodes := make([]*clusterNode, 3)
	for i := range nodes {
		// Each is ready once its own server is: the others need not be up.
		nodes[i] = startClusterNode(t, names[i], embeddedBlock(t, names, routes, i), nameTTL.String())
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		n.d.waitMetric("superd_cluster_connected", nil, 1)
		for _, dir := range []string{"sent", "received"} {
			n.d.waitMetric("superd_chat_remote_lines_total", map[string]string{"service": "lobby", "direction": dir}, 0)
		}
		n.d.waitMetric("superd_chat_remote_lines_dropped_total", map[string]string{"service": "lobby"}, 0)
	}

	// The names bucket needs JetStream's leaders: the first claim waits
	// for them.
	start := time.Now()
	alice := chatJoinRetry(t, a.chat, "alice", 60*time.Second)
	t.Logf("first name claimed %v after the nodes were ready", time.Since(start))
	bob := chatJoinRetry(t, b.chat, "bob", 20*time.Second)
	carol := chatJoinRetry(t, c.chat, "carol", 20*time.Second)
	probeHeard(t, alice, bob, carol)
	probeHeard(t, bob, alice, carol)
	probeHeard(t, carol, alice, bob)
	alice.seen.Reset()
	carol.seen.Reset()

	// The seed's transcript, across nodes. A name taken on A is refused
	// on C, with no new prompt.
	dave := chatDial(t, "tcp", c.chat, "dave")
	dave.send("alice\r\n")
	dave.expect("Name taken, please choose another.\r\n")
	dave.send("dave\r\n")
	dave.expect("Welcome, dave!\r\n")
	probeHeard(t, dave, alice, bob, carol)
	alice.seen.Reset()
	carol.seen.Reset()
	bob.send("hello\r\n")
	alice.expect("<bob> hello\r\n")
	carol.expect("<bob> hello\r\n")
	dave.expect("<bob> hello\r\n")
	alice.send("hi bob\r\n")
	bob.expect("<alice> hi bob\r\n")
	carol.expect("<alice> hi bob\r\n")
	carol.send("twisted makes writing servers so easy!\r\n")
	alice.expect("<carol> twisted makes writing servers so easy!\r\n")
	bob.expect("<carol> twisted makes writing servers so easy!\r\n")
	if want := "<bob> hello\r\n<carol> twisted makes writing servers so easy!\r\n"; alice.seen.String() != want {
		t.Fatalf("alice's session: %q, want %q", alice.seen.String(), want)
	}
	if want := "<bob> hello\r\n<alice> hi bob\r\n"; carol.seen.String() != want {
		t.Fatalf("carol's session: %q, want %q", carol.seen.String(), want)
	}
	dave.r.Reset(dave.c) // dave does not read the rest: forget what he has
	dave.close()

	// 3 senders x 200 lines, one sender per node, with 4 more listeners
	// per node: every user hears every line of the others once, in order.
	const lines = 200
	senders := []*chatClient{alice, bob, carol}
	var users []*chatClient
	users = append(users, senders...)
	for i := range 12 {
		users = append(users, chatJoinRetry(t, nodes[i%3].chat, fmt.Sprintf("l%02d", i), 20*time.Second))
	}
	// The routes carry the rooms' interest already (probed above): users
	// who join later need no probe.
	msg := func(s, j int) string { return fmt.Sprintf("m %d %d %s", s, j, strings.Repeat("x", (s*7+j*13)%60)) }
	errs := make(chan error, len(users))
	var readers sync.WaitGroup
	for i, u := range users {
		want := lines * len(senders)
		if i < len(senders) {
			want -= lines
		}
		readers.Go(func() {
			next := make([]int, len(senders))
			for n := 0; n < want; n++ {
				got, err := u.line(30 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("%s: after %d lines: %q, %v", u.id, n, got, err)
					return
				}
				var s, j int
				_, rest, _ := strings.Cut(got, "> ")
				if _, err := fmt.Sscanf(rest, "m %d %d", &s, &j); err != nil || s < 0 || s >= len(senders) {
					errs <- fmt.Errorf("%s: unexpected line %q", u.id, got)
					return
				}
				if want := fmt.Sprintf("<%s> %s\r\n", senders[s].id, msg(s, j)); got != want || senders[s] == u {
					errs <- fmt.Errorf("%s: got %q, want %q", u.id, got, want)
					return
				}
				if j != next[s] {
					errs <- fmt.Errorf("%s: from %s got line %d, want %d (lost, repeated or reordered)", u.id, senders[s].id, j, next[s])
					return
				}
				next[s]++
			}
		})
	}
	start = time.Now()
	var sw sync.WaitGroup
	for s, sc := range senders {
		sw.Go(func() {
			sc.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			for j := range lines {
				if _, err := io.WriteString(sc.c, msg(s, j)+"\r\n"); err != nil {
					errs <- fmt.Errorf("sender %s: %v", sc.id, err)
					return
				}
			}
		})
	}
	sw.Wait()
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d senders x %d lines heard by %d users on 3 nodes in %v", len(senders), lines, len(users), time.Since(start))
	for _, n := range nodes {
		fams := n.d.scrape()
		sent, _ := metric(fams, "superd_chat_remote_lines_total", map[string]string{"service": "lobby", "direction": "sent"})
		recv, _ := metric(fams, "superd_chat_remote_lines_total", map[string]string{"service": "lobby", "direction": "received"})
		drop, _ := metric(fams, "superd_chat_remote_lines_dropped_total", map[string]string{"service": "lobby"})
		if sent < lines || recv < 2*lines || drop != 0 {
			t.Errorf("node %s: sent %v, received %v, dropped %v; want at least %d, %d and 0", n.name, sent, recv, drop, lines, 2*lines)
		}
	}

	// SIGKILL node B: its names are taken until they expire, free on A
	// within name_ttl; A and C carry on.
	if err := b.d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	b.d.wait(10 * time.Second)
	other := chatDial(t, "tcp", a.chat, "other")
	other.send("bob\r\n")
	if got, _ := other.line(10 * time.Second); got != "Name taken, please choose another.\r\n" && got != "Name service unavailable, try again.\r\n" {
		t.Fatalf("bob on A right after B was killed: %q", got)
	}
	other.close()
	alice.send("still here\r\n")
	carol.expect("<alice> still here\r\n")
	bob2 := chatJoinRetry(t, a.chat, "bob", nameTTL+15*time.Second)
	freed := time.Since(killed)
	t.Logf("B's name free on A %v after SIGKILL (name_ttl %v)", freed, nameTTL)
	if freed > nameTTL {
		t.Errorf("B's name was free %v after B died, later than name_ttl %v", freed, nameTTL)
	}
	carol.send("after B\r\n")
	alice.expect("<carol> after B\r\n")
	bob2.expect("<carol> after B\r\n")
	c.d.waitMetric("superd_cluster_connected", nil, 1)

	for _, u := range append(users, bob2) {
		u.close()
	}
	for _, n := range []*clusterNode{a, c} {
		n.d.waitMetric("superd_chat_users", map[string]string{"service": "lobby"}, 0)
	}
	for _, n := range []*clusterNode{a, c} {
		n.d.stop(20 * time.Second)
	}
}

// buildNATSServer builds nats-server from the module superd uses, once,
// beside the superd under test, so that TestMain removes it with that.
var buildNATSServer = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp(filepath.Dir(superdBin), "nats-server")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "nats-server")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building nats-server: %v\n%s", err, out)
	}
	return bin, nil
})

// natsServer is a separately started nats-server with JetStream.
type natsServer struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	dir  string
	out  *testkit.Buffer
	done chan struct{}
}

func startNATSServer(t *testing.T, addr, dir string) *natsServer {
	t.Helper()
	bin, err := buildNATSServer()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	s := &natsServer{t: t, addr: addr, dir: dir, out: &testkit.Buffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(bin, "-a", host, "-p", port, "-js", "-sd", dir, "-n", "external")
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.kill)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("nats-server exited:\n%s", s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server not listening after 20s:\n%s", s.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *natsServer) kill() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}

func readyz(t *testing.T, maddr string) int {
	t.Helper()
	resp, err := http.Get("http://" + maddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestClusterNATSURLs: two superd processes pointed at a nats-server
// started apart (built by the test from the same module). When it goes
// away, each room works locally, lines for the other node are dropped and
// counted, new names are refused as unavailable, /status says so and
// /readyz stays 200 (the node still serves); when
// it comes back, everything resumes by itself. A reload cannot change the
// cluster block, and validate starts nothing.
func TestClusterNATSURLs(t *testing.T) {
	natsAddr := freeAddr(t)
	storeDir := t.TempDir()
	ns := startNATSServer(t, natsAddr, storeDir)
	block := func(node string) string {
		return fmt.Sprintf("cluster {\n  node = %q\n  nats_urls = [%q]\n}", node, "nats://"+natsAddr)
	}

	// validate checks the file and starts nothing.
	vpath, _ := writeConfig(t, clusterConfig(freeAddr(t), `cluster {
  node = "v"
  nats {
    listen         = "`+natsAddr+`"
    cluster_listen = "127.0.0.1:1"
  }
}`, "5s"))
	if out, err := exec.Command(superdBin, "validate", "-config", vpath).CombinedOutput(); err != nil {
		t.Fatalf("validate: %v\n%s", err, out)
	}
	bad, _ := writeConfig(t, `service "chat" "lobby" {
  cluster = true
  endpoint "tcp" { address = "127.0.0.1:1" }
}
`)
	out, err := exec.Command(superdBin, "validate", "-config", bad).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("superd.hcl:2,")) || !bytes.Contains(out, []byte("top-level cluster block")) {
		t.Fatalf("validate of cluster = true without a cluster block: %v\n%s", err, out)
	}

	// name_ttl outlasts the outage below: the names held stay held.
	const ttl = "20s"
	x := startClusterNode(t, "x", block("x"), ttl)
	y := startClusterNode(t, "y", block("y"), ttl)
	for _, n := range []*clusterNode{x, y} {
		n.d.waitMetric("superd_cluster_connected", nil, 1)
	}
	xavier := chatJoinRetry(t, x.chat, "xavier", 30*time.Second)
	yann := chatJoinRetry(t, y.chat, "yann", 20*time.Second)
	yves := chatJoinRetry(t, y.chat, "yves", 20*time.Second)
	taken := chatDial(t, "tcp", x.chat, "taken")
	taken.send("yann\r\n")
	taken.expect("Name taken, please choose another.\r\n")
	probeHeard(t, xavier, yann, yves)
	probeHeard(t, yann, xavier, yves)
	xavier.send("over NATS\r\n")
	yann.expect("<xavier> over NATS\r\n")
	yves.expect("<xavier> over NATS\r\n")

	// A reload cannot change the cluster block.
	rewriteConfig(t, y.path, y.maddr, clusterConfig(y.chat, block("y2"), ttl))
	y.d.signal(syscall.SIGHUP)
	y.d.waitMetric("superd_config_reloads_total", map[string]string{"result": "failure"}, 1)
	if !strings.Contains(y.d.stderr.String(), "restart superd to change the cluster") {
		t.Fatalf("the failed reload does not say why:\n%s", lastBytes(y.d.stderr.String(), 4096))
	}
	rewriteConfig(t, y.path, y.maddr, clusterConfig(y.chat, block("y"), ttl))

	// NATS goes away.
	ns.kill()
	for _, n := range []*clusterNode{x, y} {
		n.d.waitMetric("superd_cluster_connected", nil, 0)
		// Its rooms still serve their own node: it stays ready (the
		// moment its READY=1 said so), and /status tells NATS is away.
		if code := readyz(t, n.maddr); code != http.StatusOK {
			t.Fatalf("node %s /readyz %d while NATS is away; its rooms still serve", n.name, code)
		}
		if c := getStatus(t, n.maddr, false).Cluster; c == nil || c.Node != n.name || c.Connected {
			t.Fatalf("node %s /status cluster %+v while NATS is away", n.name, c)
		}
		out, err := exec.Command(superdBin, "status", "-address", n.maddr).CombinedOutput()
		if want := "cluster node " + n.name + ": NOT connected to NATS"; err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("superd status of node %s while NATS is away: %v, lacks %q:\n%s", n.name, err, want, out)
		}
	}
	yann.send("local only\r\n")
	yves.expect("<yann> local only\r\n")
	y.d.waitMetric("superd_chat_remote_lines_dropped_total", map[string]string{"service": "lobby"}, 1)
	newbie := chatDial(t, "tcp", x.chat, "newbie")
	newbie.send("newbie\r\n")
	newbie.expect("Name service unavailable, try again.\r\n")

	// It comes back (same port, same store): the nodes reconnect by
	// themselves, and the names held all along are still theirs.
	startNATSServer(t, natsAddr, storeDir)
	for _, n := range []*clusterNode{x, y} {
		n.d.waitMetric("superd_cluster_connected", nil, 1)
		if code := readyz(t, n.maddr); code != http.StatusOK {
			t.Fatalf("node %s /readyz %d after NATS came back", n.name, code)
		}
		if c := getStatus(t, n.maddr, false).Cluster; c == nil || !c.Connected {
			t.Fatalf("node %s /status cluster %+v after NATS came back", n.name, c)
		}
	}
	probeHeard(t, yann, xavier, yves)
	probeHeard(t, xavier, yann, yves)
	deadline := time.Now().Add(30 * time.Second)
	for {
		newbie.send("newbie\r\n")
		got, err := newbie.line(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got == "Welcome, newbie!\r\n" {
			break
		}
		if got != "Name service unavailable, try again.\r\n" || time.Now().After(deadline) {
			t.Fatalf("newbie after NATS came back: %q", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// yann's name, held all along on y, is y's again in the bucket.
	deadline = time.Now().Add(20 * time.Second)
	for {
		taken.send("yann\r\n")
		got, err := taken.line(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got == "Name taken, please choose another.\r\n" {
			break
		}
		if got == "Welcome, yann!\r\n" {
			t.Fatal("yann's name was given away while yann is online")
		}
		if time.Now().After(deadline) {
			t.Fatalf("yann on x after NATS came back: %q", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, u := range []*chatClient{xavier, yann, yves, taken, newbie} {
		u.close()
	}
	for _, n := range []*clusterNode{x, y} {
		n.d.stop(20 * time.Second)
	}
}

// TestClusterExamplesValid: the three files of examples/cluster (the
// README's three-node room on one machine) are valid.
func TestClusterExamplesValid(t *testing.T) {
	for _, n := range []string{"a", "b", "c"} {
		out, err := exec.Command(superdBin, "validate", "-config", filepath.Join("..", "..", "examples", "cluster", n+".hcl")).CombinedOutput()
		if err != nil {
			t.Fatalf("superd validate examples/cluster/%s.hcl: %v\n%s", n, err, out)
		}
	}
}
