// Command superbench is a load generator for superd's built-in services
// (and for anything speaking the same protocols). It only talks to loopback
// addresses, verifies every byte it gets back, and every run is bounded in
// time and stops by itself.
//
//	superbench echo     -addr A [-conns N] [-size B] [-duration D | -count K] [-tls]
//	superbench stream   -addr A [-conns N] [-size CHUNK] [-duration D] [-tls]
//	superbench connrate -addr A [-conns WORKERS] [-duration D] [-expect QUOTE] [-eol crlf|lf]
//	superbench idle     -addr A [-conns N] [-pid SERVER_PID] [-settle D] [-tls]
//	superbench chat     -addr A[,B,...] [-conns USERS] [-lines M] [-duration D | -rounds R]
//	superbench udp      -addr A [-conns SENDERS] [-size B] [-duration D | -count K] [-lost-after D] [-max-lost F]
//
// Each run prints one human line and one JSON line on stdout. The exit
// status is 1 when anything failed verification or could not connect.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

const usage = `usage: superbench MODE [flags]

modes:
  echo      N connections ping-pong B-byte random messages with an echo server
            -> msgs/s and p50/p99/p999 round-trip latency
  stream    N connections each write and read a pseudo-random stream at once
            (echo server) -> MB/s (10^6 bytes) of echoed, verified payload
  connrate  N workers connect, read a quote to EOF, close (qotd server, or
            a program printing one line, -eol lf)
            -> conns/s and latency of the whole exchange
  idle      hold N idle connections -> server RSS growth per connection
            (-pid, from /proc/PID/status VmRSS), then check each is alive
            with a one-byte echo
  chat      N users choose a name, then the first sends M lines per round
            until -duration (or -rounds) -> deliveries/s and latency until
            every other user has each line; with -addr A,B,C (nodes of one
            room across a cluster) user i connects to target i mod 3, the
            sender to A, and the latency of the users on B and C is also
            reported apart (remote)
  udp       N senders, each with its own UDP socket, ping-pong B-byte
            datagrams with a UDP echo server -> msgs/s and p50/p99/p999
            round-trip latency; a datagram not back within -lost-after is
            counted lost (too many lost is an error)

Run "superbench MODE -h" for the flags of a mode.
`

// options are the flags of every mode (a mode ignores those it does not use).
type options struct {
	mode            string
	addr            string
	label           string
	conns           int
	size            int
	duration        time.Duration
	count           int
	tls             bool
	dialConcurrency int
	dialTimeout     time.Duration
	dialRetries     int
	ioTimeout       time.Duration
	seed            uint64
	expect          string
	eol             string // "\r\n" or "\n": how connrate's quote ends
	pid             int
	settle          time.Duration
	lines           int
	rounds          int
	lostAfter       time.Duration // udp: wait for an echo this long, then count it lost
	maxLost         float64       // udp: the fraction of lost datagrams above which the run fails
}

