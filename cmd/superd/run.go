package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/hashicorp/hcl/v2"

	"github.com/superd-dev/superd/accesslog"
	"github.com/superd-dev/superd/config"
	"github.com/superd-dev/superd/metrics"
	execsvc "github.com/superd-dev/superd/services/exec"
	"github.com/superd-dev/superd/supervisor"
)

func cmdRun(args []string, stderr io.Writer) int {
	// Sockets passed by the service manager (LISTEN_FDS for our pid):
	// taken, made close-on-exec, and LISTEN_* cleared before anything else
	// runs, so no child ever sees them.
	passed := activation.Files(true)
	fs, path := newFlagSet("run", stderr)
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	log, err := newLogger(*logFormat, *logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "superd run: %v\n%s", err, usage)
		return exitUsage
	}
	// Services that log through slog's default logger log in the same
	// format, at the same level, to the same place.
	slog.SetDefault(log)

	// Signals are caught from the start, so one arriving during startup is
	// not lost (and does not kill the process half-started).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)

	// As a container's PID 1 (or a subreaper), superd is handed its
	// programs' orphans, and reaps them.
	orphans, stopOrphans := context.WithCancel(context.Background())
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		execsvc.ReapOrphans(orphans, log)
	}()
	defer func() {
		stopOrphans()
		<-reaped
	}()

	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitFailure
	}
	raiseFileLimit(log)

	m := metrics.New(buildVersion())
	sup := supervisor.New(log, m)
	sup.Inherit(passed)
	status := &statusState{sup: sup, configFile: *path, started: time.Now()}
	if abs, err := filepath.Abs(*path); err == nil {
		status.configFile = abs
	}

	var httpSrv *http.Server
	if cfg.MetricsAddress != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			log.Error("cannot start the metrics listener", "address", cfg.MetricsAddress, "err", err)
			return exitFailure
		}
		mux := http.NewServeMux()
		mux.Handle("/", m.Handler(sup.NotReady))
		mux.Handle("/status", status)
		httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go httpSrv.Serve(ln)
		defer httpSrv.Close()
		log.Info("metrics listening", "address", ln.Addr().String())
	}

	if err := checkRunAs(cfg.RunAs); err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	alogs := &accessLogs{log: log, m: m, sup: sup}
	defer alogs.close()
	al, alChanged, err := alogs.prepare(cfg)
	if err != nil {
		log.Error("cannot open the access log", "err", err)
		return exitFailure
	}
	alogs.commit(cfg, al, alChanged)
	stopCluster, err := startCluster(log, cfg, m) // before the services, stopped after them
	if err != nil {
		log.Error("cannot start the cluster", "err", err)
		return exitFailure
	}
	defer stopCluster()
	// Privileges go once every socket is bound and every factory has
	// started, before the first connection is accepted.
	dropRoot := func() error {
		if err := dropPrivileges(log, cfg.RunAs); err != nil {
			return fmt.Errorf("cannot drop privileges: %w", err)
		}
		return nil
	}
	if err := sup.StartThen(cfg, dropRoot); err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	sup.CloseUnclaimedInherited()
	runAs := cfg.RunAs
	log.Info("superd started", "config", *path, "services", len(cfg.Services), "version", buildVersion())
	notify := newNotifier(log)
	lastReload := "none"
	statusText := func() string {
		return statusLine(len(sup.Services()), sup.ActiveConnections(), lastReload)
	}
	notify.ready(statusText())
	// The watchdog is pinged from this loop: if it stops turning (a reload
	// that hangs), systemd sees it.
	watchdog, stopWatchdog := notify.ticker()
	defer stopWatchdog()

	for {
		var sig os.Signal
		select {
		case <-watchdog:
			notify.ping()
			continue
		case sig = <-sigs:
		}
		switch sig {
		case syscall.SIGHUP:
			notify.reloading()
			err := reload(log, sup, m, *path, runAs, alogs)
			status.reloaded(err)
			if err == nil {
				lastReload = "success"
			} else {
				lastReload = "failure"
			}
			notify.ready(statusText())
		case syscall.SIGUSR1:
			sup.Reopen()
			alogs.reopen()
		case syscall.SIGINT, syscall.SIGTERM:
			timeout := sup.ShutdownTimeout()
			log.Info("shutting down", "signal", sig.String(), "timeout", timeout)
			notify.stopping()
			done := make(chan error, 1)
			go func() { done <- sup.Shutdown(timeout) }()
			for {
				select {
				case <-watchdog:
					notify.ping()
				case err := <-done:
					if err != nil {
						log.Error("shutdown finished with errors", "err", err)
					}
					log.Info("superd stopped")
					return exitOK
				case sig := <-sigs:
					if sig == syscall.SIGINT || sig == syscall.SIGTERM {
						log.Warn("second signal: exiting without finishing the drain", "signal", sig.String())
						abandonCluster.Store(true)
						// Open connections are aborted and programs
						// started by exec killed (not left running
						// without superd), waiting for that briefly.
						sup.CutShutdown()
						select {
						case <-done:
						case <-time.After(forcedExitWait):
						}
						return exitFailure
					}
				}
			}
		}
	}
}

