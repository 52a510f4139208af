package watchdog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/immortald/immortald/internal/backoff"
	"github.com/immortald/immortald/lease"
)

// Config configures a watchdog.
type Config struct {
	// Path of the member's executable. Default: this process's executable.
	Path string
	// Args are the member's arguments, without argv[0].
	Args []string
	// Env is the member's environment; EnvFD is added. Default: this
	// process's environment.
	Env []string
	// Stdout and Stderr of the member. Default: this process's.
	Stdout, Stderr *os.File
	// Revoke revokes a lease of a dead member in etcd. Nil: the watchdog
	// revokes nothing (the member ran the embedded etcd, which died with
	// it).
	Revoke func(ctx context.Context, lease int64) error
	// LeaseTTL of the member's sessions: after this long a dead member's
	// lease has expired on its own, so the watchdog stops trying to revoke
	// it, and stops waiting for a process that will not die. Default 5s.
	LeaseTTL time.Duration
	// Margin is the member's safe-deadline margin (lease.Config.Margin):
	// its lease cannot expire on the server before its reported work
	// deadline plus Margin. A member still alive 3/4 of Margin past its
	// work deadline is killed, which leaves a quarter (at least 62 ms) for
	// the kill. Default lease.DefaultMargin(LeaseTTL).
	Margin time.Duration
	// Restart the member after it died. False: Run returns an error when
	// the member first dies, after the revoke (under Kubernetes, the
	// container restarts and the kubelet counts it).
	Restart bool
	// MinBackoff is the delay before the first restart; it doubles with
	// each death up to MaxBackoff, and starts over once a member has run
	// StableAfter. Defaults 250ms, 30s, 5s.
	MinBackoff, MaxBackoff, StableAfter time.Duration
	// Signals are forwarded to the member. The first one also means the
	// watchdog is to stop: it is not restarted after it exits.
	Signals <-chan os.Signal
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Path == "" {
		p, err := os.Executable()
		if err != nil {
			return fmt.Errorf("watchdog: own executable: %w", err)
		}
		c.Path = p
	}
	if c.Env == nil {
		c.Env = os.Environ()
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = lease.DefaultTTL
	}
	if c.Margin == 0 {
		c.Margin = lease.DefaultMargin(c.LeaseTTL)
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 250 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.StableAfter == 0 {
		c.StableAfter = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Validate checks c, one rule per line, naming the values.
func (c *Config) Validate() error {
	if c.LeaseTTL <= 0 {
		return fmt.Errorf("watchdog: lease TTL (%s) must be positive", c.LeaseTTL)
	}
	if c.MinBackoff <= 0 {
		return fmt.Errorf("watchdog: minimum restart backoff (%s) must be positive", c.MinBackoff)
	}
	if c.MaxBackoff < c.MinBackoff {
		return fmt.Errorf("watchdog: maximum restart backoff (%s) is below the minimum (%s)", c.MaxBackoff, c.MinBackoff)
	}
	return nil
}

// ErrMemberDied is returned by Run when the member died and was not to be
// restarted.
var ErrMemberDied = errors.New("watchdog: member died")

// ErrMemberFatal is returned by Run when the member exited after saying
// (Link.Fatal) that a restart cannot help: it has said why on its own
// stderr, which is the watchdog's.
var ErrMemberFatal = errors.New("watchdog: member stopped for a reason a restart cannot fix")

// Watchdog runs one member process at a time.
type Watchdog struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	member   *os.Process // the running member, nil between members
	stopping bool        // a signal came: forward, wait, do not restart

	stopped context.Context // ends with the first signal
	stop    context.CancelFunc
}

// New checks cfg and returns a watchdog.
func New(cfg Config) (*Watchdog, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	stopped, stop := context.WithCancel(context.Background())
	return &Watchdog{cfg: cfg, log: cfg.Logger, stopped: stopped, stop: stop}, nil
}

// Run starts the member and keeps it running until a signal stops it (see
// Config.Signals) or ctx ends (which is a SIGTERM to the member). It
// returns nil when the last member exited cleanly (status 0).
func (w *Watchdog) Run(ctx context.Context) error {
	if err := becomeSubreaper(); err != nil {
		w.log.Warn("watchdog: cannot become a child subreaper; a member's orphaned children are not collected", "err", err)
	}
	defer w.stop()
	fwdDone := make(chan struct{})
	defer func() { <-fwdDone }()
	fwdCtx, cancelFwd := context.WithCancel(context.Background())
	defer cancelFwd()
	go func() {
		defer close(fwdDone)
		w.forward(ctx, fwdCtx)
	}()

	retry := backoff.New(w.cfg.MinBackoff, w.cfg.MaxBackoff)
	var (
		last     error   // why the previous member ended
		leftover []int64 // leases of dead members not revoked yet
	)
	for {
		start := time.Now()
		d, err := w.runMember(leftover)
		if errors.Is(err, errStopped) {
			return last // a signal came before this member could start
		}
		if err != nil {
			return err
		}
		ran := time.Since(start)
		if d.clean() {
			w.log.Info("watchdog: member exited cleanly", "pid", d.pid)
			return nil
		}
		if d.rep.fatal {
			// It said why on our stderr: one line, not three.
			w.log.Debug("watchdog: member stopped for a reason a restart cannot fix", "pid", d.pid, "status", d.status.String())
			w.afterDeath(d)
			return fmt.Errorf("%w: %s", ErrMemberFatal, d.status)
		}
		w.log.Warn("watchdog: member died", "pid", d.pid, "status", d.status.String(), "graceful_stop_begun", d.rep.closing,
			"ran", ran.Round(time.Millisecond), "leases", len(d.rep.leases))
		leftover = w.afterDeath(d)
		if w.isStopping() {
			return fmt.Errorf("%w while stopping: %s", ErrMemberDied, d.status)
		}
		if !w.cfg.Restart {
			return fmt.Errorf("%w: %s (not restarted: --restart-member=false)", ErrMemberDied, d.status)
		}
		if ran >= w.cfg.StableAfter {
			retry.Reset()
		}
		last = fmt.Errorf("%w: %s", ErrMemberDied, d.status)
		if !retry.Wait(w.stopped) {
			return last
		}
	}
}

// death is what the watchdog knows of a member that exited.
type death struct {
	pid    int
	status *os.ProcessState
	rep    report
}

// clean reports a graceful stop: the member said it was closing and exited
// 0, having revoked its own lease after handing its lives off. Anything else
// is a death, status 0 without "closing" too.
func (d death) clean() bool { return d.status.Success() && d.rep.closing }

// runMember starts one member and waits for it to exit. Starting and
// waiting happen on one locked OS thread: the member's parent-death signal
// fires when the thread that forked it ends, not the process, and Go may
// end an idle thread at any time.
func (w *Watchdog) runMember(leftover []int64) (death, error) {
	r, wr, err := os.Pipe()
	if err != nil {
		return death{}, fmt.Errorf("watchdog: pipe: %w", err)
	}
	env := append(append([]string(nil), w.cfg.Env...), fmt.Sprintf("%s=%d", EnvFD, 3))
	if len(leftover) > 0 {
		env = append(env, leftoverEnv(leftover))
	}
	cmd := &exec.Cmd{
		Path:        w.cfg.Path,
		Args:        append([]string{w.cfg.Path}, w.cfg.Args...),
		Env:         env,
		Stdin:       nil,
		Stdout:      w.cfg.Stdout,
		Stderr:      w.cfg.Stderr,
		ExtraFiles:  []*os.File{wr},
		SysProcAttr: memberAttrs(),
	}
	type exit struct {
		state *os.ProcessState
		err   error
	}
	started := make(chan error, 1)
	exited := make(chan exit, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		w.mu.Lock()
		if w.stopping {
			w.mu.Unlock()
			started <- errStopped
			return
		}
		err := cmd.Start()
		if err == nil {
			w.member = cmd.Process
		}
		w.mu.Unlock()
		started <- err
		if err != nil {
			return
		}
		st, err := cmd.Process.Wait()
		exited <- exit{st, err}
	}()
	err = <-started
	_ = wr.Close() // the member holds the write end now
	if err != nil {
		_ = r.Close()
		if errors.Is(err, errStopped) {
			return death{}, err
		}
		return death{}, fmt.Errorf("watchdog: start member: %w", err)
	}
	pid := cmd.Process.Pid
	w.log.Debug("watchdog: member started", "pid", pid)
	reported := make(chan report, 1)
	dm := &deadman{w: w, p: cmd.Process, done: make(chan struct{})}
	go func() {
		defer r.Close()
		reported <- readReport(r, func(id int64) {
			w.log.Debug("watchdog: member has a session", "pid", pid, "lease", fmt.Sprintf("%x", id))
		}, dm.deadline.Store)
	}()
	go dm.run()
	x := <-exited
	close(dm.done)
	w.mu.Lock()
	w.member = nil
	w.mu.Unlock()
	if x.err != nil {
		// Wait failed: the member's state is unknown, so it is not dead
		// for certain. Nothing may be revoked; leave it to the TTL.
		return death{}, fmt.Errorf("watchdog: wait for member %d: %w", pid, x.err)
	}
	d := death{pid: pid, status: x.state}
	// Everything it started goes before the pipe is read to its end: a
	// child that inherited the pipe would hold it open. After a clean exit
	// there is nothing left to kill.
	if !w.clearUp(pid) {
		// Something it started does not die: no proof. The pipe is not
		// read (it may never close), so nothing is revoked: the TTL decides.
		return d, nil
	}
	d.rep = <-reported
	return d, nil
}

var errStopped = errors.New("watchdog: stopping")

// deadman kills a member that is alive past the deadline by which it said
// its work will have stopped (Link.Deadline), plus 3/4 of the margin, which is
// still before its lease can expire on the server: a member that is
// stopped (SIGSTOP) or hung cannot stop its lives' work itself, and a
// command's child keeps running while its member is stopped. Killed, the
// member is dead: its processes are killed and its lease revoked as for any
// death.
type deadman struct {
	w        *Watchdog
	p        *os.Process
	deadline atomic.Int64 // CLOCK_MONOTONIC ns; 0: disarmed
	done     chan struct{}
}

func (d *deadman) run() {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	slack := int64(d.w.cfg.Margin * 3 / 4)
	for {
		select {
		case <-d.done:
			return
		case <-tick.C:
		}
		dl := d.deadline.Load()
		if dl == 0 || monoNow() <= dl+slack {
			continue
		}
		d.w.log.Error("watchdog: the member is alive past the safe deadline of its lives' work without having stopped it (stopped by a signal, or hung): killing it, so that none of its work runs once its lease expires",
			"pid", d.p.Pid, "past", time.Duration(monoNow()-dl).Round(time.Millisecond))
		_ = d.p.Signal(syscall.SIGKILL)
		return
	}
}

// clearUp kills whatever is left of a dead member's process group and any
// orphan of it that came to the watchdog, reaps them, and reports whether
// none is left, waiting at most the lease TTL.
func (w *Watchdog) clearUp(pgid int) bool {
	deadline := time.Now().Add(w.cfg.LeaseTTL)
	for {
		killGroup(pgid)
		left := reapChildren()
		if left {
			killChildren()
		}
		if !left && !groupExists(pgid) {
			return true
		}
		if time.Now().After(deadline) {
			w.log.Error("watchdog: processes of the dead member do not exit; not revoking its lease (it expires after its TTL)", "pgid", pgid)
			return false
		}
		time.Sleep(5 * time.Millisecond) // the kernel takes a moment to tear a killed process down
	}
}

// afterDeath revokes the dead member's leases, newest first, unless the
// watchdog has no etcd to reach. It retries until each is gone or has
// expired on its own (LeaseTTL after the death). It returns the leases it
// could not revoke, for the next member to revoke when it reaches etcd (a
// restarted etcd keeps a lease for another TTL).
func (w *Watchdog) afterDeath(d death) (left []int64) {
	if len(d.rep.leases) == 0 {
		return nil
	}
	if w.cfg.Revoke == nil {
		w.log.Info("watchdog: the embedded etcd died with the member; the next member revokes its leases", "leases", len(d.rep.leases))
		return d.rep.leases
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.LeaseTTL)
	defer cancel()
	for i := len(d.rep.leases) - 1; i >= 0; i-- {
		id := d.rep.leases[i]
		retry := backoff.New(50*time.Millisecond, time.Second)
		for {
			err := w.cfg.Revoke(ctx, id)
			if err == nil {
				w.log.Info("watchdog: revoked the dead member's lease", "lease", fmt.Sprintf("%x", id), "after_death", time.Since(t0).Round(time.Microsecond))
				break
			}
			if ctx.Err() != nil || !retry.Wait(ctx) {
				w.log.Warn("watchdog: cannot revoke the dead member's lease; the next member will, or it expires after its TTL", "lease", fmt.Sprintf("%x", id), "err", err)
				left = append(left, id)
				break
			}
		}
	}
	return left
}

// forward passes signals to the running member until done ends. The first
// signal, or the end of ctx (a SIGTERM), stops the watchdog after this
// member.
func (w *Watchdog) forward(ctx, done context.Context) {
	ctxDone := ctx.Done()
	for {
		var sig os.Signal
		select {
		case <-done.Done():
			return
		case <-ctxDone:
			sig, ctxDone = syscall.SIGTERM, nil
		case s, ok := <-w.cfg.Signals:
			if !ok {
				w.cfg.Signals = nil
				continue
			}
			sig = s
		}
		w.mu.Lock()
		w.stopping = true
		w.stop()
		p := w.member
		w.mu.Unlock()
		if p != nil {
			w.log.Info("watchdog: passing a signal to the member", "signal", sig.String(), "pid", p.Pid)
			_ = p.Signal(sig)
		}
	}
}

func (w *Watchdog) isStopping() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stopping
}
