// Command matrix runs the benchmark matrix of `make bench`: each cell runs
// superbench against superd and against the baseline server, alternating
// the two run by run, each server started fresh for each run on free
// loopback ports. It prints one table with the ratio superd/baseline per
// cell (the median of the per-run ratios) and writes it as Markdown.
//
//	matrix [-runs 8] [-duration 2s] [-cells E1,CHAT] [-out bench/results.md]
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const quote = "An apple a day keeps the doctor away"

// result is the part of superbench's JSON line the matrix uses.
type result struct {
	Mode            string  `json:"mode"`
	Label           string  `json:"label"`
	DurationS       float64 `json:"duration_s"`
	Ops             int64   `json:"ops"`
	MsgsPerS        float64 `json:"msgs_per_s"`
	MBPerS          float64 `json:"mb_per_s"`
	ConnsPerS       float64 `json:"conns_per_s"`
	DeliveriesPerS  float64 `json:"deliveries_per_s"`
	P50Us           float64 `json:"p50_us"`
	P99Us           float64 `json:"p99_us"`
	P999Us          float64 `json:"p999_us"`
	RSSBeforeBytes  int64   `json:"rss_before_bytes"`
	RSSAfterBytes   int64   `json:"rss_after_bytes"`
	RSSPerConnBytes float64 `json:"rss_per_conn_bytes"`
	Alive           int     `json:"alive"`
	Sent            int64   `json:"sent"` // udp: datagrams sent
	Lost            int64   `json:"lost"` // udp: not echoed in time
	Late            int64   `json:"late"` // udp: echoed after being counted lost
	Conns           int     `json:"conns"`
	DialRetries     int64   `json:"dial_retries"`
	Errors          int64   `json:"errors"`
	FirstError      string  `json:"first_error"`
	Nodes           int     `json:"nodes"`
	RemoteP99Us     float64 `json:"remote_p99_us"`

	failed string // why the run does not count ("" if it does)
	// besideRate is the rate of the cell's load beside (its metric), NaN
	// without one.
	besideRate float64
	// The server's CPU per connection made, in µs, over the measured run
	// (cells with cpu): its own (utime+stime) and that of its children
	// reaped meanwhile (cutime+cstime). NaN when not measured.
	cpuUs, childCPUUs float64
}

// metric is the number a cell compares.
func (r *result) metric() float64 {
	switch r.Mode {
	case "echo", "udp":
		return r.MsgsPerS
	case "stream":
		return r.MBPerS
	case "connrate":
		return r.ConnsPerS
	case "chat":
		return r.DeliveriesPerS
	case "idle":
		return r.RSSPerConnBytes
	}
	return math.NaN()
}

// target is which service of a server a cell loads.
type target int

const (
	tEcho target = iota
	tTLS
	tQotd
	tChat
	tExec // a program per connection: /bin/echo QUOTE
	tUDP  // echo over udp
	nTargets
)

type cell struct {
	id, desc, unit string
	target         target
	args           []string // superbench arguments after the mode's -addr
	timed          bool     // takes -duration
	idle           bool     // RSS per connection: lower is better, needs -pid
	cpu            bool     // also report the server's CPU per operation (connection, or datagram for udp)
	// cpus confines the server and superbench to these CPUs (nil: the
	// kernel places them). See E1.
	cpus []int
	// nodes > 1: a chat room across that many superd nodes (a cluster of
	// embedded NATS servers) against one superd (see CHATX).
	nodes int
	// maxRuns, when set, caps the runs per server of this cell below -runs.
	maxRuns int
	// beside, when set, is a second superbench load (mode and flags, as
	// args) on another of the server's services, besideTarget, that runs
	// through the whole measured run: the cell measures what that load
	// leaves the service it measures.
	beside       []string
	besideTarget target
}

