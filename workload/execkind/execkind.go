// Package execkind runs a command as a life: a kind a member declares in
// its config file ({command, env, stop_grace, restart}), never a command
// named by a request.
//
// # The process contract
//
// While a member holds a life of a command kind, it runs the kind's command
// as a child process:
//
//   - Process group and tree. The child runs in its own process group
//     (Setpgid); every signal below goes to the whole group. When the child
//     exits, every process it started is SIGKILLed, wherever it went. Where
//     the member may make cgroups (root, a cgroup2 mount), the child starts
//     in a cgroup v2 of its own, which holds every process it starts, and
//     cgroup.kill ends them all (cgroup.go). Everywhere, the member is a
//     child subreaper and also kills the child's group, its descendants,
//     and the orphans it adopted that carry the life's IMMORTALD_LIFE and
//     IMMORTALD_FENCING_TOKEN or were seen in the child's tree before
//     (contain.go). A life's processes live as long as its child, and the
//     hold ends only once they are gone.
//   - Environment. Not the member's (it may hold etcd credentials). The child
//     gets the kind's env, plus IMMORTALD_LIFE (the life's name),
//     IMMORTALD_INCARNATION, IMMORTALD_FENCING_TOKEN (the holder's election
//     revision: strictly greater for every new holder, so the child can
//     fence its own writes elsewhere), IMMORTALD_STATE_DIR (an absolute
//     path) and IMMORTALD_CHECKPOINT_SOCKET, plus PATH=DefaultPath unless
//     the kind's env sets PATH. The kind's env may not set IMMORTALD_*
//     names. The working directory is the state directory.
//   - State. IMMORTALD_STATE_DIR is a fresh directory (under the member's
//     state root, removed when the hold ends). Before the child starts, the
//     life's last checkpoint is written to $IMMORTALD_STATE_DIR/state (no
//     file when there is none). Every checkpoint interval the member reads
//     the file and, if its bytes changed since the last checkpoint (by
//     SHA-256), checkpoints them: a fenced write of that life alone. A
//     child should write the file atomically (write a temporary file in the
//     same directory, then rename it over state): a torn read is
//     checkpointed as it is. A missing file is the empty state. After the
//     child exits (on a graceful stop, or on its own) the file is
//     checkpointed once more, so a SIGTERM loses nothing the child wrote
//     before exiting.
//   - Synchronous checkpoints. For the whole Run, the member serves HTTP on
//     the unix socket $IMMORTALD_CHECKPOINT_SOCKET
//     ($IMMORTALD_STATE_DIR/checkpoint.sock, mode 0600): POST /checkpoint
//     checkpoints the state file as it is, PUT /state replaces it with the
//     body (atomically) and checkpoints that; both answer once etcd applied
//     the write, so the state is what the next holder restores unless a
//     newer one replaced it. Requests carry the fencing token in the header
//     Immortald-Fencing-Token; 409 is fenced (another token, or the hold
//     expired or ended: the child should stop), 413 too large, 503 not
//     confirmed (retrying is safe), 400 a bad request. Package childapi has
//     the names, a Go client and the details; `immortald checkpoint` is the
//     command line's client. Synchronous checkpoints and the periodic copy
//     take turns (one semaphore): writes reach etcd in the order the file
//     was read, so an older state never overwrites a newer one, and the copy
//     does not write again the bytes a synchronous checkpoint applied. The
//     copy skips its turn while a request is in flight, and requests end at
//     the hold's expiry, so neither holds up a kill. During the stop grace
//     they still work (the member still holds the life). The state root
//     must be short enough for the socket's path (107 bytes; see
//     CheckStateRoot); the life's name is cut to 16 bytes in the state
//     directory's name.
//   - Size. A state over workload.MaxStateBytes (512 KiB) is not
//     checkpointed: the last good checkpoint stays, the error is logged
//     once per distinct content and shown in the life's status, and the
//     child keeps running.
//   - Stopping. On a graceful stop (handoff, shutdown, life deleted) the
//     group gets SIGTERM, then SIGKILL after stop_grace. At the holder's
//     safe deadline (or a lost session) the group gets SIGKILL at once and
//     nothing more is checkpointed: one runner holds for children too.
//   - Member death. The child is started with a parent-death signal
//     (Pdeathsig = SIGKILL) from a goroutine locked to its OS thread for the
//     child's whole life, so the child is SIGKILLed when the member process
//     dies, however it dies (Linux only). Every other process of the life
//     then becomes a child of the watchdog (`immortald run`'s parent, a
//     subreaper too), which kills them all before it revokes the member's
//     lease. Without a watchdog, or when the watchdog itself is SIGKILLed,
//     they go to init: run the member in a container or a systemd unit
//     (KillMode=control-group) so that they die with it.
//   - Restarts. A child that exits on its own is restarted in place, keeping
//     its state file, under the kind's restart policy: "always", "on-failure"
//     (a non-zero exit or a signal), or "never"; with exponential backoff
//     (Options.BackoffMin doubling to BackoffMax, starting over after a run
//     of BackoffReset). A child that is not restarted leaves the life held,
//     in state "exited", until the hold ends. The status (running, backoff,
//     exited; last exit code, -1 for a signal; restarts) goes to
//     Handle.SetStatus.
//   - Logs. The child's stdout and stderr go to the member's log, one record
//     per line, with the life's name and incarnation and the stream
//     ("stdout", "stderr"); a line over MaxLogLine bytes is split.
//
// # Metrics
//
// The member counts the children's exits and restarts by kind. This
// package does not know the member's metrics: Options.Observer, an
// interface of two methods with plain string arguments, is told of each
// exit (by outcome: ExitSuccess, ExitFailure, ExitSignal) and each
// restart, with the kind's name. The daemon passes its
// *supervisor.Metrics, which has those methods, so neither package
// imports the other for it; a Go kind's workload.Handle, the contract of
// every kind, stays free of what only a child has. The supervisor's own
// metrics (Runs, state writes, checkpoint age) cover these Runs like any
// other.
package execkind

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/immortald/immortald/internal/backoff"
	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/execkind/childapi"
)

