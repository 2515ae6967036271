package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/internal/textwidth"
	"github.com/superd-dev/superd/supervisor"
)

// Status is what GET /status answers (and `superd status` prints).
type Status struct {
	Version          string                     `json:"version"`
	PID              int                        `json:"pid"`
	StartedAt        time.Time                  `json:"started_at"`
	ConfigFile       string                     `json:"config_file"`
	ConfigGeneration int                        `json:"config_generation"`
	LastReload       *ReloadStatus              `json:"last_reload"`
	Cluster          *ClusterStatus             `json:"cluster,omitempty"`
	Services         []supervisor.ServiceStatus `json:"services"`
	Connections      []supervisor.ConnStatus    `json:"connections,omitempty"`
}

// ReloadStatus is the last reload's outcome.
type ReloadStatus struct {
	Time   time.Time `json:"time"`
	Result string    `json:"result"` // success or failure
	Error  string    `json:"error,omitempty"`
}

// ClusterStatus is this node of a chat room across machines (the cluster
// block): its name, and whether it is connected to NATS now. It is not part
// of /readyz: a node whose NATS is away still serves its rooms locally.
type ClusterStatus struct {
	Node      string `json:"node"`
	Connected bool   `json:"connected"`
}

// statusState is what the main loop knows and /status reports.
type statusState struct {
	sup        *supervisor.Supervisor
	configFile string
	started    time.Time

	mu   sync.Mutex
	last *ReloadStatus
}

// reloaded records a reload's outcome (a success is a new generation of
// the supervisor's, counted with its services so that /status tells one
// configuration).
func (st *statusState) reloaded(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := &ReloadStatus{Time: time.Now(), Result: "success"}
	if err != nil {
		r.Result, r.Error = "failure", err.Error()
	}
	st.last = r
}

func (st *statusState) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conns := r.URL.Query().Get("connections") == "1"
	generation, services, cs := st.sup.StatusOf(conns)
	// Asked before st.mu is taken: NATS holds its connection's lock while
	// it dials a server again, and the main loop must not wait for that
	// to record a reload.
	cluster := clusterStatus()
	st.mu.Lock()
	s := Status{
		Version: buildVersion(), PID: os.Getpid(), StartedAt: st.started,
		ConfigFile: st.configFile, ConfigGeneration: generation, LastReload: st.last,
		Cluster: cluster, Services: services, Connections: cs,
	}
	st.mu.Unlock()
	if s.Services == nil {
		s.Services = []supervisor.ServiceStatus{}
	}
	if conns && s.Connections == nil {
		s.Connections = []supervisor.ConnStatus{}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(s)
}

// cmdStatus is `superd status`: it asks a running superd and prints a
// table (or the JSON); exit 1 when superd does not answer.
func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("superd status", flag.ContinueOnError)
	setUsage(fs, stderr)
	address := fs.String("address", config.DefaultMetricsAddress, "the `HOST:PORT` of superd's metrics listener (metrics.address)")
	asJSON := fs.Bool("json", false, "print the JSON as served on /status")
	conns := fs.Bool("connections", false, "list the open connections too")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	url := "http://" + *address + "/status"
	if *conns {
		url += "?connections=1"
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(stderr, "superd status: superd does not answer on %s: %v\n", *address, err)
		return exitFailure
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "superd status: %s answered %s\n", url, resp.Status)
		return exitFailure
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		fmt.Fprintf(stderr, "superd status: reading the answer of %s: %v\n", url, err)
		return exitFailure
	}
	if *asJSON {
		stdout.Write(body)
		return exitOK
	}
	var s Status
	if err := json.Unmarshal(body, &s); err != nil {
		fmt.Fprintf(stderr, "superd status: %s is not superd's status: %v\n", url, err)
		return exitFailure
	}
	printStatus(stdout, &s)
	return exitOK
}

func printStatus(w io.Writer, s *Status) {
	fmt.Fprintf(w, "superd %s, pid %d, up since %s, %s (generation %d)\n",
		cell(s.Version), s.PID, s.StartedAt.Format(time.RFC3339), cell(s.ConfigFile), s.ConfigGeneration)
	if r := s.LastReload; r != nil {
		fmt.Fprintf(w, "last reload: %s at %s", cell(r.Result), r.Time.Format(time.RFC3339))
		if r.Error != "" {
			fmt.Fprintf(w, " (%s)", cell(r.Error))
		}
		fmt.Fprintln(w)
	}
	if c := s.Cluster; c != nil {
		state := "connected to NATS"
		if !c.Connected {
			state = "NOT connected to NATS (rooms serve their own node only)"
		}
		fmt.Fprintf(w, "cluster node %s: %s\n", cell(c.Node), state)
	}
	fmt.Fprintln(w)
	rows := [][]string{{"SERVICE", "FACTORY", "STATE", "ACTIVE", "ACCEPTED", "REJECTED", "DROPPED", "ENDPOINTS"}}
	for _, svc := range s.Services {
		var eps []string
		for _, ep := range svc.Endpoints {
			e := cell(ep.Kind + ":" + ep.Address)
			if ep.Inherited {
				e += " (inherited)"
			}
			eps = append(eps, e)
		}
		rows = append(rows, []string{cell(svc.Name), cell(svc.Factory), cell(svc.State), strconv.Itoa(svc.Active),
			strconv.FormatInt(svc.Totals.Accepted, 10), strconv.FormatInt(svc.Totals.Rejected, 10),
			strconv.FormatInt(svc.Totals.Dropped, 10), strings.Join(eps, " ")})
	}
	writeTable(w, rows)
	if len(s.Connections) > 0 {
		fmt.Fprintln(w)
		rows = [][]string{{"SERVICE", "ENDPOINT", "PEER", "SINCE", "IN", "OUT", "PID"}}
		for _, c := range s.Connections {
			pid := ""
			if c.PID != 0 {
				pid = strconv.Itoa(c.PID)
			}
			rows = append(rows, []string{cell(c.Service), cell(c.Endpoint), cell(c.Peer),
				c.Since.Format(time.RFC3339), strconv.FormatInt(c.BytesIn, 10), strconv.FormatInt(c.BytesOut, 10), pid})
		}
		writeTable(w, rows)
	}
}

// writeTable prints rows in columns two spaces apart, each as wide as its
// widest cell as a terminal shows it (text/tabwriter counts runes, so a
// name in wide East Asian characters would push the columns after it out
// of line). The last column is not padded.
func writeTable(w io.Writer, rows [][]string) {
	var widths []int
	for _, row := range rows {
		for i, c := range row {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], textwidth.String(c))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		b.Reset()
		for i, c := range row {
			b.WriteString(c)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-textwidth.String(c)+2))
			}
		}
		b.WriteByte('\n')
		io.WriteString(w, b.String())
	}
}

// cell is a string as the table shows it: quoted, with Go's escapes, when
// it holds a tab, a line break, a terminal escape or another character
// that does not print (a service name may hold any), so that it stays in
// its column and row and cannot pass for another.
func cell(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