var cells = []cell{
	// One connection's round trip is decided by where the kernel puts the
	// two processes' threads: sharing a CPU, a round trip here takes about
	// 22 µs; on two CPUs, 63 µs (waking an idle virtual CPU costs more than
	// either server's work), for superd and the baseline alike. Left to the
	// kernel (E1F), each run lands on one or the other, and the ratio of a
	// run pair is 0.4 or 2.3 as often as 1. E1 therefore puts both
	// processes on CPU 0, where the round trip is their work alone.
	{id: "E1", desc: "echo 1 conn 64 B (both on CPU 0)", unit: "msgs/s", target: tEcho, timed: true,
		args: []string{"echo", "-conns", "1", "-size", "64"}, cpus: []int{0}},
	{id: "E1F", desc: "echo 1 conn 64 B (placed by the kernel)", unit: "msgs/s", target: tEcho, timed: true,
		args: []string{"echo", "-conns", "1", "-size", "64"}},
	{id: "E64", desc: "echo 64 conns 64 B", unit: "msgs/s", target: tEcho, timed: true,
		args: []string{"echo", "-conns", "64", "-size", "64"}},
	{id: "E16K", desc: "echo 64 conns 16 KiB", unit: "msgs/s", target: tEcho, timed: true,
		args: []string{"echo", "-conns", "64", "-size", "16384"}},
	{id: "S8", desc: "stream 8 conns (32 KiB writes)", unit: "MB/s", target: tEcho, timed: true,
		args: []string{"stream", "-conns", "8", "-size", "32768"}},
	{id: "CR", desc: "connrate 8 workers (qotd)", unit: "conns/s", target: tQotd, timed: true,
		args: []string{"connrate", "-conns", "8", "-expect", quote}},
	// A program per connection: superd's exec factory against os/exec in
	// the baseline, both handing the socket itself to /bin/echo, whose line
	// ends in a bare LF.
	{id: "CRX", desc: "connrate 8 workers (exec /bin/echo)", unit: "conns/s", target: tExec, timed: true, cpu: true,
		args: []string{"connrate", "-conns", "8", "-expect", quote, "-eol", "lf"}},
	// A superserver runs many services at once: one echo connection's
	// round trips while CRX's load starts programs beside it, in the same
	// server. What a server does while its children run (a thread blocked
	// in waitid per child, as os/exec does, or a pidfd in the poller)
	// shows here, not in CRX.
	{id: "E1CRX", desc: "echo 1 conn 64 B beside CRX's load", unit: "msgs/s", target: tEcho, timed: true, maxRuns: 4,
		args:   []string{"echo", "-conns", "1", "-size", "64"},
		beside: []string{"connrate", "-conns", "8", "-expect", quote, "-eol", "lf"}, besideTarget: tExec},
	// UDP echo: 64 sockets, each sending a datagram and waiting for its
	// echo; superd's batched recvmmsg/sendmmsg against one goroutine doing
	// ReadFromUDP and WriteToUDP.
	{id: "U64", desc: "udp echo 64 senders 64 B", unit: "msgs/s", target: tUDP, timed: true,
		args: []string{"udp", "-conns", "64", "-size", "64"}, cpu: true},
	{id: "IDLE", desc: "5000 idle conns", unit: "B/conn", target: tEcho, idle: true,
		args: []string{"idle", "-conns", "5000", "-settle", "2s"}},
	{id: "CHAT", desc: "chat 200 users x 50 lines", unit: "deliv/s", target: tChat, timed: true,
		args: []string{"chat", "-conns", "200", "-lines", "50"}},
	{id: "TLS", desc: "echo 64 conns 64 B over TLS", unit: "msgs/s", target: tTLS, timed: true,
		args: []string{"echo", "-tls", "-conns", "64", "-size", "64"}},
	{id: "IDLE15K", desc: "15,000 idle conns held", unit: "B/conn", target: tEcho, idle: true,
		args: []string{"idle", "-conns", "15000", "-settle", "2s"}},
	// CHAT across three superd nodes (cluster = true, embedded NATS
	// servers routed on loopback), users spread over them, the sender on
	// the first: the "superd" column is the three nodes, the "baseline"
	// column one superd under the same load (CHAT's server). Each cluster
	// run starts three fresh nodes and waits for JetStream, so the cell
	// runs fewer times.
	{id: "CHATX", desc: "chat 200 users x 50 lines, 3 nodes vs 1", unit: "deliv/s", target: tChat, timed: true, nodes: 3, maxRuns: 4,
		args: []string{"chat", "-conns", "200", "-lines", "50"}},
}

type options struct {
	superd, baseline, superbench string
	runs                         int
	duration                     time.Duration
	budget                       time.Duration
	out                          string
	cells                        string
	keep                         bool
}

func main() {
	var o options
	flag.StringVar(&o.superd, "superd", "bin/superd", "superd binary")
	flag.StringVar(&o.baseline, "baseline", "bin/baseline", "baseline server binary")
	flag.StringVar(&o.superbench, "superbench", "bin/superbench", "superbench binary")
	flag.IntVar(&o.runs, "runs", 8, "runs per server per cell (at least 3 for a meaningful median; even, so each server goes first equally often)")
	flag.DurationVar(&o.duration, "duration", 2*time.Second, "measuring time of each timed run")
	flag.DurationVar(&o.budget, "budget", 9*time.Minute+30*time.Second, "no run starts after this much time (the rest is reported as skipped)")
	flag.StringVar(&o.out, "out", "bench/results.md", "Markdown file for the results (empty: none)")
	flag.StringVar(&o.cells, "cells", "", "comma-separated cell ids to run (empty: all)")
	flag.BoolVar(&o.keep, "keep", false, "keep the working folder (configurations, server logs)")
	flag.Parse()
	if o.runs < 1 {
		fmt.Fprintln(os.Stderr, "matrix: -runs must be at least 1")
		os.Exit(2)
	}
	os.Exit(run(&o))
}

// server is one running server process.
type server struct {
	name  string
	cmd   *exec.Cmd
	addrs [nTargets]string // by target
	log   string
	done  chan struct{}
	err   error
	// chatOnly: a cluster node, serving only chat (CHATX).
	chatOnly bool
	// peers are the other nodes of a cluster (CHATX); addrs[tChat] then
	// lists every node's chat address, this one's first.
	peers []*server
}

