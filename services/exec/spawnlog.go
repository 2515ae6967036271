package exec

import (
	"log/slog"
	"sync"
	"time"
)

// spawnLogEvery is the least time between two log lines about programs
// that could not be started for a connection.
const spawnLogEvery = time.Second

// spawnLog logs the connections whose program could not be started (a
// program removed or made unreadable while superd runs, a process limit)
// with the cause, at most once every spawnLogEvery: a client reconnecting
// in a loop must not turn each attempt into a log line. Each line says how
// many failures were not logged since the previous one, and the first
// start after failures that were not logged says so too; every failure is
// counted in superd_connections_rejected_total{reason="spawn"} either way.
type spawnLog struct {
	mu        sync.Mutex
	last      time.Time // when a failure was last logged
	notLogged int       // failures since, not logged
}

// failed logs, or counts, a failure to start program for peer.
func (l *spawnLog) failed(log *slog.Logger, program, peer string, err error) {
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < spawnLogEvery {
		l.notLogged++
		l.mu.Unlock()
		return
	}
	n := l.notLogged
	l.last, l.notLogged = now, 0
	l.mu.Unlock()
	attrs := []any{"program", program, "peer", peer, "err", err}
	if n > 0 {
		attrs = append(attrs, "failures_not_logged", n)
	}
	log.Error("cannot start program", attrs...)
}

// started notes a program started: failures not logged before it are
// logged now, so the count is never lost when the failures stop.
func (l *spawnLog) started(log *slog.Logger, program string) {
	l.mu.Lock()
	n := l.notLogged
	if n == 0 {
		l.mu.Unlock()
		return
	}
	l.notLogged = 0
	l.mu.Unlock()
	log.Warn("program started again after failures", "program", program, "failures_not_logged", n)
}