// Result is the outcome of one run, printed as one JSON line.
type Result struct {
	Mode           string  `json:"mode"`
	Label          string  `json:"label"`
	Addr           string  `json:"addr"`
	TLS            bool    `json:"tls"`
	Conns          int     `json:"conns"`
	Size           int     `json:"size"`
	DurationS      float64 `json:"duration_s"`
	Ops            int64   `json:"ops"` // messages, bytes, connections or deliveries
	MsgsPerS       float64 `json:"msgs_per_s"`
	MBPerS         float64 `json:"mb_per_s"`
	ConnsPerS      float64 `json:"conns_per_s"`
	DeliveriesPerS float64 `json:"deliveries_per_s"`
	P50Us          float64 `json:"p50_us"`
	P99Us          float64 `json:"p99_us"`
	P999Us         float64 `json:"p999_us"`
	// Chat across nodes: the users on another node than the sender's.
	Nodes           int     `json:"nodes,omitempty"`
	RemoteP50Us     float64 `json:"remote_p50_us,omitempty"`
	RemoteP99Us     float64 `json:"remote_p99_us,omitempty"`
	RemoteP999Us    float64 `json:"remote_p999_us,omitempty"`
	RSSBeforeBytes  int64   `json:"rss_before_bytes"`
	RSSAfterBytes   int64   `json:"rss_after_bytes"`
	RSSPerConnBytes float64 `json:"rss_per_conn_bytes"`
	Alive           int     `json:"alive"`
	Sent            int64   `json:"sent,omitempty"` // udp: datagrams sent (ops + lost)
	Lost            int64   `json:"lost,omitempty"` // udp: datagrams not echoed within -lost-after
	Late            int64   `json:"late,omitempty"` // udp: echoes that arrived after their datagram was counted lost
	DialRetries     int64   `json:"dial_retries"`
	Errors          int64   `json:"errors"`
	FirstError      string  `json:"first_error,omitempty"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		return 2
	}
	o, err := parseFlags(args[0], args[1:], stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "superbench: %v\n", err)
		return 2
	}
	raiseNoFile(stderr)

	d, err := newDialer(o) // checks that -addr is loopback (udp too)
	if err != nil {
		fmt.Fprintf(stderr, "superbench: %v\n", err)
		return 2
	}
	// The hard bound of the whole run: the measuring time plus the I/O
	// timeout for connecting, settling and draining.
	limit := o.duration + o.settle + 3*o.ioTimeout
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()

	var res Result
	switch o.mode {
	case "echo":
		res = runEcho(ctx, o, d)
	case "stream":
		res = runStream(ctx, o, d)
	case "connrate":
		res = runConnrate(ctx, o, d)
	case "idle":
		res = runIdle(ctx, o, d)
	case "chat":
		res = runChat(ctx, o, d)
	case "udp":
		res = runUDP(ctx, o)
	}
	res.Mode, res.Label, res.Addr, res.TLS = o.mode, o.label, o.addr, o.tls
	res.DialRetries = d.retried.Load()
	fmt.Fprintln(stdout, humanLine(&res))
	b, _ := json.Marshal(&res)
	fmt.Fprintln(stdout, string(b))
	if res.Errors > 0 {
		return 1
	}
	return 0
}

func parseFlags(mode string, args []string, stderr io.Writer) (*options, error) {
	o := &options{mode: mode}
	switch mode {
	case "echo", "stream", "connrate", "idle", "chat", "udp":
	default:
		return nil, fmt.Errorf("unknown mode %q\n%s", mode, usage)
	}
	defConns := map[string]int{"echo": 1, "stream": 8, "connrate": 8, "idle": 1000, "chat": 100, "udp": 64}[mode]
	defSize := map[string]int{"echo": 64, "stream": 32 << 10, "chat": 0, "udp": 64}[mode]
	fs := flag.NewFlagSet("superbench "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:7007", "target address (loopback only); chat: a comma-separated list spreads the users over the nodes of one room")
	fs.StringVar(&o.label, "label", "", "server label copied to the output")
	fs.IntVar(&o.conns, "conns", defConns, "connections (workers for connrate, users for chat, sockets for udp)")
	fs.DurationVar(&o.ioTimeout, "timeout", 10*time.Second, "longest wait for any one step (connect, handshake, reply)")
	fs.IntVar(&o.dialConcurrency, "dial-concurrency", 64, "most dials in flight at once")
	fs.DurationVar(&o.dialTimeout, "dial-timeout", 500*time.Millisecond, "timeout of one connection attempt, after which it is retried")
	fs.IntVar(&o.dialRetries, "dial-retries", 10, "retries of a connection attempt that failed transiently")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the random payloads")
	switch mode {
	case "echo", "stream", "connrate", "chat", "udp":
		fs.DurationVar(&o.duration, "duration", 3*time.Second, "how long to measure")
	}
	switch mode {
	case "echo", "stream", "idle":
		fs.BoolVar(&o.tls, "tls", false, "connect with TLS (certificate not verified: the target may be self-signed)")
	}
	switch mode {
	case "echo":
		fs.IntVar(&o.size, "size", defSize, "message size in bytes")
		fs.IntVar(&o.count, "count", 0, "messages per connection instead of -duration (0: use -duration)")
	case "stream":
		fs.IntVar(&o.size, "size", defSize, "bytes per write")
	case "connrate":
		fs.StringVar(&o.expect, "expect", "", "the exact quote expected (without its line ending); empty: any non-empty line")
		fs.StringVar(&o.eol, "eol", "crlf", "how the quote's line ends: crlf (qotd) or lf (a program such as /bin/echo)")
	case "idle":
		fs.IntVar(&o.pid, "pid", 0, "server process whose VmRSS is measured (0: no RSS measurement)")
		fs.DurationVar(&o.settle, "settle", 2*time.Second, "wait after the last connection before measuring")
	case "udp":
		fs.IntVar(&o.size, "size", defSize, "datagram size in bytes (the first 8 are a sequence number)")
		fs.IntVar(&o.count, "count", 0, "datagrams per sender instead of -duration (0: use -duration)")
		fs.DurationVar(&o.lostAfter, "lost-after", 200*time.Millisecond, "how long a sender waits for an echo before counting the datagram lost and sending the next")
		fs.Float64Var(&o.maxLost, "max-lost", 0.01, "the fraction of the datagrams sent that may be lost; more is an error")
	case "chat":
		fs.IntVar(&o.size, "size", 0, "pad each line to this many bytes (0: just the sequence number)")
		fs.IntVar(&o.lines, "lines", 50, "lines the sender sends per round")
		fs.IntVar(&o.rounds, "rounds", 0, "rounds to run instead of -duration (0: use -duration)")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if mode == "connrate" {
		switch o.eol {
		case "crlf":
			o.eol = "\r\n"
		case "lf":
			o.eol = "\n"
		default:
			return nil, fmt.Errorf("-eol must be crlf or lf, not %q", o.eol)
		}
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if mode != "chat" && strings.Contains(o.addr, ",") {
		return nil, errors.New("-addr takes several targets only in chat mode")
	}
	switch {
	case o.conns < 1:
		return nil, errors.New("-conns must be at least 1")
	case mode == "chat" && o.conns < 2:
		return nil, errors.New("chat needs at least 2 users")
	case mode == "chat" && o.lines < 1:
		return nil, errors.New("-lines must be at least 1")
	case (mode == "echo" || mode == "stream") && (o.size < 1 || o.size > 16<<20):
		return nil, errors.New("-size must be between 1 and 16 MiB")
	case mode == "udp" && (o.size < udpHeader || o.size > 65507):
		return nil, fmt.Errorf("-size must be between %d (the sequence number) and 65507 (the largest UDP payload over IPv4)", udpHeader)
	case mode == "udp" && (o.lostAfter <= 0 || o.maxLost < 0 || o.maxLost > 1):
		return nil, errors.New("-lost-after must be positive and -max-lost between 0 and 1")
	case o.duration < 0 || o.duration > time.Hour:
		return nil, errors.New("-duration must be between 0 and 1h")
	case o.ioTimeout <= 0 || o.dialTimeout <= 0:
		return nil, errors.New("-timeout and -dial-timeout must be positive")
	}
	if (mode == "echo" || mode == "udp") && o.count > 0 {
		o.duration = 0
	}
	return o, nil
}

func humanLine(r *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %-10s conns=%d", r.Mode, r.Label, r.Conns)
	if r.Size > 0 {
		fmt.Fprintf(&b, " size=%d", r.Size)
	}
	if r.TLS {
		b.WriteString(" tls")
	}
	fmt.Fprintf(&b, " %.2fs:", r.DurationS)
	switch r.Mode {
	case "echo", "udp":
		fmt.Fprintf(&b, " %.0f msgs/s", r.MsgsPerS)
	case "stream":
		fmt.Fprintf(&b, " %.1f MB/s", r.MBPerS)
	case "connrate":
		fmt.Fprintf(&b, " %.0f conns/s", r.ConnsPerS)
	case "chat":
		fmt.Fprintf(&b, " %.0f deliveries/s", r.DeliveriesPerS)
	case "idle":
		fmt.Fprintf(&b, " rss %.1f MiB -> %.1f MiB, %.0f B/conn, alive %d/%d",
			float64(r.RSSBeforeBytes)/(1<<20), float64(r.RSSAfterBytes)/(1<<20), r.RSSPerConnBytes, r.Alive, r.Conns)
	}
	if r.Mode != "idle" && r.Mode != "stream" {
		fmt.Fprintf(&b, " p50=%.0fus p99=%.0fus p999=%.0fus", r.P50Us, r.P99Us, r.P999Us)
	}
	if r.Mode == "udp" {
		fmt.Fprintf(&b, " lost=%d/%d late=%d", r.Lost, r.Sent, r.Late)
	}
	if r.Nodes > 1 {
		fmt.Fprintf(&b, " nodes=%d remote p50=%.0fus p99=%.0fus p999=%.0fus", r.Nodes, r.RemoteP50Us, r.RemoteP99Us, r.RemoteP999Us)
	}
	fmt.Fprintf(&b, " errors=%d", r.Errors)
	if r.DialRetries > 0 {
		fmt.Fprintf(&b, " dial_retries=%d", r.DialRetries)
	}
	if r.FirstError != "" {
		fmt.Fprintf(&b, " (first: %s)", r.FirstError)
	}
	return b.String()
}

// fillLatency copies the quantiles of h into r.
func fillLatency(r *Result, h *Hist) {
	r.P50Us = h.QuantileMicros(0.50)
	r.P99Us = h.QuantileMicros(0.99)
	r.P999Us = h.QuantileMicros(0.999)
}

// closeAll closes every non-nil connection.
func closeAll[C io.Closer](conns []C) {
	for _, c := range conns {
		if any(c) != nil {
			c.Close()
		}
	}
}
