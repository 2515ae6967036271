package main

import (
	"log/slog"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/metrics"
	"github.com/superd-dev/superd/supervisor"
)

// accessLogs keeps the supervisor's access log in step with the
// configuration: opened when a service asks for it, replaced when the
// access_log block changes on reload, reopened on SIGUSR1.
type accessLogs struct {
	log  *slog.Logger
	m    *metrics.Metrics
	sup  *supervisor.Supervisor
	cur  *accesslog.Logger
	conf config.AccessLog // what cur was opened with
}

// wanted is the access log cfg asks for, or nil when no service logs.
func wanted(cfg *config.File) *config.AccessLog {
	for _, s := range cfg.Services {
		if s.AccessLog {
			if cfg.AccessLog != nil {
				return cfg.AccessLog
			}
			return &config.AccessLog{Path: "stderr", Format: accesslog.FormatJSON}
		}
	}
	return nil
}

// prepare opens the access log cfg asks for, unless the current one is
// it; changed reports whether commit must install the result (nil: none). A log that
// cannot be opened is an error (at start: superd does not start; on
// reload: the reload fails before anything changes).
func (a *accessLogs) prepare(cfg *config.File) (*accesslog.Logger, bool, error) {
	w := wanted(cfg)
	switch {
	case w == nil:
		return nil, a.cur != nil, nil
	case a.cur != nil && *w == a.conf:
		return a.cur, false, nil
	}
	l, err := accesslog.Open(w.Path, w.Format, a.m.AccessLogDropped)
	if err != nil {
		return nil, false, err
	}
	l.SetErrorLog(a.log)
	return l, true, nil
}

// commit installs l (from prepare) once the configuration is in force.
func (a *accessLogs) commit(cfg *config.File, l *accesslog.Logger, changed bool) {
	if !changed {
		return
	}
	old := a.sup.SetAccessLog(l)
	a.cur = l
	if w := wanted(cfg); w != nil {
		a.conf = *w
		a.log.Info("access log", "path", w.Path, "format", w.Format)
	}
	if old != nil {
		old.Close()
	}
}

// discard closes a prepared log that will not be used (a failed reload).
func (a *accessLogs) discard(l *accesslog.Logger, changed bool) {
	if changed && l != nil {
		l.Close()
	}
}

func (a *accessLogs) reopen() {
	if err := a.cur.Reopen(); err != nil {
		a.log.Error("cannot reopen the access log", "err", err)
	}
}

func (a *accessLogs) close() {
	if a.cur != nil {
		a.sup.SetAccessLog(nil)
		a.cur.Close()
	}
}