// Restart policies.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// Bounds and defaults of a kind's settings.
const (
	DefaultStopGrace = 10 * time.Second
	MaxStopGrace     = 5 * time.Minute
	DefaultRestart   = RestartOnFailure
)

// DefaultPath is the child's PATH when the kind's env sets none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// MaxLogLine is the longest piece of child output logged as one record.
const MaxLogLine = 4096

// Config is one command kind as declared in a member's config file.
type Config struct {
	// Command is the program and its arguments; Command[0] is an absolute
	// path or a name found on the member's PATH (see Validate).
	Command []string `json:"command"`
	// Env is added to the child's environment (see the package doc).
	Env map[string]string `json:"env,omitempty"`
	// StopGrace is the time from SIGTERM to SIGKILL on a graceful stop.
	// 0: DefaultStopGrace. At most MaxStopGrace.
	StopGrace time.Duration `json:"stop_grace,omitempty"`
	// Restart is RestartAlways, RestartOnFailure or RestartNever; "":
	// DefaultRestart.
	Restart string `json:"restart,omitempty"`
}

// Validate fills in defaults and checks c, resolving Command[0] against the
// member's PATH when it is not absolute. Errors name the field and the rule.
func (c *Config) Validate() error {
	if len(c.Command) == 0 || c.Command[0] == "" {
		return errors.New("command: must be a non-empty list, the program first")
	}
	prog := c.Command[0]
	if !filepath.IsAbs(prog) {
		if strings.ContainsRune(prog, '/') {
			return fmt.Errorf("command: program %q must be an absolute path or a name found on PATH", prog)
		}
		p, err := exec.LookPath(prog)
		if err != nil {
			return fmt.Errorf("command: program %q is not found on PATH: give an absolute path", prog)
		}
		if p, err = filepath.Abs(p); err != nil {
			return fmt.Errorf("command: program %q: %v", prog, err)
		}
		c.Command = append([]string{p}, c.Command[1:]...)
	}
	if fi, err := os.Stat(c.Command[0]); err != nil {
		return fmt.Errorf("command: program %s: %v", c.Command[0], err)
	} else if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("command: program %s is not an executable file", c.Command[0])
	}
	for k := range c.Env {
		switch {
		case k == "" || strings.ContainsAny(k, "=\x00"):
			return fmt.Errorf("env: %q is not a variable name", k)
		case strings.HasPrefix(k, "IMMORTALD_"):
			return fmt.Errorf("env: %s: IMMORTALD_* variables are set by the member", k)
		case strings.ContainsRune(c.Env[k], 0):
			return fmt.Errorf("env: %s: the value contains a NUL byte", k)
		}
	}
	switch {
	case c.StopGrace == 0:
		c.StopGrace = DefaultStopGrace
	case c.StopGrace < 0 || c.StopGrace > MaxStopGrace:
		return fmt.Errorf("stop_grace (%s): must be from 0s to %s (0: the default %s)", c.StopGrace, MaxStopGrace, DefaultStopGrace)
	}
	switch c.Restart {
	case "":
		c.Restart = DefaultRestart
	case RestartAlways, RestartOnFailure, RestartNever:
	default:
		return fmt.Errorf("restart %q: want %s, %s or %s", c.Restart, RestartAlways, RestartOnFailure, RestartNever)
	}
	return nil
}

