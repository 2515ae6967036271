package main

import (
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/superd-dev/superd/config"
	_ "github.com/superd-dev/superd/services/chat"
	_ "github.com/superd-dev/superd/services/echo"
	_ "github.com/superd-dev/superd/services/exec"
	_ "github.com/superd-dev/superd/services/qotd"
)

func TestMedian(t *testing.T) {
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Error("median sorted its argument")
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range []struct {
		ratio float64
		lower bool
		want  string
	}{
		{1.02, false, "tie"}, {1.5, false, "better (+50%)"}, {0.8, false, "worse (-20%)"},
		{0.5, true, "better (0.50x"}, {1.5, true, "worse (1.50x"}, {0.97, true, "tie"},
	} {
		if got := verdict(c.ratio, c.lower); !strings.Contains(got, c.want) {
			t.Errorf("verdict(%v, %v) = %q, want %q in it", c.ratio, c.lower, got, c.want)
		}
	}
}

// TestIdleFailed: an idle run counts only with every connection alive and
// a positive RSS growth per connection; a server whose RSS shrank over the
// run gives no figure rather than a negative one.
func TestIdleFailed(t *testing.T) {
	for _, c := range []struct {
		alive, conns int
		per          float64
		counts       bool
	}{
		{5000, 5000, 534, true},
		{4999, 5000, 534, false},
		{5000, 5000, 0, false},
		{5000, 5000, -120, false},
		{5000, 5000, math.NaN(), false},
	} {
		r := &result{Mode: "idle", Alive: c.alive, Conns: c.conns, RSSPerConnBytes: c.per}
		if got := idleFailed(r); (got == "") != c.counts {
			t.Errorf("alive %d of %d, %v B/conn: idleFailed %q, want the run to count: %v", c.alive, c.conns, c.per, got, c.counts)
		}
	}
}

func TestResultMetric(t *testing.T) {
	r := result{Mode: "idle", RSSPerConnBytes: 4096, MsgsPerS: 1}
	if r.metric() != 4096 {
		t.Errorf("idle metric %v", r.metric())
	}
	r = result{Mode: "chat", DeliveriesPerS: 7}
	if r.metric() != 7 {
		t.Errorf("chat metric %v", r.metric())
	}
}

func TestTableAligns(t *testing.T) {
	tb := table{header: []string{"a", "µs"}, rows: [][]string{{"long cell", "1"}}}
	lines := strings.Split(strings.TrimSpace(tb.markdown()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%q", lines)
	}
	for _, l := range lines {
		if len([]rune(l)) != len([]rune(lines[0])) {
			t.Errorf("ragged table:\n%s", tb.markdown())
		}
	}
}

func TestSuperdConfigNamesEveryAddress(t *testing.T) {
	addrs := [nTargets]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:6"}
	cfg := superdConfig(addrs)
	for _, a := range addrs {
		if !strings.Contains(cfg, `"`+a+`"`) {
			t.Errorf("config lacks %s:\n%s", a, cfg)
		}
	}
	for _, want := range []string{`address = ""`, "self_signed = true", "max_pending_output", quote,
		`service "exec" "crx"`, `command         = ["/bin/echo", "` + quote + `"]`,
		`service "echo" "udp-echo"`, `endpoint "udp" { address = "127.0.0.1:6" }`, "rate  = 1e9", "burst = 2147483647"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q", want)
		}
	}
}

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses; utime 150, stime 50,
	// cutime 300, cstime 100 ticks.
	stat := "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1000 2000 0 0 150 50 300 100 20 0 9 0 12345 1000000 500 18446744073709551615\n"
	got, err := parseStat([]byte(stat))
	if err != nil || got.self != 2 || got.children != 4 {
		t.Fatalf("parseStat = %+v, %v; want self 2 s, children 4 s", got, err)
	}
	for _, bad := range []string{"", "4242 (x S 1", "4242 (x) S 1 2 3", "4242 (x) S 1 4242 4242 0 -1 4194560 1000 2000 0 0 1x 50 300 100 20"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q): no error", bad)
		}
	}
	// A live process's: readable, and never going back.
	a, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	b, err := procCPU(os.Getpid())
	if err != nil || b.self < a.self || b.children < a.children {
		t.Fatalf("procCPU %+v then %+v, %v", a, b, err)
	}
}

