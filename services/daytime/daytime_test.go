package daytime

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the child of TestLocalZone finds its TZ without the system's zoneinfo

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/services/internal/servicetest"
)

func TestMain(m *testing.M) { servicetest.VerifyTestMain(m) }

func TestConfig(t *testing.T) {
	servicetest.ServesBoth(t, "daytime")
	tests := []struct {
		name    string
		body    string
		layout  string
		utc     bool
		wantErr []string
	}{
		{name: "default", body: "", layout: DefaultLayout},
		{name: "utc", body: "  utc = true", layout: DefaultLayout, utc: true},
		{name: "layout", body: `  layout = "2006-01-02T15:04:05Z07:00"`, layout: time.RFC3339},
		{name: "only AM/PM and text", body: `  layout = "it is 3 o'clock"`, layout: "it is 3 o'clock"},
		{name: "empty", body: `  layout = ""`, wantErr: []string{"superd.hcl:2,", `Invalid value for "layout"`, "empty"}},
		{name: "no field", body: `  layout = "YYYY-MM-DD"`, wantErr: []string{"superd.hcl:2,", `"layout"`, "no time field"}},
		{name: "newline", body: `  layout = "2006\n15:04"`, wantErr: []string{"superd.hcl:2,", `"layout"`, "CR or LF"}},
		{name: "CR", body: `  layout = "2006\r"`, wantErr: []string{`"layout"`, "CR or LF"}},
		{name: "utc not a bool", body: `  utc = "yes please"`, wantErr: []string{"superd.hcl:2,", "utc"}},
		{name: "layout not a string", body: `  layout = ["x"]`, wantErr: []string{"superd.hcl:2,", "layout"}},
		{name: "unknown attribute", body: `  layot = "15:04"`, wantErr: []string{"superd.hcl:2,", `Did you mean "layout"?`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fac, err := servicetest.Parse(t, "daytime", tt.body)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("no error; want one containing %q", tt.wantErr)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error text lacks %q:\n%s", s, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error:\n%s", err)
			}
			f := fac.(*Factory)
			if f.Layout != tt.layout || (f.loc == time.UTC) != tt.utc {
				t.Fatalf("layout %q, UTC %v; want %q, %v", f.Layout, f.loc == time.UTC, tt.layout, tt.utc)
			}
			if _, ok := f.BuildProtocol(nil).(*Daytime); !ok {
				t.Fatal("BuildProtocol does not build a *Daytime")
			}
		})
	}
}

// readLine reads one daytime answer over loopback TCP: the whole stream,
// which must be one line ending in CRLF and then EOF.
func readLine(t *testing.T, addr string, conns <-chan *servicetest.Served) string {
	t.Helper()
	c := servicetest.Dial(t, addr)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if reason := <-(<-conns).Done; !framework.IsClean(reason) {
		t.Fatalf("connection ended with %v, want a clean close", reason)
	}
	line, ok := strings.CutSuffix(string(got), "\r\n")
	if !ok || strings.ContainsAny(line, "\r\n") {
		t.Fatalf("got %q; want one line ending in CRLF, then EOF", got)
	}
	return line
}

// checkNow parses line with layout in the zone loc and checks it is now
// (within a few seconds: the line has whole seconds) and in loc's offset.
func checkNow(t *testing.T, line, layout string, loc *time.Location) {
	t.Helper()
	got, err := time.ParseInLocation(layout, line, loc)
	if err != nil {
		t.Fatalf("%q does not parse with %q: %v", line, layout, err)
	}
	if d := time.Since(got); d < -5*time.Second || d > 5*time.Second {
		t.Fatalf("%q is %v from now", line, d)
	}
	_, gotOff := got.Zone()
	if _, wantOff := time.Now().In(loc).Zone(); gotOff != wantOff {
		t.Fatalf("%q has offset %d s, want %d s", line, gotOff, wantOff)
	}
}

func TestStream(t *testing.T) {
	for _, tt := range []struct {
		name, body, layout string
		loc                *time.Location
		suffix             string
	}{
		{"utc default layout", "  utc = true", DefaultLayout, time.UTC, "-UTC"},
		{"local default layout", "", DefaultLayout, time.Local, "-" + zoneName(time.Local)},
		{"utc RFC 3339", "  utc = true\n  layout = \"2006-01-02T15:04:05Z07:00\"", time.RFC3339, time.UTC, "Z"},
		{"local numeric offset", "  layout = \"Mon Jan _2 15:04:05 -0700 2006\"", "Mon Jan _2 15:04:05 -0700 2006", time.Local, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, conns := servicetest.Serve(t, servicetest.Factory(t, "daytime", tt.body))
			for range 2 {
				line := readLine(t, addr, conns)
				if !strings.HasSuffix(line, tt.suffix) {
					t.Fatalf("%q does not end in %q", line, tt.suffix)
				}
				checkNow(t, line, tt.layout, tt.loc)
			}
		})
	}
}

func zoneName(loc *time.Location) string { name, _ := time.Now().In(loc).Zone(); return name }

func TestDatagrams(t *testing.T) {
	for _, tt := range []struct {
		body string
		loc  *time.Location
	}{{"  utc = true", time.UTC}, {"", time.Local}} {
		f := servicetest.Factory(t, "daytime", tt.body)
		var rec servicetest.DatagramRecorder
		p := servicetest.DatagramProtocol(t, f, &rec)
		for _, req := range []string{"", "what time is it?", strings.Repeat("?", 2000)} {
			p.DatagramReceived([]byte(req), servicetest.PeerUDP)
		}
		sent := rec.Sent()
		if len(sent) != 3 {
			t.Fatalf("%d replies to 3 datagrams", len(sent))
		}
		for i, d := range sent {
			line, ok := strings.CutSuffix(string(d.Data), "\r\n")
			if !ok || d.To != servicetest.PeerUDP {
				t.Fatalf("reply %d: %q to %v; want one line ending in CRLF to %v", i, d.Data, d.To, servicetest.PeerUDP)
			}
			checkNow(t, line, DefaultLayout, tt.loc)
		}
		var nop servicetest.NopDatagramTransport
		p = servicetest.DatagramProtocol(t, f, &nop)
		if n := testing.AllocsPerRun(1000, func() { p.DatagramReceived(nil, servicetest.PeerUDP) }); n != 0 {
			t.Errorf("%q: %v allocations per datagram, want 0", tt.body, n)
		}
	}
}

// childEnv marks the re-executed test binary of TestLocalZone.
const childEnv = "SUPERD_DAYTIME_TEST_CHILD"

// TestLocalZone: with utc = false the answers are in superd's local zone,
// taken from TZ like any Go program's. The test runs the stream and
// datagram tests again in a child process whose TZ is an offset no CI
// machine has by default (+05:30, no daylight saving), so local and UTC
// cannot be confused.
func TestLocalZone(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		if _, off := time.Now().Zone(); off != 5*3600+1800 {
			t.Fatalf("TZ=%s gives offset %d s; want +05:30", os.Getenv("TZ"), off)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^(TestLocalZone|TestStream|TestDatagrams)$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1", "TZ=Asia/Kolkata")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the tests under TZ=Asia/Kolkata failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestStream/local_default_layout") {
		t.Fatalf("the child did not run the local-zone stream test:\n%s", out)
	}
}