// Options are the member's settings for every command kind.
type Options struct {
	// StateRoot is the directory under which each hold gets its state
	// directory; created (0700) when missing. Required.
	StateRoot string
	// CheckpointInterval between reads of the state file. Default 1s.
	CheckpointInterval time.Duration
	// BackoffMin and BackoffMax bound the delay before a restart; the delay
	// starts over after a run of at least BackoffReset. Defaults 1s, 1m, 10s.
	BackoffMin, BackoffMax, BackoffReset time.Duration
	// Logger is the member's, for what concerns no one life (the scan of
	// the lives' process trees). Default slog.Default().
	Logger *slog.Logger
	// Observer, if set, is told of every exit and restart of the kind's
	// children (see the package doc).
	Observer Observer
}

// Observer is told what the children of a command kind do, for the
// member's metrics. Its methods are called from the Runs' goroutines, at
// once: they must not block.
type Observer interface {
	// ChildExited: a child of kind exited, whatever ended it (on its own,
	// a graceful stop, a kill), with outcome ExitSuccess, ExitFailure or
	// ExitSignal. Every child started exits once.
	ChildExited(kind, outcome string)
	// ChildRestarted: a child of kind is started again, under the kind's
	// restart policy, after it exited on its own or failed to start.
	ChildRestarted(kind string)
}

// Outcomes of a child's exit, as told to Observer.ChildExited.
const (
	ExitSuccess = "success" // exit code 0
	ExitFailure = "failure" // another exit code, or its wait failed
	ExitSignal  = "signal"  // killed by a signal
)

// noObserver is the Observer of Options that set none.
type noObserver struct{}

func (noObserver) ChildExited(string, string) {}
func (noObserver) ChildRestarted(string)      {}

func (o *Options) defaults() {
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = time.Second
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = time.Second
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = max(time.Minute, o.BackoffMin)
	}
	if o.BackoffReset <= 0 {
		o.BackoffReset = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Observer == nil {
		o.Observer = noObserver{}
	}
}

// Kind returns the kind name running c. c must be validated (Validate).
func Kind(name string, c Config, o Options) workload.Kind {
	o.defaults()
	return workload.Kind{
		Name:      name,
		New:       func() workload.Runner { return &Runner{kind: name, cfg: c, opt: o} },
		StopGrace: c.StopGrace,
	}
}

// Runner runs one hold of a command life. Make it with Kind(...).New().
type Runner struct {
	kind string
	cfg  Config
	opt  Options
}

// exit is how a child ended.
type exit struct {
	code int // -1: a signal
	err  error
	ran  time.Duration
}

