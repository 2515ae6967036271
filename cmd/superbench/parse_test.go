package main

import (
	"strings"
	"testing"
)

func TestParseVmRSS(t *testing.T) {
	status := "Name:\tsuperd\nVmPeak:\t 1300000 kB\nVmRSS:\t   12345 kB\nThreads:\t7\n"
	got, err := parseVmRSS([]byte(status))
	if err != nil || got != 12345*1024 {
		t.Fatalf("got %d, %v", got, err)
	}
	for _, bad := range []string{"Name:\tx\n", "VmRSS:\t12 MB\n", "VmRSS:\tlots kB\n"} {
		if _, err := parseVmRSS([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestCheckQuote(t *testing.T) {
	const q = "An apple a day keeps the doctor away"
	for _, c := range []struct {
		got, expect, eol string
		ok               bool
	}{
		{q + "\r\n", q, "\r\n", true},
		{q + "\r\n", "", "\r\n", true},
		{q + "\n", "", "\r\n", false},
		{q + "\n", q, "\r\n", false},
		{q, q, "\r\n", false},
		{"\r\n", "", "\r\n", false},
		{"", "", "\r\n", false},
		{"a\r\nb\r\n", "", "\r\n", false},
		{q + "!\r\n", q, "\r\n", false},
		// -eol lf: /bin/echo's line.
		{q + "\n", q, "\n", true},
		{q + "\n", "", "\n", true},
		{q + "\r\n", q, "\n", false},
		{q + "\r\n", "", "\n", false},
		{q, q, "\n", false},
		{q, "", "\n", false},
		{"\n", "", "\n", false},
		{"a\nb\n", "", "\n", false},
		{q + "\n\n", q, "\n", false},
	} {
		if err := checkQuote([]byte(c.got), c.expect, c.eol); (err == nil) != c.ok {
			t.Errorf("checkQuote(%q, %q, %q) = %v", c.got, c.expect, c.eol, err)
		}
	}
}

func TestChatLineRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 5, 40} {
		for _, seq := range []int{0, 7, 12345} {
			text := chatLine(nil, seq, size)
			if size > 6 && len(text) != size {
				t.Errorf("seq %d size %d: %q has length %d", seq, size, text, len(text))
			}
			line := "<u00000> " + string(text) + "\r\n"
			name, body, err := parseDelivery([]byte(line))
			if err != nil || string(name) != "u00000" || string(body) != string(text) {
				t.Fatalf("parseDelivery(%q) = %q, %q, %v", line, name, body, err)
			}
			got, err := parseSeq(body)
			if err != nil || got != seq {
				t.Fatalf("parseSeq(%q) = %d, %v", body, got, err)
			}
		}
	}
	if a, b := chatLine(nil, 1, 20), chatLine(nil, 2, 20); string(a[2:]) == string(b[2:]) {
		t.Error("padding does not depend on the sequence number")
	}
}

func TestParseDeliveryRejects(t *testing.T) {
	for _, bad := range []string{"<bob> hi\n", "bob> hi\r\n", "<bob>hi\r\n", "\r\n", "<bob hi\r\n"} {
		if _, _, err := parseDelivery([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	for _, bad := range []string{"", "x", "-1", "12x y"} {
		if _, err := parseSeq([]byte(bad)); err == nil {
			t.Errorf("parseSeq(%q): no error", bad)
		}
	}
	if !strings.HasPrefix(string(chatLine(nil, 42, 0)), "42") {
		t.Error("chatLine does not start with the sequence number")
	}
}

func TestMatchStream(t *testing.T) {
	pat := streamPattern(3)
	if len(pat) != streamPeriod {
		t.Fatalf("pattern length %d", len(pat))
	}
	// A window that wraps around the end of the pattern.
	off := int64(3*streamPeriod - 10)
	data := append(append([]byte{}, pat[streamPeriod-10:]...), pat[:20]...)
	if !matchStream(pat, data, off) {
		t.Fatal("wrapped window does not match")
	}
	data[15] ^= 1
	if matchStream(pat, data, off) {
		t.Fatal("corrupted window matches")
	}
	if matchStream(pat, pat[100:200], 101) {
		t.Fatal("shifted window matches")
	}
}

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:7": true, "[::1]:7": true, "localhost:7": true, "127.8.9.1:7": true,
		"10.0.0.1:7": false, "example.com:7": false, "0.0.0.0:7": false, "127.0.0.1": false,
	} {
		if err := checkLoopback(addr); (err == nil) != ok {
			t.Errorf("checkLoopback(%q) = %v", addr, err)
		}
	}
}