func run(o *options) int {
	start := time.Now()
	selected := cells
	if o.cells != "" {
		selected = nil
		for id := range strings.SplitSeq(o.cells, ",") {
			i := slices.IndexFunc(cells, func(c cell) bool { return strings.EqualFold(c.id, strings.TrimSpace(id)) })
			if i < 0 {
				fmt.Fprintf(os.Stderr, "matrix: unknown cell %q\n", id)
				return 2
			}
			selected = append(selected, cells[i])
		}
	}
	for _, p := range []string{o.superd, o.baseline, o.superbench} {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(os.Stderr, "matrix: %v (build it first: bench/run.sh does)\n", err)
			return 2
		}
	}
	work, err := os.MkdirTemp("", "superd-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "matrix:", err)
		return 1
	}
	failed := false
	defer func() {
		if o.keep || failed {
			fmt.Printf("working folder kept: %s\n", work)
		} else {
			os.RemoveAll(work)
		}
	}()

	machine := machineInfo()
	if out, err := exec.Command(o.superd, "version").Output(); err == nil {
		machine += ", " + strings.TrimSpace(string(out))
	}
	loadStart := loadAvg()
	fmt.Println(machine)
	fmt.Println("load average at start:", loadStart)
	fmt.Printf("runs per server per cell: %d, timed runs %v each, servers alternate run by run, each started fresh per run\n\n", o.runs, o.duration)

	// A Ctrl-C stops the matrix and whatever server is running.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	type cellResult struct {
		cell
		superd, baseline []*result // by run index; nil when not run
		skipped          bool
	}
	var all []*cellResult
	seq := 0
	for _, c := range selected {
		cr := &cellResult{cell: c, superd: make([]*result, o.runs), baseline: make([]*result, o.runs)}
		all = append(all, cr)
		for i := range o.runs {
			if c.maxRuns > 0 && i >= c.maxRuns {
				break
			}
			if ctx.Err() != nil || time.Since(start) > o.budget {
				cr.skipped = true
				break
			}
			order := []string{"superd", "baseline"}
			if i%2 == 1 {
				order = []string{"baseline", "superd"}
			}
			for _, name := range order {
				seq++
				r := runOne(ctx, o, work, seq, name, c)
				if r.failed != "" {
					failed = true
				}
				if name == "superd" {
					cr.superd[i] = r
				} else {
					cr.baseline[i] = r
				}
			}
		}
	}

	// The table.
	var t table
	t.header = []string{"cell", "workload", "unit", "superd", "baseline", "superd/baseline", "per-run ratios", "p99 superd / baseline (µs)", "verdict"}
	var notes []string
	for _, cr := range all {
		var ratios, sd, bl, sdP99, blP99 []float64
		var cpuRatios, sdCPU, blCPU, sdChild, blChild []float64 // cells with cpu
		var sdRemoteP99 []float64                               // CHATX: receivers on another node
		var sdBeside, blBeside []float64                        // the load beside's rate
		errs := 0
		for i := range o.runs {
			s, b := cr.superd[i], cr.baseline[i]
			for _, r := range []*result{s, b} {
				if r != nil && r.failed != "" {
					errs++
				}
			}
			if s == nil || b == nil || s.failed != "" || b.failed != "" {
				continue
			}
			sd, bl = append(sd, s.metric()), append(bl, b.metric())
			sdP99, blP99 = append(sdP99, s.P99Us), append(blP99, b.P99Us)
			if s.Nodes > 1 {
				sdRemoteP99 = append(sdRemoteP99, s.RemoteP99Us)
			}
			if cr.beside != nil {
				sdBeside, blBeside = append(sdBeside, s.besideRate), append(blBeside, b.besideRate)
			}
			if b.metric() > 0 {
				ratios = append(ratios, s.metric()/b.metric())
			}
			if cr.cpu && !math.IsNaN(s.cpuUs) && !math.IsNaN(b.cpuUs) {
				sdCPU, blCPU = append(sdCPU, s.cpuUs), append(blCPU, b.cpuUs)
				sdChild, blChild = append(sdChild, s.childCPUUs), append(blChild, b.childCPUUs)
				if b.cpuUs > 0 {
					cpuRatios = append(cpuRatios, s.cpuUs/b.cpuUs)
				}
			}
		}
		row := []string{cr.id, cr.desc, cr.unit, num(median(sd)), num(median(bl)), "", "", "", ""}
		if len(ratios) > 0 {
			ratio := median(ratios)
			row[5] = fmt.Sprintf("**%.2f**", ratio)
			var rs []string
			for _, r := range ratios {
				rs = append(rs, fmt.Sprintf("%.2f", r))
			}
			row[6] = strings.Join(rs, " ")
			row[8] = verdict(ratio, cr.idle)
		} else {
			row[5] = "n/a"
		}
		if !cr.idle && cr.args[0] != "stream" && len(sdP99) > 0 {
			row[7] = fmt.Sprintf("%s / %s", num(median(sdP99)), num(median(blP99)))
		}
		if errs > 0 {
			row[8] += fmt.Sprintf(" (%d failed runs)", errs)
		}
		if cr.skipped {
			row[8] += " (time budget: runs skipped)"
		}
		t.rows = append(t.rows, row)
		if cr.id == "IDLE15K" && len(sd) > 0 {
			per := median(sd)
			var base []float64
			for _, s := range cr.superd {
				if s != nil && s.failed == "" {
					base = append(base, float64(s.RSSBeforeBytes))
				}
			}
			notes = append(notes, fmt.Sprintf("IDLE15K: superd holds 15,000 idle connections at %s of RSS each (on top of %s before connecting): "+
				"linearly that is %.1f GiB for 1,000,000 connections (the baseline: %s each, %.1f GiB). "+
				"superbench and the server are separate processes, each holding 15,000 sockets under the 20,000 open-file limit.",
				bytesStr(per), bytesStr(median(base)), per*1e6/(1<<30), bytesStr(median(bl)), median(bl)*1e6/(1<<30)))
		}
		if len(sdCPU) > 0 {
			notes = append(notes, cpuNote(cr.id, cr.args[0], sdCPU, blCPU, sdChild, blChild, cpuRatios))
		}
		if cr.args[0] == "udp" {
			notes = append(notes, lossNote(cr.id, cr.superd, cr.baseline))
		}
		if cr.beside != nil && len(sdBeside) > 0 {
			notes = append(notes, besideNote(cr.cell, median(sdBeside), median(blBeside)))
		}
		if cr.nodes > 1 && len(sd) > 0 {
			notes = append(notes, fmt.Sprintf("%s: the superd column is %d superd nodes of one chat room (cluster = true, each embedding a NATS server routed to the others on loopback, all on this machine's %d CPUs with superbench), the users spread over them and the sender on the first; the baseline column is one superd (CHAT's server) under the same load, so the ratio is what spanning nodes costs. "+
				"The p99 column is over every receiver; the receivers on another node than the sender's alone: p99 %s µs (median over runs). No target: measured as it is.",
				cr.id, cr.nodes, runtime.NumCPU(), num(median(sdRemoteP99))))
		}
	}
	notes = append(notes,
		"Ratio: superd/baseline per run pair, median over runs. Throughput cells: higher is better. IDLE cells: RSS growth per connection (VmRSS after connecting and settling, minus before, over connections), lower is better.",
		"Every byte is verified: echo compares each random message (U64: each datagram, with its sequence number), stream each byte of a seeded pattern, connrate the exact quote (CRX: with /bin/echo's bare LF), chat the sender, sequence and text of every line at every user, idle a one-byte echo on every connection after the RSS reading.",
		"The machine is shared and noisy, and superbench runs on the same cores as the server: the per-run ratios show the spread, and a median inside that spread of 1.00 is a tie (the verdict says tie only within 5%).",
		"E1 confines the server and superbench to CPU 0 (a Go server then runs with GOMAXPROCS 1): with one connection, whether the kernel puts the two processes on one CPU or on two decides the round trip (about 22 µs against 63 µs on these virtual CPUs, for either server), so E1F, the same load left to the kernel, swings run by run between pair ratios near 0.4, 1 and 2.3.")
	elapsed := time.Since(start).Round(time.Second)
	loadEnd := loadAvg()
	notes = append(notes, fmt.Sprintf("Load average (1, 5, 15 min) at start %s (before any run: other work on the machine), at end %s. With %d CPUs, a load near or above the CPU count at start means the runs competed with other work, which mostly shows in the throughput cells; the RSS cells are not affected.", loadStart, loadEnd, runtime.NumCPU()))
	fmt.Println()
	fmt.Print(t.markdown())
	fmt.Println()
	for _, n := range notes {
		fmt.Println("- " + n)
	}
	fmt.Printf("\nmatrix finished in %v\n", elapsed)

	if o.out != "" {
		var b bytes.Buffer
		fmt.Fprintf(&b, "# superd vs baseline (`make bench`)\n\n%s, run %s, took %v.\n\n", strings.ReplaceAll(machine, "\n", "; "), time.Now().UTC().Format("2006-01-02 15:04 MST"), elapsed)
		fmt.Fprintf(&b, "%d runs per server per cell, timed runs %v each; the servers alternate run by run and each is started fresh for each run on free loopback ports.\n\n", o.runs, o.duration)
		b.WriteString(t.markdown())
		b.WriteString("\n")
		for _, n := range notes {
			b.WriteString("- " + n + "\n")
		}
		b.WriteString("\n## Every run\n\n")
		var raw table
		raw.header = []string{"cell", "run", "server", "value", "p50 µs", "p99 µs", "p999 µs", "errors", "dial retries", "note"}
		for _, cr := range all {
			for i := range o.runs {
				for _, r := range []*result{cr.superd[i], cr.baseline[i]} {
					if r == nil {
						continue
					}
					note := r.failed
					if r.Mode == "udp" {
						note = strings.TrimSpace(fmt.Sprintf("lost %d of %d, late %d %s", r.Lost, r.Sent, r.Late, note))
					}
					if cr.cpu && !math.IsNaN(r.cpuUs) {
						per := opName(cr.args[0])
						if per == "datagram" {
							note = strings.TrimSpace(fmt.Sprintf("server CPU %s µs/datagram, %s", num(r.cpuUs), note))
						} else {
							note = strings.TrimSpace(fmt.Sprintf("server CPU %s µs/conn, children %s µs/conn %s", num(r.cpuUs), num(r.childCPUUs), note))
						}
					}
					if cr.beside != nil && !math.IsNaN(r.besideRate) {
						note = strings.TrimSpace(fmt.Sprintf("load beside %s %s %s", num(r.besideRate), unitOf(cr.beside[0]), note))
					}
					if cr.idle {
						note = strings.TrimSpace(fmt.Sprintf("rss %s -> %s, alive %d/%d %s", bytesStr(float64(r.RSSBeforeBytes)), bytesStr(float64(r.RSSAfterBytes)), r.Alive, r.Conns, note))
					}
					raw.rows = append(raw.rows, []string{cr.id, strconv.Itoa(i + 1), r.Label, num(r.metric()) + " " + cr.unit,
						num(r.P50Us), num(r.P99Us), num(r.P999Us), strconv.FormatInt(r.Errors, 10), strconv.FormatInt(r.DialRetries, 10), note})
				}
			}
		}
		b.WriteString(raw.markdown())
		if err := os.WriteFile(o.out, b.Bytes(), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "matrix:", err)
			return 1
		}
		fmt.Printf("results written to %s\n", o.out)
	}
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}

