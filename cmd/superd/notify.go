package main

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifier speaks systemd's notify protocol (sd_notify) when NOTIFY_SOCKET
// is set: READY=1 once every service listens, RELOADING=1 and READY=1
// around a SIGHUP reload, STOPPING=1 at shutdown, STATUS= lines (with
// READY=1, and again whenever the text has changed, at most every
// statusEvery, so `systemctl status` does not show the connections of
// superd's start for good), and WATCHDOG=1 pings from the main loop,
// paused while a reload (or reopen) runs, so one that hangs stops them
// and systemd restarts superd. Without NOTIFY_SOCKET it does nothing.
//
// The messages go out from a goroutine of their own, in order: sending
// blocks while the receiver's queue is full (a manager that does not read
// it), and the main loop must still take signals then (a second SIGTERM
// exits at once). Pings not sent yet count as one.
type notifier struct {
	log      *slog.Logger
	enabled  bool
	watchdog time.Duration // the ping period (half of WATCHDOG_USEC); 0: none
	// lastStatus is the STATUS= text sent last (the main loop's own).
	lastStatus string

	mu    sync.Mutex
	queue []string // messages not sent yet, oldest first
	wake  chan struct{}
	stop  chan struct{} // closed by close: send what is queued, then end
	done  chan struct{} // closed when the sender has ended
	// failing: the last send failed (the sender's own). A failure is
	// logged as a warning once, the next ones at debug level until a
	// send succeeds again: with the notify socket gone, each watchdog
	// ping would log one.
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
	n.wake = make(chan struct{}, 1)
	n.stop = make(chan struct{})
	n.done = make(chan struct{})
	go n.sender()
	return n
}

// send queues one notification for the sender; it never blocks.
func (n *notifier) send(state string) {
	if !n.enabled {
		return
	}
	n.mu.Lock()
	if state == sdnotify.SdNotifyWatchdog && slices.Contains(n.queue, state) {
		n.mu.Unlock()
		return // a ping waiting already says the loop is alive
	}
	n.queue = append(n.queue, state)
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// sender sends the queued messages in order until close; failures are
// logged, never fatal.
func (n *notifier) sender() {
	defer close(n.done)
	for {
		select {
		case <-n.wake:
		case <-n.stop:
			n.sendQueued()
			return
		}
		n.sendQueued()
	}
}

func (n *notifier) sendQueued() {
	for {
		n.mu.Lock()
		if len(n.queue) == 0 {
			n.mu.Unlock()
			return
		}
		state := n.queue[0]
		n.queue = n.queue[1:]
		n.mu.Unlock()
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
}

// close sends what is queued, waiting for that at most wait (a receiver
// that does not read is not waited for).
func (n *notifier) close(wait time.Duration) {
	if !n.enabled {
		return
	}
	close(n.stop)
	select {
	case <-n.done:
	case <-time.After(wait):
		n.log.Warn("sd_notify messages not sent at exit: the notify socket takes none", "wait", wait)
	}
}

func (n *notifier) ready(status string) {
	n.lastStatus = status
	n.send(sdnotify.SdNotifyReady + "\nSTATUS=" + status)
}

// statusEvery is how often the STATUS= text is looked at while superd
// serves, as php-fpm's systemd_interval does by default; a faster
// watchdog's period is used instead.
const statusEvery = 10 * time.Second

// status sends STATUS= with text unless that is what was sent last.
func (n *notifier) status(text string) {
	if !n.enabled || text == n.lastStatus {
		return
	}
	n.lastStatus = text
	n.send("STATUS=" + text)
}

// statusTicker returns the channel of status's refreshes (nil without
// NOTIFY_SOCKET) and a stop function.
func (n *notifier) statusTicker() (<-chan time.Time, func()) {
	if !n.enabled {
		return nil, func() {}
	}
	every := statusEvery
	if n.watchdog > 0 && n.watchdog < every {
		every = n.watchdog
	}
	t := time.NewTicker(every)
	return t.C, t.Stop
}

// reloading is sent when a SIGHUP reload begins, with the monotonic clock
// systemd's notify-reload services require.
func (n *notifier) reloading() {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
	n.send(sdnotify.SdNotifyReloading + "\nMONOTONIC_USEC=" + strconv.FormatUint(usec, 10))
}

func (n *notifier) stopping() {
	n.lastStatus = "stopping"
	n.send(sdnotify.SdNotifyStopping + "\nSTATUS=stopping")
}

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
