package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/internal/textwidth"
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

// Columns line up as a terminal shows them: a name in wide (East Asian)
// characters takes two columns a character, a combining mark none.
func TestStatusTableAlignsWideNames(t *testing.T) {
	s := &Status{Version: "test", Services: []supervisor.ServiceStatus{
		{Name: "名前", Factory: "echo", State: "running", Active: 1},
		{Name: "cafe\u0301", Factory: "qotd", State: "draining", Active: 22},
		{Name: "abcd", Factory: "chargen", State: "running", Active: 333},
	}}
	var out bytes.Buffer
	printStatus(&out, s)
	table := out.String()[strings.Index(out.String(), "SERVICE"):]
	rows := strings.Split(strings.TrimRight(table, "\n"), "\n")
	// Each row's FACTORY starts in the header's column, counted in
	// terminal columns.
	col := func(row, field string) int {
		i := strings.Index(row, field)
		if i < 0 {
			t.Fatalf("%q not in row %q", field, row)
		}
		return textwidth.String(row[:i])
	}
	want := col(rows[0], "FACTORY")
	for i, f := range []string{"echo", "qotd", "chargen"} {
		if got := col(rows[i+1], f); got != want {
			t.Errorf("row %d: %s at column %d, want %d (the header's)\n%s", i+1, f, got, want, table)
		}
	}
	wantActive := col(rows[0], "ACTIVE")
	for i, a := range []string{" 1 ", " 22 ", " 333 "} {
		if got := col(rows[i+1], a) + 1; got != wantActive {
			t.Errorf("row %d: ACTIVE at column %d, want %d\n%s", i+1, got, wantActive, table)
		}
	}
}

// `superd factories` lines up each factory's attributes: the description
// starts in one column for all of them, however long a default is
// (daytime's layout, qotd's quote).
func TestFactoriesColumnsLineUp(t *testing.T) {
	var out bytes.Buffer
	printFactories(&out)
	lines := strings.Split(out.String(), "\n")
	checked := 0
	for _, spec := range framework.Specs() {
		attrs := spec.Attributes()
		if len(attrs) < 2 {
			continue
		}
		descCol := -1
		for _, a := range attrs {
			prefix := "    " + a.Name + " "
			found := false
			for _, l := range lines {
				if !strings.HasPrefix(l, prefix) || !strings.HasSuffix(l, " "+a.Description) {
					continue
				}
				found = true
				col := textwidth.String(strings.TrimSuffix(l, a.Description))
				if descCol == -1 {
					descCol = col
				} else if col != descCol {
					t.Errorf("%s: the description of %s starts at column %d, the first one's at %d:\n%s", spec.Name, a.Name, col, descCol, l)
				}
			}
			if !found {
				t.Errorf("%s: no line for %s", spec.Name, a.Name)
			}
		}
		checked++
	}
	if checked < 3 {
		t.Fatalf("only %d factories with attributes checked:\n%s", checked, out.String())
	}
}
