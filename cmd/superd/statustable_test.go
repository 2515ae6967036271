package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/superd-dev/superd/supervisor"
)

// A service name may hold any character; in the table one holding a tab, a
// line break or a terminal escape is quoted, so it keeps its column and
// its row, and cannot pass for another service's.
func TestStatusTableQuotesUnprintableNames(t *testing.T) {
	s := &Status{Version: "test", Services: []supervisor.ServiceStatus{
		{Name: "a\tb", Factory: "echo", State: "running"},
		{Name: "c\nd      echo   running  9  9  9  0  tcp:fake", Factory: "echo", State: "running"},
		{Name: "e\x1b[31mred", Factory: "echo", State: "running"},
		{Name: "plain name", Factory: "echo", State: "running"},
	}}
	var out bytes.Buffer
	printStatus(&out, s)
	table := out.String()[strings.Index(out.String(), "SERVICE"):]
	rows := strings.Split(strings.TrimRight(table, "\n"), "\n")
	if len(rows) != 1+len(s.Services) {
		t.Fatalf("%d rows for %d services:\n%s", len(rows)-1, len(s.Services), table)
	}
	for i, want := range []string{`"a\tb"`, `"c\nd      echo`, `"e\x1b[31mred"`, "plain name  "} {
		if !strings.HasPrefix(rows[i+1], want) {
			t.Errorf("row %d is %q, want it to start with %q", i+1, rows[i+1], want)
		}
	}
	if strings.ContainsRune(table, '\x1b') {
		t.Error("a terminal escape reached the table")
	}
}
