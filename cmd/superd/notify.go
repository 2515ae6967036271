package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifier speaks systemd's notify protocol (sd_notify) when NOTIFY_SOCKET
// is set: READY=1 once every service listens, RELOADING=1 and READY=1
// around a SIGHUP reload, STOPPING=1 at shutdown, STATUS= lines, and
// WATCHDOG=1 pings from the main loop, paused while a reload (or reopen)
// runs, so one that hangs stops them and systemd restarts superd. Without
// NOTIFY_SOCKET it does nothing.
type notifier struct {
	log      *slog.Logger
	enabled  bool
	watchdog time.Duration // the ping period (half of WATCHDOG_USEC); 0: none
	// failing: the last send failed. A failure is logged as a warning
	// once, the next ones at debug level until a send succeeds again:
	// with the notify socket gone, each watchdog ping would log one.
	failing bool
}

func newNotifier(log *slog.Logger) *notifier {
	n := &notifier{log: log, enabled: os.Getenv("NOTIFY_SOCKET") != ""}
	if !n.enabled {
		return n
	}
	// WATCHDOG_PID, when set, must be ours (SdWatchdogEnabled checks).
	if d, err := sdnotify.SdWatchdogEnabled(false); err != nil {
		log.Warn("ignoring the systemd watchdog settings", "err", err)
	} else if d > 0 {
		n.watchdog = d / 2
	}
	return n
}

// send sends one notification; failures are logged, never fatal.
func (n *notifier) send(state string) {
	if !n.enabled {
		return
	}
	_, err := sdnotify.SdNotify(false, state)
	switch {
	case err != nil && !n.failing:
		n.failing = true
		n.log.Warn("sd_notify failed; until it works again, further failures are logged at debug level", "state", state, "err", err)
	case err != nil:
		n.log.Debug("sd_notify failed", "state", state, "err", err)
	case n.failing:
		n.failing = false
		n.log.Info("sd_notify works again", "state", state)
	}
}

func (n *notifier) ready(status string) { n.send(sdnotify.SdNotifyReady + "\nSTATUS=" + status) }

// reloading is sent when a SIGHUP reload begins, with the monotonic clock
// systemd's notify-reload services require.
func (n *notifier) reloading() {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
	n.send(sdnotify.SdNotifyReloading + "\nMONOTONIC_USEC=" + strconv.FormatUint(usec, 10))
}

func (n *notifier) stopping() { n.send(sdnotify.SdNotifyStopping + "\nSTATUS=stopping") }

func (n *notifier) ping() { n.send(sdnotify.SdNotifyWatchdog) }

// ticker returns the watchdog's channel (nil without a watchdog) and a stop
// function.
func (n *notifier) ticker() (<-chan time.Time, func()) {
	if !n.enabled || n.watchdog <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(n.watchdog)
	return t.C, t.Stop
}

// statusLine is the STATUS= text: services, open connections and the last
// reload's result.
func statusLine(services, active int, lastReload string) string {
	return fmt.Sprintf("%d services, %d connections; last reload: %s", services, active, lastReload)
}