func TestCPUNote(t *testing.T) {
	n := cpuNote("CRX", "connrate", []float64{100, 120, 110}, []float64{400, 500, 450}, []float64{900, 1000, 950}, []float64{910, 990, 960}, []float64{0.25, 0.24, 0.24})
	for _, want := range []string{"CRX:", "per connection", "superd 110 µs, baseline 450 µs, superd/baseline 0.24", "0.25 0.24 0.24", "superd 950 µs, baseline 960 µs per connection"} {
		if !strings.Contains(n, want) {
			t.Errorf("note lacks %q:\n%s", want, n)
		}
	}
	n = cpuNote("U64", "udp", []float64{8, 9}, []float64{10, 10}, []float64{0, 0}, []float64{0, 0}, []float64{0.8, 0.9})
	for _, want := range []string{"U64: server CPU per datagram", "over the datagrams echoed", "superd 8.50 µs, baseline 10.0 µs, superd/baseline 0.85"} {
		if !strings.Contains(n, want) {
			t.Errorf("note lacks %q:\n%s", want, n)
		}
	}
	if strings.Contains(n, "children") {
		t.Errorf("udp note speaks of children:\n%s", n)
	}
}

// Every cell's target has an address and a service on both servers, and
// CRX checks /bin/echo's line.
func TestCRXCell(t *testing.T) {
	for _, c := range cells {
		if c.target < 0 || c.target >= nTargets {
			t.Errorf("%s: target %d", c.id, c.target)
		}
		if c.id != "CRX" {
			if c.cpu != (c.id == "U64") {
				t.Errorf("%s: measures CPU %v", c.id, c.cpu)
			}
			continue
		}
		args := strings.Join(c.args, " ")
		if c.target != tExec || !c.cpu || !c.timed || !strings.Contains(args, "connrate -conns 8 -expect "+quote+" -eol lf") {
			t.Errorf("CRX: %+v", c)
		}
	}
}

// E1CRX measures an echo connection while CRX's load runs beside it, on
// the exec service, and its note says so without the quote.
func TestBesideCell(t *testing.T) {
	var found bool
	for _, c := range cells {
		if c.beside == nil {
			continue
		}
		if c.besideTarget == c.target || c.besideTarget < 0 || c.besideTarget >= nTargets {
			t.Errorf("%s: load beside on target %d, measured %d", c.id, c.besideTarget, c.target)
		}
		if c.id != "E1CRX" {
			continue
		}
		found = true
		if c.target != tEcho || c.besideTarget != tExec || strings.Join(c.beside, " ") != "connrate -conns 8 -expect "+quote+" -eol lf" {
			t.Errorf("E1CRX: %+v", c)
		}
		n := besideNote(c, 307, 378.4)
		for _, want := range []string{"E1CRX: the load beside (superbench connrate -conns 8 -eol lf against the exec (/bin/echo per connection) service", "ran at 307 conns/s against superd and 378 against the baseline"} {
			if !strings.Contains(n, want) {
				t.Errorf("note lacks %q:\n%s", want, n)
			}
		}
		if strings.Contains(n, quote) {
			t.Errorf("note repeats the quote:\n%s", n)
		}
	}
	if !found {
		t.Error("no E1CRX cell")
	}
}

// The readiness probe of a udp echo: an echo comes back, even when the
// first probe's echo comes too late and arrives just before the second's;
// a silent socket fails within the limit, and so does a port nobody is
// bound to.
func TestProbeUDP(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		var held []byte
		for n := 0; ; n++ {
			k, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			switch n {
			case 0: // too late for the first probe's wait
				held = append(held, buf[:k]...)
			case 1:
				pc.WriteToUDP(held, from)
				pc.WriteToUDP(buf[:k], from)
			default:
				pc.WriteToUDP(buf[:k], from)
			}
		}
	}()
	for range 2 {
		if err := probeUDP(pc.LocalAddr().String(), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	if err := probeUDP(silent.LocalAddr().String(), 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no echo within 300ms") {
		t.Fatalf("silent socket: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("silent socket: gave up after %v", el)
	}

	port, err := freeUDPPort()
	if err != nil {
		t.Fatal(err)
	}
	if err := probeUDP("127.0.0.1:"+strconv.Itoa(port), 2*time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("nobody there: %v", err)
	}
}

func TestLossNote(t *testing.T) {
	n := lossNote("U64", []*result{{Sent: 1000, Lost: 3, Late: 1}, nil, {Sent: 1000, Lost: 1}}, []*result{{Sent: 500}})
	for _, want := range []string{"U64:", "superd 4 of 2000 (0.200%, 1 of them echoed late)", "baseline 0 of 500 (0.000%, 0 of them"} {
		if !strings.Contains(n, want) {
			t.Errorf("note lacks %q:\n%s", want, n)
		}
	}
}

// superd accepts the generated configuration, and U64's udp echo gets the
// explicit rate limit, not the default of built-ins on udp.
func TestSuperdConfigParses(t *testing.T) {
	addrs := [nTargets]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:6"}
	f, err := config.Parse([]byte(superdConfig(addrs)), filepath.Join(t.TempDir(), "superd.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	svc := f.Service("udp-echo")
	if svc == nil {
		t.Fatal("no service udp-echo")
	}
	if r := svc.Limits.RateLimitPerIP; r == nil || r.Rate != 1e9 || r.Burst != math.MaxInt32 {
		t.Fatalf("udp-echo rate_limit_per_ip %+v", r)
	}
}