// forcedExitWait bounds how long a second signal waits for the aborted
// connections and killed programs to be gone before superd exits.
const forcedExitWait = 2 * time.Second

// reload re-reads the configuration file and applies it (SIGHUP); it
// returns why it failed, or nil.
func reload(log *slog.Logger, sup *supervisor.Supervisor, m *metrics.Metrics, path string, runAs *config.RunAs, alogs *accessLogs) error {
	log.Info("reloading configuration", "config", path)
	cfg, err := loadConfigErr(path)
	if err == nil && !cfg.RunAs.Same(runAs) {
		err = errors.New("user and group apply when superd starts; restart superd to change them")
	}
	if err == nil {
		err = clusterUnchanged(cfg)
	}
	var al *accesslog.Logger
	alChanged := false
	if err == nil {
		if al, alChanged, err = alogs.prepare(cfg); err != nil {
			err = fmt.Errorf("access log: %w", err)
		}
	}
	if err == nil {
		if err = sup.Reload(cfg); err != nil {
			alogs.discard(al, alChanged) // the running services keep theirs
		} else {
			alogs.commit(cfg, al, alChanged)
		}
	}
	if err != nil {
		m.ConfigReloads.WithLabelValues("failure").Inc()
		m.LastReloadOK.Set(0)
		logReloadError(log, err)
		return err
	}
	m.ConfigReloads.WithLabelValues("success").Inc()
	m.LastReloadOK.Set(1)
	log.Info("configuration reloaded", "services", len(cfg.Services))
	return nil
}

// raiseFileLimit raises the soft open-file limit to the hard limit: every
// connection is a file descriptor. The Go runtime has raised it already,
// to one below the hard limit, and gives the programs superd starts the
// limit superd was started with; raising it again (syscall.Setrlimit)
// would make them inherit the raised one, so that is left as it is.
func raiseFileLimit(log *slog.Logger) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur+1 < rl.Max {
		old := rl.Cur
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			log.Warn("cannot raise the open-file limit", "soft", old, "hard", rl.Max, "err", err)
			return
		}
		log.Info("raised the open-file limit", "from", old, "to", rl.Max)
		return
	}
	log.Info("open-file limit", "limit", rl.Cur)
}

// loadConfigErr loads path for a reload, returning diagnostics as an error.
func loadConfigErr(path string) (*config.File, error) {
	return config.Load(path)
}

// logReloadError logs why a reload failed: each configuration diagnostic as
// one structured line, or the start error.
func logReloadError(log *slog.Logger, err error) {
	var de *config.DiagnosticsError
	if errors.As(err, &de) {
		for _, d := range de.Diagnostics() {
			if d.Severity != hcl.DiagError {
				continue
			}
			pos := ""
			if d.Subject != nil {
				pos = d.Subject.String()
			}
			log.Error("reload failed: invalid configuration; nothing changed",
				"pos", pos, "summary", d.Summary, "detail", d.Detail)
		}
		return
	}
	log.Error("reload failed; nothing changed", "err", err)
}
