// Package logfile implements the logging service of Twisted's "Writing
// Servers" tutorial: each line received is appended to a file.
//
// Name: logfile. Attributes:
//
//	path            = "..."   the file (required; relative to the config file's folder)
//	fsync           = false   also fsync after writes (batched across connections)
//	max_line_length = 16384   a longer line closes the connection; nothing of it is written
//
// A line ends at LF; a CR right before it is dropped, so nc and telnet both
// work. A partial line at the end of a connection is not a line and is not
// written.
//
// Guarantees: the file is opened in StartFactory (created with mode 0640 if
// missing, appended to otherwise) and closed in StopFactory. The complete
// lines of each chunk read from a connection go to the file in one write(2)
// under the service's lock, before more input is read from that connection:
// lines never interleave or tear, and a line already processed survives even
// SIGKILL. A write the disk takes only part of (it filled up) fails the
// connection and leaves no piece of a line behind: the piece after the last
// whole line is cut off the file again. SIGUSR1 reopens the file (for
// rotation).
//
//	service "logfile" "audit" {
//	  path = "/var/log/superd/audit.log"
//	  endpoint "tcp" { address = "127.0.0.1:9009" }
//	}
package logfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/basic"
)

func init() {
	framework.Register(framework.Spec{
		Name:        "logfile",
		Description: "appends each LF-terminated line received to a file (reopened on SIGUSR1); a last line without LF is not written",
		Config:      Config{MaxLineLength: basic.DefaultMaxLineLength},
		New:         framework.Typed(New),
	})
}

// Config is the configuration of a logfile service.
type Config struct {
	Path          framework.Path `hcl:"path" doc:"file the lines are appended to"`
	Fsync         bool           `hcl:"fsync,optional" doc:"fsync the file after writes (batched)"`
	MaxLineLength int            `hcl:"max_line_length,optional" min:"1" max:"1073741824" doc:"longest line accepted, in bytes; a longer one closes the connection"`
}

// Validate checks that path can be a file.
func (c *Config) Validate(framework.IsSet) error {
	if c.Path == "" {
		return framework.Errorf(&c.Path, "must not be empty")
	}
	if st, err := os.Stat(string(c.Path)); err == nil && st.IsDir() {
		return framework.Errorf(&c.Path, "%s is a folder, not a file", c.Path)
	}
	return nil
}

// New builds a logfile factory from its configuration. It opens nothing:
// the file is opened in StartFactory.
func New(env *framework.Env, cfg *Config) (framework.Factory, error) {
	return &Factory{path: string(cfg.Path), fsync: cfg.Fsync, maxLine: cfg.MaxLineLength, log: env.Log}, nil
}

// Factory owns the file of one logfile service.
type Factory struct {
	path    string
	fsync   bool
	maxLine int
	log     *slog.Logger

	mu      sync.Mutex
	file    *os.File
	stopped bool // StopFactory ran: Reopen must not open the file again
	// writing is the file a write is under way on (set before it, under
	// mu), for Interrupt, which cannot take mu while that write waits.
	writing atomic.Pointer[os.File]
	// interrupted: the drain ran out of time (Interrupt); writes that
	// would wait fail instead.
	interrupted atomic.Bool

	syncReq  chan struct{} // fsync wanted (capacity 1: requests coalesce)
	syncDone chan struct{}
}