// Run runs the command under the contract in the package doc. It returns
// nil after a graceful stop whose final state was checkpointed (or had not
// changed), workload.ErrDeadline after a kill at the deadline, or the error
// that kept it from running (the state directory could not be made, the
// final checkpoint failed).
func (r *Runner) Run(ctx context.Context, h workload.Handle) error {
	log := h.Logger()
	root, err := filepath.Abs(r.opt.StateRoot)
	if err == nil {
		err = os.MkdirAll(root, 0o700)
	}
	if err != nil {
		return fmt.Errorf("state root: %w", err)
	}
	dir, err := os.MkdirTemp(root, dirPrefix(h.Name()))
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	defer os.RemoveAll(dir)
	// Every process of the hold dies with it (contain.go).
	tr := procs.begin(h.Name(), h.FencingToken(), r.opt.Logger)
	defer procs.end(tr, log)
	stateFile := filepath.Join(dir, "state")
	ck := &checkpointer{h: h, file: stateFile, log: log, sem: make(chan struct{}, 1)}
	if s := h.State(); s != nil {
		if err := os.WriteFile(stateFile, s, 0o600); err != nil {
			return fmt.Errorf("restore state: %w", err)
		}
		ck.last = sha256.Sum256(s)
	} else {
		ck.last = sha256.Sum256(nil)
	}
	ck.tried = ck.last
	srv, err := serveCheckpoints(ctx, h, ck, dir)
	if err != nil {
		h.SetStatus(workload.ChildStatus{State: workload.ChildExited, Error: err.Error()})
		return err
	}
	defer srv.close() // before the state directory goes

	// Checkpoints while the child runs end at the deadline too, so that a
	// write blocked on etcd never delays a kill.
	hctx, hcancel := untilExpired(ctx, h)
	defer hcancel()
	st := workload.ChildStatus{}
	startFailed := false
	bo := backoff.New(r.opt.BackoffMin, r.opt.BackoffMax)
	tick := time.NewTicker(r.opt.CheckpointInterval)
	defer tick.Stop()
	for {
		st.State = workload.ChildRunning
		c, err := r.start(h, dir, tr, log)
		if err != nil {
			st.Error = err.Error()
			startFailed = true
			log.Error("cannot start the child", "err", err)
		} else {
			if startFailed {
				st.Error, startFailed = "", false
			}
			h.SetStatus(st)
		}
		var ex exit
		if c != nil {
		wait:
			for {
				select {
				case ex = <-c.done:
					break wait
				case <-tick.C:
					ck.tick(hctx, &st)
				case <-h.Expired():
					procs.killTree(tr, true, log)
					<-c.done
					return workload.ErrDeadline
				case <-ctx.Done():
					return r.stop(ctx, h, c, tr, ck, &st)
				}
			}
			logExit(log, ex)
			st.ExitCode = ex.code
			// Ended on its own: keep what it wrote.
			ck.save(hctx, &st)
			if ex.ran >= r.opt.BackoffReset {
				bo.Reset()
			}
		} else {
			ex = exit{code: -1}
		}
		if !r.restart(ex) {
			st.State = workload.ChildExited
			h.SetStatus(st)
			return r.idle(ctx, h, ck, &st)
		}
		st.State = workload.ChildBackoff
		h.SetStatus(st)
		wctx, cancel := untilExpired(ctx, h)
		ok := bo.Wait(wctx)
		cancel()
		if !ok {
			return r.idle(ctx, h, ck, &st)
		}
		st.Restarts++
		r.opt.Observer.ChildRestarted(r.kind)
	}
}

// idle waits for the end of a hold whose child is not running; after a
// graceful stop it checkpoints the state file if it changed since (a
// checkpoint after the exit that failed).
func (r *Runner) idle(ctx context.Context, h workload.Handle, ck *checkpointer, st *workload.ChildStatus) error {
	select {
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), workload.ErrDeadline) {
			return workload.ErrDeadline
		}
		return finalSave(ctx, h, ck, st)
	case <-h.Expired():
		return workload.ErrDeadline
	}
}

// finalSave checkpoints the state file after a graceful stop: the member
// still holds the life until Run returns, unless the deadline comes first.
func finalSave(ctx context.Context, h workload.Handle, ck *checkpointer, st *workload.ChildStatus) error {
	fctx, cancel := untilExpired(context.WithoutCancel(ctx), h)
	defer cancel()
	return ck.save(fctx, st)
}

// restart applies the policy to a child that ended on its own.
func (r *Runner) restart(ex exit) bool {
	switch r.cfg.Restart {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return ex.code != 0 || ex.err != nil
	}
	return false
}

// stop ends a running child when ctx ended, per the cause.
func (r *Runner) stop(ctx context.Context, h workload.Handle, c *child, tr *tree, ck *checkpointer, st *workload.ChildStatus) error {
	if errors.Is(context.Cause(ctx), workload.ErrDeadline) {
		procs.killTree(tr, true, h.Logger())
		<-c.done
		return workload.ErrDeadline
	}
	// Seen now, the processes the child's exit orphans are known by sight.
	procs.refresh(tr)
	c.kill(syscall.SIGTERM)
	grace := time.NewTimer(r.cfg.StopGrace)
	defer grace.Stop()
	var ex exit
	select {
	case ex = <-c.done:
	case <-grace.C:
		h.Logger().Warn("the child did not exit within its stop grace: SIGKILL", "stop_grace", r.cfg.StopGrace)
		procs.killTree(tr, true, h.Logger())
		ex = <-c.done
	case <-h.Expired():
		procs.killTree(tr, true, h.Logger())
		<-c.done
		return workload.ErrDeadline
	}
	logExit(h.Logger(), ex)
	st.ExitCode = ex.code
	st.State = workload.ChildExited
	return finalSave(ctx, h, ck, st)
}

