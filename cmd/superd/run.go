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
	// SIGINT and SIGTERM have a channel of their own: signal.Notify drops
	// a signal a full channel cannot take, and SIGHUPs or SIGUSR1s piling
	// up must never crowd out a terminating one.
	stopSigs := make(chan os.Signal, 2)
	signal.Notify(stopSigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(stopSigs)
	otherSigs := make(chan os.Signal, 4)
	signal.Notify(otherSigs, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(otherSigs)
	// A write to stderr (the log, an access log on "stderr") whose reader
	// has gone (a pipe to a logger that exited) fails with EPIPE and is
	// dropped as any failed write; uncaught, Go would end the process
	// with SIGPIPE. Caught, not ignored: an ignored SIGPIPE would be
	// inherited by exec's programs.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)

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
		httpSrv = newMetricsServer(mux)
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
	runAs := cfg.RunAs
	// Startup, each reload and each reopen run as a task in a goroutine of
	// their own, never in this loop: a factory's StartFactory or Reopen
	// may block (a logfile whose path is a FIFO nobody reads yet blocks in
	// open(2)), and the loop must still take a second SIGINT/SIGTERM then,
	// which exits at once (SPEC section 2). One task runs at a time; a
	// SIGHUP or SIGUSR1 taken during one is remembered (several of a kind
	// count as one) and handled once it has ended. A first SIGINT/SIGTERM
	// taken during one is remembered too: the shutdown begins once the task
	// has ended (Shutdown needs the supervisor's lock, which startup and
	// reloads hold, and a reload begun is finished rather than refused).
	var (
		task                   string           // "startup", "reload" or "reopen": what busy reports on
		busy                   chan error       // the task under way; nil when none
		wantReload, wantReopen bool             // SIGHUP, SIGUSR1 taken during a task
		stopSig                os.Signal        // a first SIGINT/SIGTERM taken during a task
		stopped                chan error       // the Shutdown under way; nil before it begins
		watchdog               <-chan time.Time // pings, once READY=1 is sent
		statusTick             <-chan time.Time // STATUS= refreshes, once READY=1 is sent
	)
	run := func(name string, f func() error) {
		task, busy = name, make(chan error, 1)
		go func() { busy <- f() }()
	}
	notify := newNotifier(log)
	defer notify.close(time.Second)
	lastReload := "none"
	statusText := func() string {
		return statusLine(len(sup.Services()), sup.ActiveConnections(), lastReload)
	}
	shutdown := func(sig os.Signal) {
		timeout := sup.ShutdownTimeout()
		log.Info("shutting down", "signal", sig.String(), "timeout", timeout)
		notify.stopping()
		stopped = make(chan error, 1)
		go func() { stopped <- sup.Shutdown(timeout) }()
	}
	run("startup", func() error {
		// The access log is opened here, not before the loop: its open
		// may block too (a FIFO nobody has opened yet).
		al, alChanged, err := alogs.prepare(cfg)
		if err != nil {
			return fmt.Errorf("cannot open the access log: %w", err)
		}
		alogs.commit(cfg, al, alChanged)
		return sup.StartThen(cfg, dropRoot)
	})
	for {
		// The watchdog is pinged from this loop, but not while a task is
		// under way: one that hangs (a reload stuck in a factory) stops the
		// pings, and systemd sees it.
		ping := watchdog
		if busy != nil {
			ping = nil
		}
		select {
		case <-ping:
			notify.ping()
		case <-statusTick:
			// Not during a task (its READY=1 brings the new text), nor
			// once STOPPING=1 has said what superd is doing.
			if busy == nil && stopped == nil {
				notify.status(statusText())
			}
		case err := <-busy:
			busy = nil
			switch task {
			case "startup":
				if err != nil {
					log.Error("cannot start", "err", err)
					return exitFailure
				}
				sup.CloseUnclaimedInherited()
				log.Info("superd started", "config", *path, "services", len(cfg.Services), "version", buildVersion())
				notify.ready(statusText())
				var stopWatchdog, stopStatus func()
				watchdog, stopWatchdog = notify.ticker()
				defer stopWatchdog() // once: there is one startup
				statusTick, stopStatus = notify.statusTicker()
				defer stopStatus()
			case "reload":
				status.reloaded(err)
				if err == nil {
					lastReload = "success"
				} else {
					lastReload = "failure"
				}
				notify.ready(statusText())
			}
		case sig := <-stopSigs:
			if stopped == nil && stopSig == nil {
				if busy == nil {
					shutdown(sig)
					continue
				}
				stopSig = sig
				log.Info("shutdown requested; it begins once the "+task+" under way has ended", "signal", sig.String())
				continue
			}
			log.Warn("second signal: exiting without finishing the drain", "signal", sig.String())
			abandonCluster.Store(true)
			if stopped == nil {
				// The shutdown waiting for a task begins now: should the
				// task end within forcedExitWait, the services it leaves
				// are cut short like the others.
				shutdown(stopSig)
			}
			// Open connections are aborted and programs started by exec
			// killed (not left running without superd), waiting for that
			// briefly; also those of the services a stuck task keeps from
			// the shutdown (the wait then runs out).
			sup.CutShutdown()
			select {
			case <-stopped:
			case <-time.After(forcedExitWait):
			}
			return exitFailure
		case sig := <-otherSigs:
			if stopped != nil || stopSig != nil {
				continue // no reload or reopen once a shutdown is asked for
			}
			if sig == syscall.SIGHUP {
				wantReload = true
			} else {
				wantReopen = true
			}
			if busy != nil {
				log.Debug("signal taken during a "+task+"; handled once it ends", "signal", sig.String())
			}
		case err := <-stopped:
			if err != nil {
				log.Error("shutdown finished with errors", "err", err)
			}
			log.Info("superd stopped")
			return exitOK
		}
		// Once no task is under way: the shutdown asked for during the last
		// one, else what SIGUSR1 and SIGHUP asked for.
		if busy != nil || stopped != nil {
			continue
		}
		switch {
		case stopSig != nil:
			shutdown(stopSig)
		case wantReopen:
			wantReopen = false
			run("reopen", func() error {
				sup.Reopen()
				alogs.reopen()
				return nil
			})
		case wantReload:
			wantReload = false
			notify.reloading()
			run("reload", func() error { return reload(log, sup, m, *path, runAs, cfg.MetricsAddress, alogs) })
		}
	}
}

// forcedExitWait bounds how long a second signal waits for the aborted
// connections and killed programs to be gone before superd exits.
const forcedExitWait = 2 * time.Second

// reload re-reads the configuration file and applies it (SIGHUP); it
// returns why it failed, or nil.
// metricsAddr is the metrics address superd started with, which a reload
// does not change.
func reload(log *slog.Logger, sup *supervisor.Supervisor, m *metrics.Metrics, path string, runAs *config.RunAs, metricsAddr string, alogs *accessLogs) error {
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
	if cfg.MetricsAddress != metricsAddr {
		log.Warn("the metrics address is read at start only: the running one is kept until superd restarts",
			"running", metricsAddr, "file", cfg.MetricsAddress)
	}
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

// The metrics listener's limits: a client that sends a request slowly,
// reads its answer slowly or keeps an idle connection open is cut off in
// the end, so none holds a descriptor and a goroutine for good (the
// descriptors are the services' too). An answer has a minute to be
// written (/status?connections=1 lists up to 10,000 connections); an
// idle connection outlives a 15 s scrape interval.
var metricsLimits = struct {
	header, read, write, idle time.Duration
}{10 * time.Second, 30 * time.Second, time.Minute, time.Minute}

// newMetricsServer serves /metrics, /healthz, /readyz and /status.
func newMetricsServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: metricsLimits.header,
		ReadTimeout:       metricsLimits.read,
		WriteTimeout:      metricsLimits.write,
		IdleTimeout:       metricsLimits.idle,
		MaxHeaderBytes:    64 << 10,
	}
}
