package metrics

import (
	"os"
	"strings"
	"testing"
)

// TestReadmeListsEveryReason: the README's lists of rejection, drop and
// datagram drop reasons name every reason a series exists for, so that an
// operator reading them can tell every label value /metrics shows.
func TestReadmeListsEveryReason(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.Join(strings.Fields(string(b)), " ") // line breaks as spaces
	for _, list := range []struct {
		heading, next string
		reasons       []string
	}{
		{"Rejection reasons:", "Drop", RejectReasons},
		{"Drop reasons:", "Datagram drop reasons:", DropReasons},
		{"Datagram drop reasons:", "Every series", DatagramDropReasons},
	} {
		start := strings.Index(readme, list.heading)
		if start < 0 {
			t.Fatalf("README has no %q", list.heading)
		}
		text := readme[start:]
		end := strings.Index(text[len(list.heading):], list.next)
		if end < 0 {
			t.Fatalf("README's %q list is not followed by %q: the test cannot tell where it ends", list.heading, list.next)
		}
		text = text[:len(list.heading)+end]
		for _, r := range list.reasons {
			if !strings.Contains(text, "`"+r+"`") {
				t.Errorf("README's %q list does not name `%s`", list.heading, r)
			}
		}
	}
}