// opName is what a mode's operations are, for the server's CPU per
// operation.
func opName(mode string) string {
	if mode == "udp" {
		return "datagram"
	}
	return "connection"
}

// cpuNote reports a cell's server CPU per operation (connection, or
// datagram echoed for mode udp): medians over the counted run pairs, lower
// is better.
func cpuNote(id, mode string, sd, bl, sdChild, blChild, ratios []float64) string {
	var rs []string
	for _, r := range ratios {
		rs = append(rs, fmt.Sprintf("%.2f", r))
	}
	per := opName(mode)
	n := fmt.Sprintf("%s: server CPU per %s (the server process's utime+stime from /proc/PID/stat, read before and after the measured run, "+
		"over the %ss %s; 10 ms ticks), lower is better: superd %s µs, baseline %s µs, superd/baseline %.2f (per run pair: %s).",
		id, per, per, map[string]string{"datagram": "echoed", "connection": "made"}[per],
		num(median(sd)), num(median(bl)), median(ratios), strings.Join(rs, " "))
	if per == "connection" {
		n += fmt.Sprintf(" Their children, counted when reaped (cutime+cstime, the programs run), apart: superd %s µs, baseline %s µs per connection.",
			num(median(sdChild)), num(median(blChild)))
	}
	return n
}

// besideNote says what a cell's load beside was and the rate it ran at
// (medians over the counted runs).
func besideNote(c cell, superd, baseline float64) string {
	var args []string
	for i := 0; i < len(c.beside); i++ {
		if c.beside[i] == "-expect" { // the quote: long, and in the CRX note already
			i++
			continue
		}
		args = append(args, c.beside[i])
	}
	return fmt.Sprintf("%s: the load beside (superbench %s against the %s service, from %v before the measured run until a second after it) ran at %s %s against superd and %s against the baseline.",
		c.id, strings.Join(args, " "), targetName[c.besideTarget], besideLead, num(superd), unitOf(c.beside[0]), num(baseline))
}

