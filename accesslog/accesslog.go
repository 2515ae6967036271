// Package accesslog owns superd's access log: one line per connection that
// ended and per connection refused, as JSON or logfmt text, written by one
// goroutine from a bounded queue so that logging never blocks a connection
// (a line that does not fit is dropped and counted, as are lines a failed
// write loses), and reopened on SIGUSR1 for log rotation.
package accesslog

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Formats of the log.
const (
	FormatJSON = "json"
	FormatText = "text"
)

// QueueSize is how many lines wait for the writer at most.
const QueueSize = 4096

// Entry is one line of the access log. Zero fields are left out, except
// the ones every line has (time, service, factory, endpoint, peer, reason)
// and the peer's credentials when it has them.
type Entry struct {
	Time       time.Time
	Service    string
	Factory    string
	Endpoint   string
	Peer       string // the real client (from a PROXY header when one was used)
	Proxy      string // the proxy's own address when a PROXY header was used
	TLSVersion string
	SNI        string
	Duration   time.Duration
	BytesIn    int64
	BytesOut   int64
	// Reason: clean, lost, aborted, idle_timeout, slow_consumer,
	// shutdown_timeout, upstream; or, for a refused connection, its
	// rejection reason (Rejected is then true).
	Reason   string
	Rejected bool
	PID      int    // exec: the program's pid
	Exit     string // exec: "0", "1", "SIGKILL", ...
	// The peer process of a unix socket connection (SO_PEERCRED), written
	// as peer_uid, peer_gid and peer_pid when HasPeerCred, zeros included
	// (root; a peer in another pid namespace has pid 0). Other connections
	// have no such fields.
	HasPeerCred bool
	PeerUID     uint32
	PeerGID     uint32
	PeerPID     int32
}

// Logger writes entries to a file (or stderr) from a bounded queue.
type Logger struct {
	path    string // "stderr" or a file path
	format  string
	dropped prometheus.Counter

	queue chan Entry
	done  chan struct{}
	qmu   sync.RWMutex // Log holds it shared; Close exclusively, to close queue
	qshut bool

	mu  sync.Mutex // guards f, out, buf, ends, torn (the writer goroutine and Reopen)
	f   *os.File   // nil for stderr
	out io.Writer  // f, or stderr
	buf []byte     // lines not written out yet
	// ends are the offsets in buf where its lines end: a write that
	// stops short (a full disk) tells how many lines went out whole.
	ends []int
	// torn: the last write left part of a line that could not be cut off
	// (stderr, or truncate failed); the next write starts on a new line.
	torn   bool
	closed bool
	// Write failures, for the warnings (see noteWrite).
	errLog   atomic.Pointer[slog.Logger]
	failing  bool      // a warning was logged, and no recovery since
	lost     int       // lines lost to failed writes since the last write that worked
	lastWarn time.Time // when the last warning was logged
	// file is f, for Close and Reopen to bound a write stuck on it
	// without the mu that the stuck writer holds.
	file atomic.Pointer[os.File]
}

// closeWait bounds how long Close and Reopen wait for a write the file does
// not take (a FIFO whose reader stopped reading): the write then gives up,
// and the lines it held, and those Close still had, are dropped and
// counted. A regular file has no such bound (its writes do not wait for a
// reader).
const closeWait = 2 * time.Second

// bufSize is how much the writer gathers before a write(2).
const bufSize = 64 << 10

