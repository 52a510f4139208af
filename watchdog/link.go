package watchdog

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EnvFD names the environment variable that tells a member process the file
// descriptor of its end of the watchdog pipe. A process started without it
// is not under a watchdog.
const EnvFD = "IMMORTALD_WATCHDOG_FD"

// EnvLeftover names the environment variable that hands a member the
// leases of its dead predecessor that the watchdog could not revoke (hex,
// comma-separated): with the embedded etcd, which died with it, or when
// etcd did not answer. The member revokes them before its first session.
const EnvLeftover = "IMMORTALD_WATCHDOG_LEFTOVER"

// Link is the member's end of the pipe to its watchdog.
type Link struct {
	mu       sync.Mutex
	f        *os.File
	leftover []int64
	sent     bool      // a deadline was sent (Deadline)
	last     time.Time // the last one sent, zero when disarmed
}

// Attach returns the link to this process's watchdog, or nil when the
// process was not started by one. It removes EnvFD from the environment
// and marks the descriptor close-on-exec, so that nothing the member starts
// holds the pipe open.
func Attach() (*Link, error) {
	s, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, nil
	}
	_ = os.Unsetenv(EnvFD)
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("watchdog: %s=%q is not a file descriptor above 2", EnvFD, s)
	}
	syscall.CloseOnExec(fd)
	l := &Link{f: os.NewFile(uintptr(fd), "watchdog")}
	if s := os.Getenv(EnvLeftover); s != "" {
		_ = os.Unsetenv(EnvLeftover)
		for _, h := range strings.Split(s, ",") {
			if id, err := strconv.ParseInt(h, 16, 64); err == nil && id != 0 {
				l.leftover = append(l.leftover, id)
			}
		}
	}
	return l, nil
}

// Leftover returns the leases of the dead member before this one that are
// still to be revoked. Revoking them is safe for the same reason as the
// watchdog's revoke: their holder is dead.
func (l *Link) Leftover() []int64 {
	if l == nil {
		return nil
	}
	return l.leftover
}

func leftoverEnv(ids []int64) string {
	hex := make([]string, len(ids))
	for i, id := range ids {
		hex[i] = strconv.FormatInt(id, 16)
	}
	return EnvLeftover + "=" + strings.Join(hex, ",")
}

// Session tells the watchdog a lease the member was granted. Call it before
// any key is written on the lease: the write lands in the pipe's kernel
// buffer at once, so the watchdog reads it even if the member dies the next
// instant. A lease the watchdog never heard of holds no key and expires on
// its own.
func (l *Link) Session(lease int64) { l.send(fmt.Sprintf("lease %x", lease)) }

// Closing tells the watchdog that the member is stopping gracefully: it
// hands its lives off and revokes its own lease. A member that exits 0 after
// Closing is not revoked after, nor restarted.
func (l *Link) Closing() { l.send("closing") }

// Deadline tells the watchdog the time by which the member's work (the
// Runs of its lives, their processes) will have stopped unless it says a
// later one: its session's safe deadline (supervisor.WorkDeadline); ok
// false disarms it (no work runs). The watchdog kills a member that is
// still alive a little past that time without having said another (it is
// stopped, or hung), before its lease can expire on the server, so that
// nothing of it runs on once a peer may start its lives. Only a change is
// sent. The time goes over the pipe on CLOCK_MONOTONIC, which both
// processes share.
func (l *Link) Deadline(d time.Time, ok bool) {
	if l == nil {
		return
	}
	if !ok {
		d = time.Time{}
	}
	l.mu.Lock()
	same := l.sent && d.Equal(l.last)
	l.sent, l.last = true, d
	l.mu.Unlock()
	if same {
		return
	}
	var ns int64
	if ok {
		ns = max(monoNow()+int64(time.Until(d)), 1)
	}
	l.send("deadline " + strconv.FormatInt(ns, 10))
}

// monoNow reads CLOCK_MONOTONIC in nanoseconds.
func monoNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// Fatal tells the watchdog that the member is about to exit for a reason a
// restart cannot fix (etcd refused its credentials or its permission on the
// prefix, its TLS files are refused): the watchdog then does not restart it,
// and exits with its status.
func (l *Link) Fatal() { l.send("fatal") }

// send writes one line. An error means the watchdog is gone, and with it
// (parent-death signal) this process in a moment: nothing to do.
func (l *Link) send(line string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = io.WriteString(l.f, line+"\n")
}

// report is what a member told its watchdog, read until the pipe closed.
type report struct {
	leases  []int64 // in the order granted
	closing bool
	fatal   bool // the member said a restart cannot help
}

// readReport reads the member's lines until EOF (every writer gone). A line
// it does not know is skipped: the pipe is ours alone, but an older or newer
// member must not break the watchdog.
func readReport(r io.Reader, onLease func(int64), onDeadline func(int64)) report {
	var rep report
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		word, arg, _ := strings.Cut(sc.Text(), " ")
		switch word {
		case "lease":
			id, err := strconv.ParseInt(arg, 16, 64)
			if err == nil && id != 0 {
				rep.leases = append(rep.leases, id)
				if onLease != nil {
					onLease(id)
				}
			}
		case "deadline":
			if ns, err := strconv.ParseInt(arg, 10, 64); err == nil && ns >= 0 && onDeadline != nil {
				onDeadline(ns)
			}
		case "closing":
			rep.closing = true
		case "fatal":
			rep.fatal = true
		}
	}
	return rep
}