// unitOf is the unit of a superbench mode's metric.
func unitOf(mode string) string {
	switch mode {
	case "echo", "udp":
		return "msgs/s"
	case "stream":
		return "MB/s"
	case "connrate":
		return "conns/s"
	case "chat":
		return "deliv/s"
	}
	return "B/conn"
}

// targetName names a target in notes.
var targetName = [nTargets]string{tEcho: "echo", tTLS: "TLS echo", tQotd: "qotd", tChat: "chat", tExec: "exec (/bin/echo per connection)", tUDP: "udp echo"}

// lossNote reports the datagrams a udp cell lost, over all its runs
// (failed ones too: more than 1% lost fails a run).
func lossNote(id string, sd, bl []*result) string {
	sum := func(rs []*result) string {
		var sent, lost, late int64
		for _, r := range rs {
			if r != nil {
				sent, lost, late = sent+r.Sent, lost+r.Lost, late+r.Late
			}
		}
		pct := 0.0
		if sent > 0 {
			pct = 100 * float64(lost) / float64(sent)
		}
		return fmt.Sprintf("%d of %d (%.3f%%, %d of them echoed late)", lost, sent, pct, late)
	}
	return fmt.Sprintf("%s: datagrams lost (not echoed within superbench's -lost-after, 200 ms), over every run: superd %s, baseline %s. "+
		"A run losing more than 1%% of what it sent is failed; a loss costs its sender the 200 ms wait.", id, sum(sd), sum(bl))
}

var rlimitShown bool