func (f *Factory) open() (*os.File, error) {
	return os.OpenFile(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

// StartFactory opens the file.
func (f *Factory) StartFactory() error {
	file, err := f.open()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.file = file
	f.mu.Unlock()
	if f.fsync {
		f.syncReq = make(chan struct{}, 1)
		f.syncDone = make(chan struct{})
		go f.syncer()
	}
	return nil
}

// StopFactory syncs (when fsync is on) and closes the file. Every
// connection has ended by now, so nothing is being written.
func (f *Factory) StopFactory() error {
	if f.fsync {
		close(f.syncReq)
		<-f.syncDone
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	if f.file == nil {
		return nil
	}
	var err error
	if f.fsync {
		err = f.file.Sync()
	}
	err = errors.Join(err, f.file.Close())
	f.file = nil
	return err
}

// Reopen opens the path again and swaps the new file in, so a rotated file
// is let go (SIGUSR1). Once the factory has stopped it does nothing (an
// instance replaced by a reload may be reopened as its drain ends).
func (f *Factory) Reopen() error {
	f.mu.Lock()
	stopped := f.stopped
	f.mu.Unlock()
	if stopped {
		return nil
	}
	file, err := f.open()
	if err != nil {
		return fmt.Errorf("reopen %s: %w", f.path, err)
	}
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return file.Close()
	}
	old := f.file
	f.file = file
	f.mu.Unlock()
	if old == nil {
		return nil
	}
	if f.fsync {
		old.Sync()
	}
	return old.Close()
}

// syncFile is (*os.File).Sync; tests make it slow.
var syncFile = (*os.File).Sync

// syncer fsyncs the file whenever writes asked for it; requests that arrive
// during a sync are served by the next one. Writes do not wait for a sync.
func (f *Factory) syncer() {
	defer close(f.syncDone)
	for range f.syncReq {
		// The sync runs without the lock, so lines go on being written
		// while a slow disk syncs (the next sync covers them). A Reopen
		// meanwhile syncs the old file itself before closing it.
		f.mu.Lock()
		file := f.file
		f.mu.Unlock()
		if file != nil {
			if err := syncFile(file); err != nil && !errors.Is(err, os.ErrClosed) {
				f.log.Error("fsync failed", "path", f.path, "err", err)
			}
		}
	}
}

// write appends lines (whole lines, each ending in LF) in one write.
func (f *Factory) write(lines []byte) error {
	f.mu.Lock()
	if f.file == nil {
		f.mu.Unlock()
		return errors.New("the file is closed")
	}
	f.writing.Store(f.file)
	if f.interrupted.Load() {
		expire(f.file)
	}
	n, err := f.file.Write(lines)
	f.writing.Store(nil)
	if err != nil && n > 0 {
		f.takeBackTorn(lines[:n])
	}
	f.mu.Unlock()
	if err == nil && f.fsync {
		select {
		case f.syncReq <- struct{}{}:
		default:
		}
	}
	return err
}

// Interrupt implements framework.Interrupter: a write waiting for a pipe
// (a FIFO whose reader stopped reading) fails now, as do later ones that
// would wait, so that a connection aborted at the end of a drain ends
// instead of holding the shutdown. A regular file has no deadline: a write
// to it does not wait for a reader.
func (f *Factory) Interrupt() {
	f.interrupted.Store(true)
	if file := f.writing.Load(); file != nil {
		expire(file)
	}
}

// expire makes the file's writes that would wait fail at once (a pipe's,
// which the runtime's poller serves).
func expire(file *os.File) { file.SetWriteDeadline(time.Unix(1, 0)) }

// takeBackTorn is called, under the lock, after a write that failed
// part way (a disk that filled up, a file size limit): written is what
// reached the file. The whole lines of it stay; the piece of a line after
// them is cut off the file again, so that the next write does not join it
// into one torn line. A file that cannot be cut (a pipe) is left as it is.
func (f *Factory) takeBackTorn(written []byte) {
	torn := len(written) - (bytes.LastIndexByte(written, '\n') + 1)
	if torn == 0 {
		return
	}
	// O_APPEND leaves the offset at the end of what this write added. The
	// file is cut only if it still ends there: another writer's lines
	// after it (another superd instance on the same path), or a file
	// truncated meanwhile (logrotate's copytruncate), are left alone.
	end, err := f.file.Seek(0, io.SeekCurrent)
	var st os.FileInfo
	if err == nil {
		st, err = f.file.Stat()
	}
	if err == nil && st.Size() != end {
		return
	}
	if err == nil {
		err = f.file.Truncate(end - int64(torn))
	}
	if err != nil {
		f.log.Error("cannot take back the part of a line a failed write left", "path", f.path, "bytes", torn, "err", err)
	}
}

// BuildProtocol implements framework.Factory.
func (f *Factory) BuildProtocol(net.Addr) framework.Protocol {
	p := &Logger{factory: f}
	p.Delimiter = []byte("\n")
	// One more byte than the limit, for the CR that LineReceived drops; the
	// limit itself is checked there, on the line as written to the file.
	p.MaxLength = f.maxLine + 1
	return p
}

// Logger is the protocol of one connection.
type Logger struct {
	basic.LineReceiver
	factory *Factory
	batch   []byte // the complete lines of the current chunk (during DataReceived)
	partial int    // bytes of the unterminated line buffered so far
}

// ConnectionMade starts receiving lines.
func (l *Logger) ConnectionMade(t framework.Transport) { l.Init(t, l) }

// batches holds the buffers a chunk's lines are collected in: a connection
// takes one for each DataReceived and gives it back once the lines are
// written, so a quiet connection holds none (superd reads up to 32 KiB at
// a time; kept per connection, that would be 40 KiB each).
var batches = sync.Pool{New: func() any { return new([]byte) }}

// DataReceived collects the chunk's complete lines, then writes them in one
// go before returning (and so before more input is read).
func (l *Logger) DataReceived(data []byte) {
	bp := batches.Get().(*[]byte)
	l.batch = (*bp)[:0]
	l.LineReceiver.DataReceived(data)
	l.checkPartial(data)
	var err error
	if len(l.batch) > 0 {
		err = l.factory.write(l.batch)
	}
	if cap(l.batch) <= 64<<10 { // one grown for a long line is let go
		*bp = l.batch[:0]
		batches.Put(bp)
	}
	l.batch = nil
	if err != nil {
		l.factory.log.Error("write failed; closing the connection", "path", l.factory.path, "err", err)
		l.Transport.AbortConnection()
	}
}

// Blocks implements framework.Blocker: DataReceived writes to the file,
// which may be a pipe or a disk that stalls, so the connection's input is
// always delivered on its own goroutine (where superd runs on one CPU, a
// write that waits would otherwise hold up every other connection).
func (l *Logger) Blocks() bool { return true }

// checkPartial closes the connection as soon as the unterminated line can
// no longer fit max_line_length: longer than the limit, not counting a
// final CR that an LF may still follow.
func (l *Logger) checkPartial(data []byte) {
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		l.partial = len(data) - i - 1
	} else {
		l.partial += len(data)
	}
	max := l.factory.maxLine
	if l.partial > max+1 || (l.partial == max+1 && data[len(data)-1] != '\r') {
		l.Transport.LoseConnection()
	}
}

// LineReceived adds one line to the batch, without a CR before the LF.
func (l *Logger) LineReceived(line []byte) {
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > l.factory.maxLine {
		l.Transport.LoseConnection() // no more lines are delivered
		return
	}
	l.batch = append(l.batch, line...)
	l.batch = append(l.batch, '\n')
}

// Interface guards.
var (
	_ framework.Factory        = (*Factory)(nil)
	_ framework.FactoryStarter = (*Factory)(nil)
	_ framework.FactoryStopper = (*Factory)(nil)
	_ framework.Blocker        = (*Logger)(nil)
	_ framework.Reopener       = (*Factory)(nil)
	_ framework.Interrupter    = (*Factory)(nil)
	_ framework.Protocol       = (*Logger)(nil)
	_ framework.Validator      = (*Config)(nil)
)