// untilExpired is parent, also cancelled when h expires.
func untilExpired(parent context.Context, h workload.Handle) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		select {
		case <-h.Expired():
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func logExit(log *slog.Logger, ex exit) {
	log.Info("child exited", "exit_code", ex.code, "ran", ex.ran.Round(time.Millisecond), "err", ex.err)
}

// dirPrefix is a state directory name prefix made of the first
// maxDirPrefix bytes of the life's name, with anything but letters, digits,
// '.', '-' and '_' replaced, so a name with unusual characters still makes
// a plain file name, and a long one a short path for the checkpoint socket.
func dirPrefix(name string) string {
	var b strings.Builder
	for _, r := range name {
		if b.Len() == maxDirPrefix {
			break
		}
		if r < 0x80 && (r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String() + "-"
}

// checkpointer checkpoints the state file when its bytes change.
type checkpointer struct {
	h    workload.Handle
	file string
	log  *slog.Logger
	// sem, of one slot, is held while the state file is read (or replaced)
	// and its bytes checkpointed, by the Run loop or by a synchronous
	// checkpoint (see checkpointServer): writes reach etcd in the order of
	// the reads, so an older state never overwrites a newer one. The
	// fields below are guarded by it.
	sem chan struct{}
	// last is the hash of the last checkpointed (or restored) state; tried
	// of the last state refused for good (too large), so it is not tried
	// and logged again every interval.
	last, tried [sha256.Size]byte
	// note is the state error (or "", none) a synchronous checkpoint left
	// for the Run loop to put in the status; nil: no news.
	note *string
}

// lock takes sem, or returns ctx's error.
func (k *checkpointer) lock(ctx context.Context) error {
	select {
	case k.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (k *checkpointer) unlock() { <-k.sem }

// tick is the periodic copy: save, skipped while a synchronous checkpoint
// holds sem (it reads the file itself; the next tick sees what came after).
func (k *checkpointer) tick(ctx context.Context, st *workload.ChildStatus) {
	select {
	case k.sem <- struct{}{}:
	default:
		return
	}
	defer k.unlock()
	_ = k.saveLocked(ctx, st)
}

// save checkpoints the state file if it changed. It returns the error of a
// checkpoint that failed (nil when nothing needed saving). A state too
// large is reported in st and through SetStatus; st.Error is cleared by the
// next good checkpoint.
func (k *checkpointer) save(ctx context.Context, st *workload.ChildStatus) error {
	if err := k.lock(ctx); err != nil {
		return err
	}
	defer k.unlock()
	return k.saveLocked(ctx, st)
}

func (k *checkpointer) saveLocked(ctx context.Context, st *workload.ChildStatus) error {
	if k.note != nil {
		st.Error, k.note = *k.note, nil
		k.h.SetStatus(*st)
	}
	b, err := k.read()
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	if sum == k.last || sum == k.tried {
		return nil
	}
	refusal, err := k.apply(ctx, b, sum)
	if err == nil || refusal != "" {
		st.Error = refusal
		k.h.SetStatus(*st)
	}
	return err
}

// read returns the state file's bytes: nil when there is no file.
func (k *checkpointer) read() ([]byte, error) {
	b, err := os.ReadFile(k.file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		k.log.Warn("cannot read the state file", "file", k.file, "err", err)
	}
	return b, err
}

// apply checkpoints b, of hash sum, and records the outcome in last and
// tried. It returns Checkpoint's error and, for a state refused for good
// (too large, logged), the error to show in the status.
func (k *checkpointer) apply(ctx context.Context, b []byte, sum [sha256.Size]byte) (refusal string, err error) {
	err = k.h.Checkpoint(ctx, b)
	switch {
	case err == nil:
		k.last, k.tried = sum, sum
	case errors.Is(err, workload.ErrStateTooLarge):
		k.tried = sum
		refusal = fmt.Sprintf("state of %d bytes not checkpointed: over the limit of %d bytes; the last good checkpoint is kept", len(b), workload.MaxStateBytes)
		k.log.Error("state not checkpointed", "bytes", len(b), "limit", workload.MaxStateBytes)
	default:
		k.log.Warn("checkpoint failed", "err", err)
	}
	return refusal, err
}

// child is one started process.
type child struct {
	pid  int
	done chan exit
}

// kill signals the child's process group.
func (c *child) kill(sig syscall.Signal) { _ = syscall.Kill(-c.pid, sig) }

// start starts the command in its own process group with the parent-death
// signal. The goroutine that starts it stays locked to its OS thread until
// the child is reaped: Linux sends the parent-death signal when the thread
// that forked the child exits, and the Go runtime ends the threads of
// goroutines that exit locked, so an unlocked start could kill the child
// at a random time.
func (r *Runner) start(h workload.Handle, dir string, tr *tree, log *slog.Logger) (*child, error) {
	env := []string{
		"IMMORTALD_LIFE=" + h.Name(),
		"IMMORTALD_INCARNATION=" + strconv.FormatInt(h.Incarnation(), 10),
		childapi.EnvFencingToken + "=" + strconv.FormatInt(h.FencingToken(), 10),
		"IMMORTALD_STATE_DIR=" + dir,
		childapi.EnvCheckpointSocket + "=" + socketPath(dir),
	}
	if _, ok := r.cfg.Env["PATH"]; !ok {
		env = append(env, "PATH="+DefaultPath)
	}
	for k, v := range r.cfg.Env {
		env = append(env, k+"="+v)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd := &exec.Cmd{
		Path:   r.cfg.Command[0],
		Args:   r.cfg.Command,
		Env:    env,
		Dir:    dir,
		Stdout: outW,
		Stderr: errW,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGKILL,
		},
	}
	started := make(chan error, 1)
	c := &child{done: make(chan exit, 1)}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t0 := time.Now()
		err := procs.start(tr, func(cgroupFD int) (int, error) {
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = cgroupFD >= 0, cgroupFD
			if err := cmd.Start(); err != nil {
				return 0, err
			}
			return cmd.Process.Pid, nil
		})
		outW.Close()
		errW.Close()
		if err != nil {
			outR.Close()
			errR.Close()
			started <- err
			return
		}
		c.pid = cmd.Process.Pid
		started <- nil
		copied := make(chan struct{}, 2)
		go pump(outR, log, "stdout", copied)
		go pump(errR, log, "stderr", copied)
		// Learn of the exit without reaping, so the group id cannot be
		// reused yet, and kill what is left of the group and the tree.
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, c.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if err != unix.EINTR {
				break
			}
		}
		c.kill(syscall.SIGKILL)
		procs.killTree(tr, false, log)
		werr := cmd.Wait()
		procs.exited(tr, c.pid)
		ex := exit{ran: time.Since(t0)}
		if cmd.ProcessState != nil {
			ex.code = cmd.ProcessState.ExitCode()
		}
		var ee *exec.ExitError
		if werr != nil && !errors.As(werr, &ee) {
			ex.err = werr
		}
		r.opt.Observer.ChildExited(r.kind, outcome(cmd.ProcessState, ex.err))
		// Output still buffered in the pipes is logged; a grandchild that
		// escaped the group and holds them open is not waited for long.
		for range 2 {
			select {
			case <-copied:
			case <-time.After(time.Second):
			}
		}
		outR.Close()
		errR.Close()
		c.done <- ex
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", r.cfg.Command[0], err)
	}
	log.Info("child started", "pid", c.pid, "command", r.cfg.Command)
	return c, nil
}

// outcome is how a child that ended as ps, its wait failing with err (an
// error other than its exit status), exited: ExitSuccess, ExitFailure or
// ExitSignal.
func outcome(ps *os.ProcessState, err error) string {
	switch {
	case err != nil || ps == nil:
		return ExitFailure
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ExitSignal
	}
	switch {
	case ps.ExitCode() == 0:
		return ExitSuccess
	}
	return ExitFailure
}

// pump logs r line by line as stream, splitting lines over MaxLogLine.
func pump(r io.Reader, log *slog.Logger, stream string, done chan<- struct{}) {
	defer func() { done <- struct{}{} }()
	buf := make([]byte, 0, MaxLogLine)
	chunk := make([]byte, 32<<10)
	flush := func() {
		log.Info("child output", "stream", stream, "line", string(bytes.TrimRight(buf, "\r")))
		buf = buf[:0]
	}
	for {
		n, err := r.Read(chunk)
		for _, b := range chunk[:n] {
			if b == '\n' {
				flush()
				continue
			}
			buf = append(buf, b)
			if len(buf) == MaxLogLine {
				flush()
			}
		}
		if err != nil {
			if len(buf) > 0 {
				flush()
			}
			return
		}
	}
}