// runOne starts server name fresh, runs cell c against it, stops it.
func runOne(ctx context.Context, o *options, work string, seq int, name string, c cell) *result {
	fail := func(format string, a ...any) *result {
		r := &result{Label: name, Mode: c.args[0], failed: fmt.Sprintf(format, a...), cpuUs: math.NaN(), childCPUUs: math.NaN(), besideRate: math.NaN()}
		fmt.Printf("%-8s %-8s FAILED: %s\n", c.id, name, r.failed)
		return r
	}
	var s *server
	var err error
	label := name
	switch {
	case c.nodes > 1 && name == "superd":
		label = fmt.Sprintf("superd x%d", c.nodes)
		s, err = startChatCluster(ctx, o, work, seq, c.nodes)
	case c.nodes > 1:
		label = "superd x1"
		s, err = startServer(ctx, o, work, seq, "superd", c.cpus)
	default:
		s, err = startServer(ctx, o, work, seq, name, c.cpus)
	}
	if err != nil {
		return fail("%v", err)
	}
	defer s.stop()

	args := append([]string{c.args[0], "-addr", s.addrs[c.target], "-label", label}, c.args[1:]...)
	if c.timed {
		args = append(args, "-duration", o.duration.String())
	}
	if c.idle {
		args = append(args, "-pid", strconv.Itoa(s.cmd.Process.Pid))
	}
	rctx, cancel := context.WithTimeout(ctx, o.duration+90*time.Second)
	defer cancel()
	var beside *besideLoad
	if c.beside != nil {
		if beside, err = startBeside(rctx, o, s, c, label); err != nil {
			return fail("load beside: %v", err)
		}
		defer beside.stop()
	}
	cmd := exec.CommandContext(rctx, o.superbench, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The server's CPU time is read just before superbench starts and just
	// after it ends: readiness probes and shutdown are left out.
	var cpu0, cpu1 cpuTimes
	var cpuErr error
	if c.cpu {
		cpu0, cpuErr = procCPU(s.cmd.Process.Pid)
	}
	runErr := startOn(cmd, c.cpus)
	if runErr == nil {
		runErr = cmd.Wait()
	}
	if c.cpu && cpuErr == nil {
		cpu1, cpuErr = procCPU(s.cmd.Process.Pid)
	}
	if !rlimitShown {
		for line := range strings.Lines(stderr.String()) {
			if strings.Contains(line, "RLIMIT_NOFILE") {
				fmt.Print(line)
				rlimitShown = true
			}
		}
	}
	r, err := benchResult(c.id, stdout.String())
	if err != nil {
		return fail("%v", err)
	}
	if r == nil {
		return fail("superbench %v: %v\n%s", args, runErr, tail(stderr.String(), 10))
	}
	r.cpuUs, r.childCPUUs, r.besideRate = math.NaN(), math.NaN(), math.NaN()
	var besideErr error
	if beside != nil {
		var br *result
		if br, besideErr = beside.wait(c.id); br != nil {
			r.besideRate = br.metric()
		}
	}
	if c.cpu && cpuErr == nil && r.Ops > 0 {
		r.cpuUs = (cpu1.self - cpu0.self) / float64(r.Ops) * 1e6
		r.childCPUUs = (cpu1.children - cpu0.children) / float64(r.Ops) * 1e6
		if opName(c.args[0]) == "datagram" {
			fmt.Printf("%-8s %-10s server CPU %.2f µs/datagram (%d datagrams)\n", c.id, name, r.cpuUs, r.Ops)
		} else {
			fmt.Printf("%-8s %-10s server CPU %.0f µs/conn, its children %.0f µs/conn (%d conns)\n", c.id, name, r.cpuUs, r.childCPUUs, r.Ops)
		}
	}
	switch {
	case r.Errors > 0:
		r.failed = fmt.Sprintf("%d errors, first: %s", r.Errors, r.FirstError)
	case runErr != nil:
		r.failed = fmt.Sprintf("superbench: %v", runErr)
	case c.idle && idleFailed(r) != "":
		r.failed = idleFailed(r)
	case s.exited():
		r.failed = fmt.Sprintf("%s exited during the run: %v", name, s.err)
	case c.cpu && cpuErr != nil:
		r.failed = fmt.Sprintf("server CPU: %v", cpuErr)
	case besideErr != nil:
		r.failed = fmt.Sprintf("load beside: %v", besideErr)
	}
	if r.failed != "" {
		fmt.Printf("%-8s %-8s FAILED: %s\n%s", c.id, name, r.failed, tail(readFile(s.log), 10))
	}
	return r
}

// idleFailed says why an idle run's reading does not count ("" if it
// does): a connection not alive, or no RSS growth to divide (none
// measured, or the server's RSS shrank meanwhile, as when the runtime
// gives memory back to the system: no figure at all, not a negative one).
func idleFailed(r *result) string {
	if r.Alive != r.Conns || !(r.RSSPerConnBytes > 0) {
		return fmt.Sprintf("alive %d of %d, rss per connection %v", r.Alive, r.Conns, r.RSSPerConnBytes)
	}
	return ""
}

// benchResult finds superbench's JSON result in its output (nil if there
// is none) and prints the other lines, under the cell's id.
func benchResult(id, out string) (*result, error) {
	var r *result
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "{") {
			r = new(result)
			if err := json.Unmarshal([]byte(line), r); err != nil {
				return nil, fmt.Errorf("superbench output %q: %v", line, err)
			}
		} else {
			fmt.Printf("%-8s %s", id, line)
		}
	}
	return r, nil
}

// besideLead is how long a cell's load beside runs before the measured run
// starts: its workers are connected and busy by then.
const besideLead = 500 * time.Millisecond

// besideLoad is a cell's load beside (see cell.beside), one superbench
// process.
type besideLoad struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	waited         bool
}

// startBeside starts c's load beside against server s, to run besideLead
// before the measured run and a second past its end, and returns once the
// lead has passed.
func startBeside(ctx context.Context, o *options, s *server, c cell, label string) (*besideLoad, error) {
	args := append([]string{c.beside[0], "-addr", s.addrs[c.besideTarget], "-label", label + " beside"}, c.beside[1:]...)
	args = append(args, "-duration", (besideLead + o.duration + time.Second).String())
	b := &besideLoad{cmd: exec.CommandContext(ctx, o.superbench, args...)}
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.stderr
	if err := startOn(b.cmd, c.cpus); err != nil {
		return nil, err
	}
	lead := time.NewTimer(besideLead)
	defer lead.Stop()
	select {
	case <-lead.C:
	case <-ctx.Done():
	}
	return b, nil
}

// wait waits for the load to end by itself and gives its result; a load
// that saw errors is an error.
func (b *besideLoad) wait(id string) (*result, error) {
	b.waited = true
	err := b.cmd.Wait()
	r, perr := benchResult(id, b.stdout.String())
	switch {
	case perr != nil:
		return nil, perr
	case r == nil:
		return nil, fmt.Errorf("superbench: %v\n%s", err, tail(b.stderr.String(), 10))
	case r.Errors > 0:
		return r, fmt.Errorf("%d errors, first: %s", r.Errors, r.FirstError)
	case err != nil:
		return r, fmt.Errorf("superbench: %v", err)
	}
	return r, nil
}

