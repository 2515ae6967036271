//go:build linux

package exec

import (
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSpawnSession measures what a new session per child costs (SPEC
// section 9 asks for one): /bin/true started and reaped, as the exec
// factory does it, with and without Setsid. Besides the time per spawn it
// reports the CPU the parent spent (parent-µs/op: fork, exec's wait, the
// reap) and the child's own (child-µs/op), from getrusage. Where the
// kernel gives each new session a scheduler autogroup
// (/proc/sys/kernel/sched_autogroup_enabled), setsid creates one in the
// child and the reap destroys it.
func BenchmarkSpawnSession(b *testing.B) {
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		b.Fatal(err)
	}
	defer devNull.Close()
	for _, bc := range []struct {
		name   string
		setsid bool
	}{{"setsid", true}, {"nosetsid", false}} {
		b.Run(bc.name, func(b *testing.B) {
			attr := &syscall.ProcAttr{
				Env:   []string{"PATH=/usr/bin:/bin"},
				Files: []uintptr{devNull.Fd(), devNull.Fd(), devNull.Fd()},
				Sys:   &syscall.SysProcAttr{Setsid: bc.setsid},
			}
			var self0, self1, kids0, kids1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &self0)
			syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids0)
			b.ResetTimer()
			for range b.N {
				pid, err := syscall.ForkExec("/bin/true", []string{"true"}, attr)
				if err != nil {
					b.Fatal(err)
				}
				var ws syscall.WaitStatus
				for {
					_, err := syscall.Wait4(pid, &ws, 0, nil)
					if err != syscall.EINTR {
						break
					}
				}
			}
			b.StopTimer()
			syscall.Getrusage(syscall.RUSAGE_SELF, &self1)
			syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids1)
			b.ReportMetric(cpuMicros(&self0, &self1)/float64(b.N), "parent-µs/op")
			b.ReportMetric(cpuMicros(&kids0, &kids1)/float64(b.N), "child-µs/op")
		})
	}
}

// cpuMicros is the user and system CPU between two getrusage readings,
// in µs.
func cpuMicros(a, b *syscall.Rusage) float64 {
	d := func(x, y syscall.Timeval) time.Duration {
		return time.Duration(y.Nano() - x.Nano())
	}
	return float64(d(a.Utime, b.Utime)+d(a.Stime, b.Stime)) / float64(time.Microsecond)
}

// BenchmarkStderrLog compares the kinds of socket the stderr log could
// use: 8 writers (goroutines of this process, so one pid) write 64-byte
// lines to the children's end, each line one write as a program's stderr
// gives them, while the reader logs them (to a handler that drops them,
// past the rate limit: the cost is reading and cutting lines). It reports
// superd's CPU per line (reader and writers, getrusage).
func BenchmarkStderrLog(b *testing.B) {
	line := []byte(strings.Repeat("x", 63) + "\n")
	for _, bc := range []struct {
		name string
		typ  int
	}{{"stream", unix.SOCK_STREAM}, {"dgram", unix.SOCK_DGRAM}, {"seqpacket", unix.SOCK_SEQPACKET}} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := newStderrLogOf(slog.New(slog.DiscardHandler), bc.typ)
			if err != nil {
				b.Fatal(err)
			}
			var r0, r1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
			b.ResetTimer()
			var wg sync.WaitGroup
			const writers = 8
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < b.N; i += writers {
						if _, err := unix.Write(int(s.fd()), line); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			s.exited(os.Getpid())
			b.StopTimer()
			syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
			b.ReportMetric(cpuMicros(&r0, &r1)*1000/float64(b.N), "cpu-ns/line")
			s.close()
		})
	}
}

// BenchmarkSpawnConcurrent measures starts made by 8 goroutines at once,
// as 8 connections arriving together make them: /bin/echo started and
// reaped through the spawner thread (spawn, what the exec factory does)
// and with syscall.StartProcess called by each goroutine itself. Both
// reap in the runtime's poller through a pidfd, as the factory does.
// Besides the time per start it reports the CPU of this process per start
// (parent-µs/op) and the context switches it made (csw/op); run it with
// -benchtime=2000x or more, so the children keep both CPUs busy.
func BenchmarkSpawnConcurrent(b *testing.B) {
	if !pidfdWorks() {
		b.Skip("pidfds do not work here")
	}
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devNull.Close()
	for _, bc := range []struct {
		name  string
		start func(string, []string, *syscall.ProcAttr) (int, error)
	}{
		{"spawner", spawn},
		{"direct", func(path string, argv []string, attr *syscall.ProcAttr) (int, error) {
			pid, _, err := syscall.StartProcess(path, argv, attr)
			return pid, err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			startAndReap := func() error {
				pidfd := -1
				pid, err := bc.start("/bin/echo", []string{"echo", "QUOTE"}, &syscall.ProcAttr{
					Env:   []string{"PATH=/usr/bin:/bin"},
					Files: []uintptr{devNull.Fd(), devNull.Fd(), devNull.Fd()},
					Sys:   &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd},
				})
				if err != nil {
					return err
				}
				c := &child{pid: pid, pidfd: pollable(pidfd, "pidfd")}
				_, err = c.reap()
				return err
			}
			var r0, r1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
			b.ResetTimer()
			var wg sync.WaitGroup
			const starters = 8
			for s := range starters {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := s; i < b.N; i += starters {
						if err := startAndReap(); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
			b.ReportMetric(cpuMicros(&r0, &r1)/float64(b.N), "parent-µs/op")
			b.ReportMetric(float64(r1.Nvcsw+r1.Nivcsw-r0.Nvcsw-r0.Nivcsw)/float64(b.N), "csw/op")
		})
	}
}
