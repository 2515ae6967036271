package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// parseVmRSS returns the VmRSS of a /proc/PID/status text, in bytes.
func parseVmRSS(status []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		line := sc.Bytes()
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("unexpected VmRSS line %q", line)
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, errors.New("no VmRSS line (a kernel thread, or a process that has exited?)")
}

// readRSS reads the resident set size of process pid from /proc.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseVmRSS(b)
}

// checkQuote verifies what a qotd server sent before closing: exactly
// expect and eol when expect is set, else a non-empty line ending in eol
// (and no other eol). eol is "\r\n" (qotd) or "\n" (a program such as
// /bin/echo); with "\n", a line ending in CRLF is wrong too.
func checkQuote(got []byte, expect, eol string) error {
	if expect != "" {
		if string(got) != expect+eol {
			return fmt.Errorf("qotd: got %q, want %q", got, expect+eol)
		}
		return nil
	}
	body, ok := bytes.CutSuffix(got, []byte(eol))
	if !ok || len(body) == 0 || bytes.Contains(body, []byte(eol)) || (eol == "\n" && bytes.HasSuffix(body, []byte("\r"))) {
		return fmt.Errorf("qotd: got %q, want one non-empty line ending in %q", got, eol)
	}
	return nil
}

// chatLine is the text of chat line seq: its sequence number, then padding
// up to size bytes (when size is larger) that depends on seq, so a line
// delivered in the wrong place is caught even if its number were right.
func chatLine(dst []byte, seq, size int) []byte {
	dst = strconv.AppendInt(dst, int64(seq), 10)
	if len(dst) < size {
		dst = append(dst, ' ')
	}
	c := byte('a' + seq%26)
	for len(dst) < size {
		dst = append(dst, c)
	}
	return dst
}

// parseDelivery splits one line a chat server delivered, "<NAME> TEXT\r\n",
// into NAME and TEXT.
func parseDelivery(line []byte) (name, text []byte, err error) {
	body, ok := bytes.CutSuffix(line, []byte("\r\n"))
	if !ok {
		return nil, nil, fmt.Errorf("chat: line %q does not end in CRLF", line)
	}
	if len(body) == 0 || body[0] != '<' {
		return nil, nil, fmt.Errorf("chat: line %q does not start with <NAME>", line)
	}
	i := bytes.Index(body, []byte("> "))
	if i < 0 {
		return nil, nil, fmt.Errorf("chat: line %q has no \"> \" after the name", line)
	}
	return body[1:i], body[i+2:], nil
}

// parseSeq reads the sequence number at the start of a chat line's text.
func parseSeq(text []byte) (int, error) {
	num, _, _ := bytes.Cut(text, []byte(" "))
	n, err := strconv.Atoi(string(num))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("chat: line text %q does not start with a sequence number", text)
	}
	return n, nil
}