// Open starts a logger writing to path ("stderr" for superd's stderr) in
// format; dropped counts the lines that did not fit in the queue.
func Open(path, format string, dropped prometheus.Counter) (*Logger, error) {
	if format != FormatJSON && format != FormatText {
		return nil, fmt.Errorf("unknown access log format %q", format)
	}
	l := &Logger{path: path, format: format, dropped: dropped,
		queue: make(chan Entry, QueueSize), done: make(chan struct{})}
	if err := l.open(); err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

func (l *Logger) open() error {
	if l.path == "stderr" || l.path == "" {
		l.f, l.out = nil, os.Stderr
		return nil
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	l.f, l.out = f, f
	l.file.Store(f)
	return nil
}

// warnEvery is the least time between two warnings about failed writes.
const warnEvery = 10 * time.Second

// SetErrorLog makes the logger log its failed writes to log (nil: none):
// a warning with the error when one fails, at most every warnEvery, and a
// line when the file takes writes again.
func (l *Logger) SetErrorLog(log *slog.Logger) {
	if l != nil {
		l.errLog.Store(log)
	}
}

// noteWrite logs a failed write that lost lost lines (with the lines lost
// since the last write that worked), or a write that worked after a
// warning (with the lines lost meanwhile). Called with mu held.
func (l *Logger) noteWrite(lost int, err error) {
	log := l.errLog.Load()
	if log == nil {
		return
	}
	if err == nil {
		if l.failing {
			log.Info("the access log takes writes again", "path", l.path, "dropped", l.lost)
		}
		l.failing, l.lost = false, 0
		return
	}
	l.lost += lost
	if now := time.Now(); now.Sub(l.lastWarn) >= warnEvery {
		log.Warn("cannot write the access log; its lines are dropped (superd_access_log_dropped_total) until it takes writes again",
			"path", l.path, "err", err, "dropped", l.lost)
		l.failing, l.lastWarn = true, now
	}
}

// unstick gives a write under way on the file until closeWait from now,
// and the writes after it none.
func (l *Logger) unstick() {
	if f := l.file.Load(); f != nil {
		f.SetWriteDeadline(time.Now().Add(closeWait)) // regular files: ErrNoDeadline, nothing to bound
	}
}

// Log queues e; it never blocks: when the queue is full, or the logger
// is closed (a connection that ended as a reload swapped the log), the
// line is dropped and counted.
func (l *Logger) Log(e Entry) {
	if l == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.qmu.RLock()
	defer l.qmu.RUnlock()
	if !l.qshut {
		select {
		case l.queue <- e:
			return
		default:
		}
	}
	if l.dropped != nil {
		l.dropped.Inc()
	}
}

// run writes queued lines, flushing whenever the queue runs empty or
// batchLines have been taken: mu is let go between batches, so a Reopen
// (SIGUSR1, which waits for it) is not held off for as long as the
// producers keep the queue from running empty.
func (l *Logger) run() {
	defer close(l.done)
	buf := make([]byte, 0, 512)
	for e := range l.queue {
		l.mu.Lock()
		for n := 1; ; n++ {
			buf = l.appendEntry(buf[:0], &e)
			l.write(buf)
			if len(l.queue) == 0 || n == batchLines {
				break
			}
			e = <-l.queue
		}
		l.flush()
		l.mu.Unlock()
	}
}

// batchLines is the most lines run writes under one hold of mu.
const batchLines = 256

// write adds one line to the buffer, writing the buffer out first when
// the line does not fit. Called with mu held.
func (l *Logger) write(line []byte) {
	if len(l.buf) > 0 && len(l.buf)+len(line) > bufSize {
		l.flush()
	}
	if l.buf == nil {
		l.buf = make([]byte, 0, bufSize)
	}
	l.buf = append(l.buf, line...)
	l.ends = append(l.ends, len(l.buf))
}

// flush writes the buffered lines out. If the write stops short (a full
// disk), the lines it did not write whole are lost and counted as dropped,
// and the part of a line it wrote is cut off the file again (superd is
// its only writer), so that no torn line is left for the next ones to be
// glued to; where that cannot be done, the next write starts with a new
// line. The lines after are written once the file takes writes again.
// Called with mu held.
func (l *Logger) flush() error {
	if len(l.buf) == 0 {
		return nil
	}
	data := l.buf
	if l.torn {
		data = append([]byte{'\n'}, data...)
	}
	n, err := l.out.Write(data)
	if l.torn && n > 0 {
		n--
		l.torn = false
	}
	if err != nil {
		whole := 0 // lines written whole
		for whole < len(l.ends) && l.ends[whole] <= n {
			whole++
		}
		if l.dropped != nil {
			l.dropped.Add(float64(len(l.ends) - whole))
		}
		l.noteWrite(len(l.ends)-whole, err)
		end := 0
		if whole > 0 {
			end = l.ends[whole-1]
		}
		if part := n - end; part > 0 {
			l.torn = !l.cut(part)
		}
	}
	if err == nil {
		l.noteWrite(0, nil)
	}
	l.buf, l.ends = l.buf[:0], l.ends[:0]
	return err
}

// cut removes the last part bytes written to the file; false if it cannot.
func (l *Logger) cut(part int) bool {
	if l.f == nil {
		return false
	}
	size, err := l.f.Seek(0, io.SeekEnd)
	if err != nil || size < int64(part) {
		return false
	}
	return l.f.Truncate(size-int64(part)) == nil
}

// Reopen reopens the file (SIGUSR1, after rotation); lines written
// meanwhile go to the new file. The new file is opened first, while the
// writer carries on with the old one; a write stuck on the old one (a FIFO
// nobody reads) is given up after closeWait, its lines counted as dropped.
func (l *Logger) Reopen() error {
	if l == nil || l.f == nil {
		return nil
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err // keep writing to the old file rather than lose lines
	}
	l.unstick()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		f.Close()
		return nil
	}
	l.flush()
	old := l.f
	l.f, l.out, l.torn = f, f, false // a torn line was the old file's
	l.file.Store(f)
	return old.Close()
}

// Close writes what is queued and closes the file.
func (l *Logger) Close() error {
	if l == nil {
		return nil
	}
	l.qmu.Lock()
	if l.qshut {
		l.qmu.Unlock()
		return nil
	}
	l.qshut = true
	close(l.queue)
	l.qmu.Unlock()
	l.unstick()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	err := l.flush()
	if l.f != nil {
		err = errors.Join(err, l.f.Close())
	}
	return err
}

// Format formats e as one line, as the logger writes it.
func Format(format string, e Entry) string {
	l := &Logger{format: format}
	return string(l.appendEntry(nil, &e))
}

func (l *Logger) appendEntry(b []byte, e *Entry) []byte {
	f := fielder{json: l.format == FormatJSON, b: b}
	f.start()
	f.str("time", e.Time.UTC().Format(time.RFC3339Nano))
	f.str("service", e.Service)
	f.str("factory", e.Factory)
	f.str("endpoint", e.Endpoint)
	f.str("peer", e.Peer)
	if e.Proxy != "" {
		f.str("proxy", e.Proxy)
	}
	if e.HasPeerCred {
		f.int("peer_uid", int64(e.PeerUID))
		f.int("peer_gid", int64(e.PeerGID))
		f.int("peer_pid", int64(e.PeerPID))
	}
	if e.TLSVersion != "" {
		f.str("tls_version", e.TLSVersion)
	}
	if e.SNI != "" {
		f.str("sni", e.SNI)
	}
	if !e.Rejected {
		f.num("duration_s", strconv.AppendFloat(nil, e.Duration.Seconds(), 'f', 6, 64))
		f.num("bytes_in", strconv.AppendInt(nil, e.BytesIn, 10))
		f.num("bytes_out", strconv.AppendInt(nil, e.BytesOut, 10))
	} else {
		f.num("rejected", []byte("true"))
	}
	f.str("reason", e.Reason)
	if e.PID != 0 {
		f.num("pid", strconv.AppendInt(nil, int64(e.PID), 10))
	}
	if e.Exit != "" {
		f.str("exit", e.Exit)
	}
	return f.end()
}

// fielder appends key/value pairs as a JSON object or a logfmt line.
type fielder struct {
	json bool
	b    []byte
	n    int
}

func (f *fielder) start() {
	if f.json {
		f.b = append(f.b, '{')
	}
}

func (f *fielder) sep(key string) {
	if f.n > 0 {
		if f.json {
			f.b = append(f.b, ',')
		} else {
			f.b = append(f.b, ' ')
		}
	}
	f.n++
	if f.json {
		f.b = append(f.b, '"')
		f.b = append(f.b, key...)
		f.b = append(f.b, '"', ':')
	} else {
		f.b = append(f.b, key...)
		f.b = append(f.b, '=')
	}
}

func (f *fielder) str(key, v string) {
	f.sep(key)
	if f.json {
		f.b = appendJSONString(f.b, v)
		return
	}
	if needsQuote(v) {
		f.b = strconv.AppendQuote(f.b, v)
	} else {
		f.b = append(f.b, v...)
	}
}

func (f *fielder) num(key string, v []byte) {
	f.sep(key)
	f.b = append(f.b, v...)
}

// int appends an integer value.
func (f *fielder) int(key string, v int64) {
	f.sep(key)
	f.b = strconv.AppendInt(f.b, v, 10)
}

func (f *fielder) end() []byte {
	if f.json {
		f.b = append(f.b, '}')
	}
	return append(f.b, '\n')
}

// needsQuote: logfmt values with spaces, quotes, '=' or non-printable
// characters are quoted (and their non-printable characters escaped):
// a peer's string (an SNI) holding a line or paragraph separator or a
// bidirectional override must not look like another line, or reorder this
// one, in a viewer.
func needsQuote(s string) bool {
	if s == "" {
		return true
	}
	for _, r := range s {
		if r <= ' ' || r == '"' || r == '=' || r == utf8.RuneError || !strconv.IsPrint(r) {
			return true
		}
	}
	return false
}

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, fmt.Sprintf(`\u%04x`, c)...)
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case !strconv.IsPrint(r):
			// Separators (U+0085, U+2028, U+2029), bidirectional
			// overrides and other invisible characters, escaped as
			// encoding/json escapes U+2028 and U+2029.
			if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
				b = append(b, fmt.Sprintf(`\u%04x\u%04x`, r1, r2)...)
			} else {
				b = append(b, fmt.Sprintf(`\u%04x`, r)...)
			}
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