// stop ends the load if the run ended before waiting for it.
func (b *besideLoad) stop() {
	if !b.waited {
		b.cmd.Process.Kill()
		b.cmd.Wait()
	}
}

// startServer starts superd or the baseline on fresh loopback ports, one
// per target, and waits until every service answers.
func startServer(ctx context.Context, o *options, work string, seq int, name string, cpus []int) (*server, error) {
	ports, err := freePorts(int(nTargets))
	if err != nil {
		return nil, err
	}
	// The udp target's port is free for udp, not for tcp.
	if ports[tUDP], err = freeUDPPort(); err != nil {
		return nil, err
	}
	s := &server{name: name, done: make(chan struct{}), log: filepath.Join(work, fmt.Sprintf("%03d-%s.log", seq, name))}
	for i, p := range ports {
		s.addrs[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	var args []string
	bin := o.baseline
	if name == "superd" {
		bin = o.superd
		cfg := filepath.Join(work, fmt.Sprintf("%03d-superd.hcl", seq))
		if err := os.WriteFile(cfg, []byte(superdConfig(s.addrs)), 0o644); err != nil {
			return nil, err
		}
		args = []string{"run", "-config", cfg, "-log-level", "warn"}
	} else {
		args = []string{"-echo", s.addrs[tEcho], "-tls", s.addrs[tTLS], "-qotd", s.addrs[tQotd], "-chat", s.addrs[tChat], "-exec", s.addrs[tExec], "-udp", s.addrs[tUDP], "-quote", quote}
	}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := startOn(s.cmd, cpus); err != nil {
		return nil, err
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	if err := s.waitReady(ctx, 15*time.Second); err != nil {
		s.stop()
		return nil, fmt.Errorf("%s not ready: %v\n%s", name, err, tail(readFile(s.log), 10))
	}
	return s, nil
}

// superdConfig: echo (TCP and TLS with a self-signed certificate), qotd,
// chat, exec (/bin/echo QUOTE per connection, nowait: the child's stdin
// and stdout are the socket) and echo over udp, metrics off, no connection
// limits, room for chat's output.
//
// The udp echo sets a per-source rate limit that never throttles, on
// purpose: a built-in service on udp otherwise gets rate_limit_per_ip
// { rate = 10, burst = 20 }, which protects real deployments from
// reflection floods and would drop nearly all of U64's datagrams (all come
// from 127.0.0.1). With it set, superd still takes a token per datagram,
// as it does in production.
func superdConfig(addrs [nTargets]string) string {
	return fmt.Sprintf(`# written by bench/matrix
metrics {
  address = ""
}

shutdown_timeout = "5s"

service "echo" "echo" {
  max_connections = 0
  endpoint "tcp" { address = %q }
  endpoint "tls" {
    address     = %q
    self_signed = true
  }
}

service "qotd" "qotd" {
  max_connections = 0
  quote           = %q
  endpoint "tcp" { address = %q }
}

service "chat" "chat" {
  max_connections    = 0
  max_pending_output = 67108864
  endpoint "tcp" { address = %q }
}

service "exec" "crx" {
  max_connections = 0
  command         = ["/bin/echo", %q]
  endpoint "tcp" { address = %q }
}

# U64. A benchmark setting, not a recommendation: the default for built-in
# services on udp (rate 10, burst 20 per source) would drop the load.
service "echo" "udp-echo" {
  rate_limit_per_ip {
    rate  = 1e9
    burst = 2147483647
  }
  endpoint "udp" { address = %q }
}
`, addrs[tEcho], addrs[tTLS], quote, addrs[tQotd], addrs[tChat], quote, addrs[tExec], addrs[tUDP])
}

func (s *server) exited() bool {
	for _, p := range s.peers {
		if p.exited() {
			return true
		}
	}
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// waitReady polls every service until it answers as it should.
func (s *server) waitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		if s.exited() {
			return fmt.Errorf("exited: %v", s.err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if last = s.probe(); last == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return last
}

func (s *server) probe() error {
	for t, addr := range s.addrs {
		if s.chatOnly && target(t) != tChat {
			continue
		}
		if target(t) == tUDP {
			if err := probeUDP(addr, 2*time.Second); err != nil {
				return err
			}
			continue
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		switch target(t) {
		case tTLS:
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
			err = tc.Handshake()
			if err == nil {
				err = tc.Close()
			}
		case tQotd, tExec:
			service, want := "qotd", quote+"\r\n"
			if target(t) == tExec {
				service, want = "exec", quote+"\n" // /bin/echo's line
			}
			var b []byte
			b, err = io.ReadAll(c)
			if err == nil && string(b) != want {
				err = fmt.Errorf("%s sent %q", service, b)
			}
		case tChat:
			var line string
			line, err = bufio.NewReader(c).ReadString('\n')
			if err == nil && line != "What's your name?\r\n" {
				err = fmt.Errorf("chat sent %q", line)
			}
		}
		c.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// probeUDP sends a datagram to a udp echo until the same comes back, for
// at most limit.
func probeUDP(addr string, limit time.Duration) error {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(limit)
	buf := make([]byte, 512)
	for i := 0; time.Now().Before(deadline); i++ {
		msg := fmt.Appendf(nil, "superd bench probe %d %d", os.Getpid(), i)
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("udp echo: %w", err)
		}
		wait := time.Now().Add(200 * time.Millisecond)
		if wait.After(deadline) {
			wait = deadline
		}
		c.SetReadDeadline(wait)
		for {
			n, err := c.Read(buf)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				break // lost, or nobody answering yet: send again
			}
			if err != nil {
				return fmt.Errorf("udp echo: %w", err) // refused: nobody on the port yet
			}
			if string(buf[:n]) == string(msg) {
				return nil
			}
			// An earlier probe's echo: keep waiting for this one.
		}
	}
	return fmt.Errorf("udp echo %s: no echo within %v", addr, limit)
}

// stop ends the server (and its peers, at once): SIGTERM, then SIGKILL
// after 10 s.
func (s *server) stop() {
	var wg sync.WaitGroup
	for _, p := range s.peers {
		wg.Go(p.stop)
	}
	defer wg.Wait()
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		fmt.Printf("%s did not stop within 10 s of SIGTERM; killing it\n", s.name)
		s.cmd.Process.Kill()
		<-s.done
	}
}

// userHZ is the unit of the times in /proc/PID/stat (USER_HZ, what
// sysconf(_SC_CLK_TCK) returns): 100 per second on Linux, whatever the
// kernel's own HZ.
const userHZ = 100

// cpuTimes is a process's CPU time in seconds: its own, all threads, user
// and system (utime+stime), and that of its children it has reaped
// (cutime+cstime).
type cpuTimes struct{ self, children float64 }

// procCPU reads the CPU times of process pid from /proc/PID/stat.
func procCPU(pid int) (cpuTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuTimes{}, err
	}
	return parseStat(b)
}

// parseStat reads utime, stime, cutime and cstime (fields 14 to 17) from
// the text of /proc/PID/stat: "PID (COMM) STATE PPID ...", where COMM may
// hold spaces and parentheses.
func parseStat(b []byte) (cpuTimes, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return cpuTimes{}, fmt.Errorf("/proc stat %.40q: no command name", b)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3, the state
	if len(f) < 15 {
		return cpuTimes{}, fmt.Errorf("/proc stat %.40q: %d fields", b, len(f)+2)
	}
	var t [4]float64
	for k := range t {
		v, err := strconv.ParseUint(f[11+k], 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("/proc stat field %d: %v", 14+k, err)
		}
		t[k] = float64(v) / userHZ
	}
	return cpuTimes{self: t[0] + t[1], children: t[2] + t[3]}, nil
}

// freeUDPPort finds a loopback udp port nobody is bound to.
func freeUDPPort() (int, error) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port, nil
}

// freePorts finds n loopback ports nobody listens on.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func machineInfo() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := strings.TrimSpace(readFile("/proc/sys/kernel/osrelease"))
	if kernel == "" {
		kernel = runtime.GOOS
	}
	goVersion := runtime.Version()
	if out, err := exec.Command("go", "version").Output(); err == nil {
		goVersion = strings.TrimSpace(string(out))
	}
	nofile := ""
	if b, err := os.ReadFile("/proc/self/limits"); err == nil {
		for line := range strings.Lines(string(b)) {
			if strings.HasPrefix(line, "Max open files") {
				f := strings.Fields(line)
				nofile = fmt.Sprintf(", open files %s soft / %s hard", f[3], f[4])
			}
		}
	}
	return fmt.Sprintf("machine: nproc %d, CPU %s, kernel %s, %s%s", runtime.NumCPU(), cpu, kernel, goVersion, nofile)
}

// loadAvg is the 1, 5 and 15 minute load averages from /proc/loadavg.
func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func verdict(ratio float64, lowerBetter bool) string {
	switch {
	case math.Abs(ratio-1) < 0.05:
		return "tie"
	case lowerBetter && ratio < 1:
		return fmt.Sprintf("superd better (%.2fx the memory)", ratio)
	case lowerBetter:
		return fmt.Sprintf("superd worse (%.2fx the memory)", ratio)
	case ratio > 1:
		return fmt.Sprintf("superd better (+%.0f%%)", (ratio-1)*100)
	default:
		return fmt.Sprintf("superd worse (-%.0f%%)", (1-ratio)*100)
	}
}

func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v >= 100:
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func bytesStr(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case v >= 10<<10:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	default:
		return fmt.Sprintf("%.0f B", v)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.SplitAfter(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := strings.Join(lines, "")
	if out != "" && !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	return out
}

// table renders a Markdown table with aligned columns.
type table struct {
	header []string
	rows   [][]string
}

func (t *table) markdown() string {
	w := make([]int, len(t.header))
	for i, h := range t.header {
		w[i] = len([]rune(h))
	}
	for _, r := range t.rows {
		for i, c := range r {
			w[i] = max(w[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		b.WriteString("|")
		for i, c := range cells {
			fmt.Fprintf(&b, " %s%s |", c, strings.Repeat(" ", w[i]-len([]rune(c))))
		}
		b.WriteString("\n")
	}
	line(t.header)
	sep := make([]string, len(w))
	for i := range w {
		sep[i] = strings.Repeat("-", w[i])
	}
	line(sep)
	for _, r := range t.rows {
		line(r)
	}
	return b.String()
}
