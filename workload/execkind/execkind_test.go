package execkind_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/observe"
	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/execkind"
	"github.com/immortald/immortald/workload/workloadtest"
)

// fakeMemberEnv makes the test binary a fake member (see TestMain).
const fakeMemberEnv = "EXECKIND_TEST_FAKE_MEMBER"

func TestMain(m *testing.M) {
	if os.Getenv(fakeMemberEnv) != "" {
		fakeMember()
		return
	}
	if mode := os.Getenv(childClientEnv); mode != "" {
		os.Exit(childClient(mode))
	}
	os.Exit(m.Run())
}

// fakeMember runs one command life in this process and never returns: the
// test SIGKILLs it. The child writes its pid to $PIDFILE.
func fakeMember() {
	cfg := execkind.Config{Command: []string{"/bin/sh", "-c", `echo $$ > "$PIDFILE.tmp" && mv "$PIDFILE.tmp" "$PIDFILE"; exec sleep 1000`},
		Env: map[string]string{"PIDFILE": os.Getenv("PIDFILE")}}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	k := execkind.Kind("sleeper", cfg, execkind.Options{StateRoot: os.Getenv("STATEROOT")})
	_ = k.New().Run(context.Background(), workloadtest.New("sleeper", nil, nil))
	os.Exit(4)
}

// logBuf is a log destination safe for concurrent writers.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// life runs script under /bin/sh as a life with the given settings and
// returns its handle, its log and Run's result channel. ctx's cancel is
// the caller's.
type life struct {
	h    *workloadtest.Handle
	log  *logBuf
	done chan error
	root string
}

func run(t *testing.T, ctx context.Context, script string, restored []byte, mod func(*execkind.Config, *execkind.Options)) *life {
	t.Helper()
	cfg := execkind.Config{Command: []string{"/bin/sh", "-c", script}, StopGrace: 5 * time.Second}
	opt := execkind.Options{StateRoot: shortDir(t), CheckpointInterval: 20 * time.Millisecond, BackoffMin: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond}
	if mod != nil {
		mod(&cfg, &opt)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	l := &life{log: &logBuf{}, done: make(chan error, 1), root: opt.StateRoot}
	l.h = workloadtest.New("job", restored, slog.New(slog.NewTextHandler(l.log, nil)))
	r := execkind.Kind("test", cfg, opt).New()
	go func() { l.done <- r.Run(ctx, l.h) }()
	t.Cleanup(func() {
		select {
		case <-l.done:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return")
		}
	})
	return l
}

// shortDir is a temporary directory with a short path, removed at the end
// of the test: t.TempDir's is named for the test, and a state directory
// must leave room for the checkpoint socket's path (at most 107 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ek")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (l *life) wait(t *testing.T, what string, cond func([][]byte, []workload.ChildStatus) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if !l.h.WaitFor(ctx, cond) {
		t.Fatalf("timed out waiting for %s; checkpoints %q, statuses %+v, log:\n%s", what, l.h.Checkpoints(), l.h.Statuses(), l.log)
	}
}

func (l *life) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-l.done:
		l.done <- err
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("Run did not return; log:\n%s", l.log)
		return nil
	}
}

func lastIs(want string) func([][]byte, []workload.ChildStatus) bool {
	return func(c [][]byte, _ []workload.ChildStatus) bool { return len(c) > 0 && string(c[len(c)-1]) == want }
}

// alive reports whether pid is a process that is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !alive(pid) {
			return
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	t.Fatalf("process %d is still running", pid)
}

func readPid(t *testing.T, file string) int {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(file)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no pid in %s", file)
	return 0
}

// The restored state is in the file before the child starts; the
// environment is the contract's and not the member's; a changed file is
// checkpointed once; SIGTERM's final state is checkpointed before Run
// returns, and the state directory is removed.
func TestRestoreCheckpointOnChangeAndFinalState(t *testing.T) {
	t.Setenv("IMMORTALD_ETCD_PASSWORD", "secret")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	l := run(t, ctx, `cd "$IMMORTALD_STATE_DIR" || exit 9
echo "restored=$(cat state) life=$IMMORTALD_LIFE inc=$IMMORTALD_INCARNATION token=$IMMORTALD_FENCING_TOKEN pw=${IMMORTALD_ETCD_PASSWORD:-unset} path=$PATH"
echo oops >&2
trap 'printf final > state.tmp && mv state.tmp state; exit 0' TERM
printf "next-$(cat state)" > state.tmp && mv state.tmp state
while :; do sleep 0.05; done`, []byte("old"), nil)
	l.wait(t, "the first checkpoint", lastIs("next-old"))
	time.Sleep(300 * time.Millisecond) // many intervals with no change
	if c := l.h.Checkpoints(); len(c) != 1 {
		t.Fatalf("checkpoints of an unchanged file: %q, want one", c)
	}
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run after a graceful stop: %v", err)
	}
	if c := l.h.Checkpoints(); len(c) != 2 || string(c[1]) != "final" {
		t.Fatalf("checkpoints %q, want [next-old final]", c)
	}
	logs := l.log.String()
	want := fmt.Sprintf("restored=old life=job inc=1 token=7 pw=unset path=%s", execkind.DefaultPath)
	for _, s := range []string{want, "stream=stdout", "line=oops stream=stderr"} {
		if !strings.Contains(logs, s) && !strings.Contains(logs, strings.ReplaceAll(s, "line=oops stream=stderr", "stream=stderr line=oops")) {
			t.Errorf("log lacks %q:\n%s", s, logs)
		}
	}
	if ents, _ := os.ReadDir(l.root); len(ents) != 0 {
		t.Errorf("state root still holds %v after Run", ents)
	}
}

// At the deadline the group is killed at once, even a child that ignores
// SIGTERM, and nothing more is checkpointed.
func TestDeadlineKillsAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	pidfile := filepath.Join(t.TempDir(), "pid")
	l := run(t, ctx, `trap '' TERM; echo $$ > `+pidfile+`; printf x > "$IMMORTALD_STATE_DIR/state"; while :; do sleep 0.05; done`, nil,
		func(c *execkind.Config, _ *execkind.Options) { c.StopGrace = time.Minute })
	pid := readPid(t, pidfile)
	l.wait(t, "the checkpoint", lastIs("x"))
	cancel(workload.ErrDeadline)
	if err := l.result(t); !errors.Is(err, workload.ErrDeadline) {
		t.Fatalf("Run at the deadline: %v, want ErrDeadline", err)
	}
	waitGone(t, pid)
	if n := len(l.h.Checkpoints()); n != 1 {
		t.Errorf("%d checkpoints, want 1", n)
	}
}

// A graceful stop whose child ignores SIGTERM: the deadline (Expired)
// during the grace kills it at once.
func TestExpiredDuringGrace(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	pidfile := filepath.Join(t.TempDir(), "pid")
	l := run(t, ctx, `trap '' TERM; echo $$ > `+pidfile+`; while :; do sleep 0.05; done`, nil,
		func(c *execkind.Config, _ *execkind.Options) { c.StopGrace = time.Minute })
	pid := readPid(t, pidfile)
	cancel(workload.ErrStopped)
	time.Sleep(100 * time.Millisecond)
	if !alive(pid) {
		t.Fatal("the child ignoring SIGTERM died within 100ms of a stop with a minute of grace")
	}
	l.h.Expire()
	if err := l.result(t); !errors.Is(err, workload.ErrDeadline) {
		t.Fatalf("Run: %v, want ErrDeadline", err)
	}
	waitGone(t, pid)
}

// A checkpoint blocked on etcd does not delay the kill at the deadline.
func TestExpiredWhileCheckpointBlocks(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	pidfile := filepath.Join(t.TempDir(), "pid")
	l := run(t, ctx, `echo $$ > `+pidfile+`; cd "$IMMORTALD_STATE_DIR"; n=0; while :; do n=$((n+1)); echo $n > s.tmp && mv s.tmp state; sleep 0.02; done`, nil, nil)
	pid := readPid(t, pidfile)
	l.h.Block(true)
	time.Sleep(200 * time.Millisecond) // a checkpoint is blocked by now
	l.h.Expire()
	if err := l.result(t); !errors.Is(err, workload.ErrDeadline) {
		t.Fatalf("Run: %v, want ErrDeadline", err)
	}
	waitGone(t, pid)
}

// A state whose checkpoint failed when the child exited is checkpointed at
// the graceful stop of a hold whose child is not restarted.
func TestFinalSaveAfterExit(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	l := run(t, ctx, `cd "$IMMORTALD_STATE_DIR"; while [ ! -e go ]; do sleep 0.02; done; echo done > s.tmp && mv s.tmp state; exit 0`, nil, nil)
	l.h.FailWith(errors.New("etcd is away"))
	dirs, _ := filepath.Glob(filepath.Join(l.root, "job-*"))
	for ; len(dirs) == 0; dirs, _ = filepath.Glob(filepath.Join(l.root, "job-*")) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(dirs[0], "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "exited", func(_ [][]byte, s []workload.ChildStatus) bool {
		return len(s) > 0 && s[len(s)-1].State == workload.ChildExited
	})
	l.h.FailWith(nil)
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if c := l.h.Checkpoints(); len(c) != 1 || string(c[0]) != "done\n" {
		t.Fatalf("checkpoints %q, want the state written before the exit", c)
	}
}

// A child that ignores SIGTERM is SIGKILLed after its stop grace.
func TestStopGraceThenKill(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	pidfile := filepath.Join(t.TempDir(), "pid")
	l := run(t, ctx, `trap '' TERM; echo $$ > `+pidfile+`; while :; do sleep 0.05; done`, nil,
		func(c *execkind.Config, _ *execkind.Options) { c.StopGrace = 200 * time.Millisecond })
	pid := readPid(t, pidfile)
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	waitGone(t, pid)
	if !strings.Contains(l.log.String(), "did not exit within its stop grace") {
		t.Errorf("no warning of the SIGKILL in the log:\n%s", l.log)
	}
}

// A failing child is restarted with its state kept, and its status says
// so; the rest of its group dies with it.
func TestRestartOnFailureKeepsState(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	dir := t.TempDir()
	l := run(t, ctx, `cd "$IMMORTALD_STATE_DIR"; n=$(cat state 2>/dev/null || echo 0); echo $((n+1)) > s.tmp && mv s.tmp state
sleep 1000 & echo $! > `+dir+`/grandchild.$n; exit 3`, nil, nil)
	l.wait(t, "three runs", func(c [][]byte, s []workload.ChildStatus) bool {
		return len(c) > 0 && strings.TrimSpace(string(c[len(c)-1])) == "3"
	})
	l.wait(t, "a status after restarts", func(_ [][]byte, s []workload.ChildStatus) bool {
		for _, st := range s {
			if st.State == workload.ChildBackoff && st.ExitCode == 3 && st.Restarts >= 1 {
				return true
			}
		}
		return false
	})
	waitGone(t, readPid(t, dir+"/grandchild.0"))
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for i, c := range l.h.Checkpoints() {
		if got := strings.TrimSpace(string(c)); got != strconv.Itoa(i+1) {
			t.Fatalf("checkpoint %d is %q, want %d: the state was not kept across restarts", i, got, i+1)
		}
	}
}

// Under "never" and "on-failure", a clean exit is not restarted; the life
// stays held until its context ends.
func TestNoRestart(t *testing.T) {
	for _, tc := range []struct{ policy, code string }{{execkind.RestartNever, "5"}, {execkind.RestartOnFailure, "0"}} {
		t.Run(tc.policy, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			l := run(t, ctx, `cd "$IMMORTALD_STATE_DIR"; echo ran > s.tmp && mv s.tmp state; exit `+tc.code, nil,
				func(c *execkind.Config, _ *execkind.Options) { c.Restart = tc.policy })
			l.wait(t, "exited", func(_ [][]byte, s []workload.ChildStatus) bool {
				return len(s) > 0 && s[len(s)-1].State == workload.ChildExited
			})
			time.Sleep(200 * time.Millisecond)
			select {
			case err := <-l.done:
				t.Fatalf("Run returned before its context ended: %v", err)
			default:
			}
			st := l.h.Statuses()
			if last := st[len(st)-1]; last.Restarts != 0 || strconv.Itoa(last.ExitCode) != tc.code {
				t.Fatalf("status %+v, want exit code %s and no restarts", last, tc.code)
			}
			if c := l.h.Checkpoints(); len(c) != 1 || string(c[0]) != "ran\n" {
				t.Fatalf("checkpoints %q, want one run's", c)
			}
			cancel(workload.ErrStopped)
			if err := l.result(t); err != nil {
				t.Fatalf("Run: %v", err)
			}
		})
	}
}

// A state over the limit is not checkpointed, is shown in the status, and
// the child keeps running; a later state within it is checkpointed.
func TestStateTooLarge(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	l := run(t, ctx, `cd "$IMMORTALD_STATE_DIR"
head -c `+strconv.Itoa(workload.MaxStateBytes+1)+` /dev/zero > s.tmp && mv s.tmp state
while [ ! -e go ]; do sleep 0.05; done
printf small > s.tmp && mv s.tmp state
while :; do sleep 0.05; done`, nil, nil)
	l.wait(t, "the error in the status", func(_ [][]byte, s []workload.ChildStatus) bool {
		return len(s) > 0 && strings.Contains(s[len(s)-1].Error, "over the limit") && s[len(s)-1].State == workload.ChildRunning
	})
	if c := l.h.Checkpoints(); len(c) != 0 {
		t.Fatalf("%d checkpoints of a state over the limit", len(c))
	}
	dirs, _ := filepath.Glob(filepath.Join(l.root, "job-*"))
	if len(dirs) != 1 {
		t.Fatalf("state dirs %v", dirs)
	}
	if err := os.WriteFile(filepath.Join(dirs[0], "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "the small state", lastIs("small"))
	l.wait(t, "the error cleared", func(_ [][]byte, s []workload.ChildStatus) bool {
		return len(s) > 0 && s[len(s)-1].Error == ""
	})
	if n := strings.Count(l.log.String(), "state not checkpointed"); n != 1 {
		t.Errorf("the refused state was logged %d times, want once", n)
	}
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A line longer than MaxLogLine is logged in pieces, none longer.
func TestLongLineSplit(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	l := run(t, ctx, `head -c 10000 /dev/zero | tr '\0' a; echo; echo end; exec sleep 1000`, nil, nil)
	for end := time.Now().Add(20 * time.Second); !strings.Contains(l.log.String(), "line=end"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no end line in the log:\n%s", l.log)
		}
	}
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	var total int
	for _, line := range strings.Split(l.log.String(), "\n") {
		if i := strings.Index(line, "line=a"); i >= 0 {
			n := len(line[i+len("line="):])
			if n > execkind.MaxLogLine {
				t.Errorf("a record of %d bytes", n)
			}
			total += n
		}
	}
	if total != 10000 {
		t.Errorf("%d bytes of the long line logged, want 10000", total)
	}
}

// When the member process dies by SIGKILL, its child dies too.
func TestMemberDeathKillsChild(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "child.pid")
	member := exec.Command(os.Args[0], "-test.run=^$")
	member.Env = append(os.Environ(), fakeMemberEnv+"=1", "PIDFILE="+pidfile, "STATEROOT="+filepath.Join(dir, "state"))
	var stderr logBuf
	member.Stderr = &stderr
	if err := member.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = member.Process.Kill(); _ = member.Wait() })
	pid := readPid(t, pidfile)
	if !alive(pid) {
		t.Fatalf("child %d is not running; member stderr: %s", pid, stderr.String())
	}
	time.Sleep(200 * time.Millisecond) // let the member's other threads run and park
	if err := member.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = member.Wait()
	waitGone(t, pid)
	// The dead member's cgroups (where it could make them) are emptied by
	// the child's death; the next member would remove them, this test does.
	if os.Geteuid() == 0 {
		mount, own := cgroupV2(t)
		base := filepath.Join(mount, own, fmt.Sprintf("immortald-%d", member.Process.Pid))
		subs, _ := filepath.Glob(filepath.Join(base, "*-*"))
		for _, sub := range subs {
			if fi, err := os.Stat(sub); err == nil && fi.IsDir() {
				_ = os.Remove(sub)
			}
		}
		_ = os.Remove(base)
	}
}

// Every process the child starts dies with it, wherever it went: a
// grandchild in a session of its own (setsid), a daemon that forked twice
// (its parent exited, so the member adopted it), and a grandchild that
// cleared its environment and left the session, at a graceful stop, at the
// deadline, and when the child exits on its own.
func TestEscapedDescendantsDieWithTheChild(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid (util-linux) is not installed")
	}
	t.Run("cgroups where allowed", escapedDescendantsDie)
	// What containers without cgroup access have: the subreaper alone.
	execkind.UseCgroups(false)
	defer execkind.UseCgroups(true)
	t.Run("subreaper alone", escapedDescendantsDie)
}

func escapedDescendantsDie(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(cancel context.CancelCauseFunc)
		tail string // the script after it started its descendants
	}{
		{"graceful stop", func(cancel context.CancelCauseFunc) { cancel(workload.ErrStopped) }, `while :; do sleep 0.05; done`},
		{"deadline", func(cancel context.CancelCauseFunc) { cancel(workload.ErrDeadline) }, `trap '' TERM; while :; do sleep 0.05; done`},
		// Long enough for a scan (every second) to see the descendants.
		{"exit on its own", nil, `sleep 2.5; exit 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			dir := t.TempDir()
			f := func(name string) string { return filepath.Join(dir, name) }
			script := `setsid sh -c 'echo $$ > ` + f("g") + `.tmp; mv ` + f("g") + `.tmp ` + f("g") + `; exec sleep 1000' &
( sleep 1000 & echo $! > ` + f("d") + `.tmp; mv ` + f("d") + `.tmp ` + f("d") + ` ) &
env -i /usr/bin/setsid /bin/sh -c 'echo $$ > ` + f("w") + `.tmp; mv ` + f("w") + `.tmp ` + f("w") + `; exec /usr/bin/sleep 1000' &
echo $$ > ` + f("c") + `
` + tc.tail
			l := run(t, ctx, script, nil, func(c *execkind.Config, _ *execkind.Options) {
				c.Restart = execkind.RestartNever
				c.StopGrace = time.Minute
			})
			var pids []int
			for _, n := range []string{"c", "g", "d", "w"} {
				pids = append(pids, readPid(t, f(n)))
			}
			for i, pid := range pids {
				if !alive(pid) {
					t.Fatalf("process %d (%s) is not running before the end", pid, []string{"child", "setsid grandchild", "double-forked daemon", "grandchild without environment"}[i])
				}
			}
			if tc.end != nil {
				tc.end(cancel)
				_ = l.result(t)
			} else {
				l.wait(t, "the child to exit", func(_ [][]byte, st []workload.ChildStatus) bool {
					return len(st) > 0 && st[len(st)-1].State == workload.ChildExited
				})
			}
			for _, pid := range pids {
				waitGone(t, pid)
			}
		})
	}
}

// A child of the program's own code (not a life's) that carries a fencing
// token in its environment, of a hold this member never ran (an embedding
// program that hands its helpers a token), is neither killed nor reaped
// by the scan: os/exec waits for it and it exits on its own.
func TestOwnChildWithATokenIsLeftAlone(t *testing.T) {
	cmd := exec.Command("sleep", "2.5")
	cmd.Env = append(os.Environ(), "IMMORTALD_FENCING_TOKEN=77")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	l := run(t, ctx, `while :; do sleep 0.05; done`, nil, nil)
	time.Sleep(1500 * time.Millisecond)
	cancel(workload.ErrStopped)
	_ = l.result(t)
	err := cmd.Wait()
	if err != nil {
		t.Errorf("the program's own child was killed or reaped by the member: %v\n%s", err, l.log)
	}
}

// cgroupV2 returns the mount point of the cgroup v2 hierarchy and this
// process's cgroup in it, or skips the test where a member could not make
// cgroups of its own (not root, no cgroup2 mount).
func cgroupV2(t *testing.T) (mount, own string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: the children run without cgroups of their own")
	}
	mount, own, err := execkind.CgroupV2()
	if err != nil {
		t.Skip(err)
	}
	return mount, own
}

// Where the member can make cgroups (root, a cgroup2 mount), each child
// runs in one of its own, and a process that cleared its environment and
// left the tree before any scan could see it (a daemon forked twice with
// env -i) still dies with the child; the cgroup is removed after.
func TestChildCgroupHoldsEveryProcess(t *testing.T) {
	mount, own := cgroupV2(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	dir := t.TempDir()
	hidden := filepath.Join(dir, "h")
	l := run(t, ctx, `(env -i /usr/bin/setsid /bin/sh -c 'echo $$ > `+hidden+`.tmp; mv `+hidden+`.tmp `+hidden+`; exec /usr/bin/sleep 1000' &)
echo $$ > `+filepath.Join(dir, "c")+`; while :; do sleep 0.05; done`, nil, nil)
	child, pid := readPid(t, filepath.Join(dir, "c")), readPid(t, hidden)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var cg string
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			cg = p
		}
	}
	if !strings.HasPrefix(cg, filepath.Join(own, fmt.Sprintf("immortald-%d", os.Getpid()))+"/") {
		t.Fatalf("the hidden grandchild is in cgroup %q, want one under immortald-%d", cg, os.Getpid())
	}
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run after a graceful stop: %v", err)
	}
	waitGone(t, child)
	waitGone(t, pid)
	if _, err := os.Stat(filepath.Join(mount, cg)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the child's cgroup %s is left after the hold: %v", cg, err)
	}
}

// Many lives killed at once (a member's safe deadline, a lost session)
// stop in parallel: none waits on another's reads of /proc, so every
// process of all of them is gone well within the margin a watchdog gives
// its member past its deadline (3/4 of TTL/5: 300 ms at TTL 2 s).
func TestManyLivesStopAtOnce(t *testing.T) {
	const n = 100
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	lives := make([]*life, n)
	for i := range lives {
		lives[i] = run(t, ctx, `sleep 1000 & sleep 1000 & while :; do sleep 0.1; done`, nil, nil)
	}
	for i, l := range lives {
		l.wait(t, fmt.Sprintf("life %d's child", i), func(_ [][]byte, st []workload.ChildStatus) bool {
			return len(st) > 0 && st[0].State == workload.ChildRunning
		})
	}
	time.Sleep(1500 * time.Millisecond) // the scan (every second) has seen them all
	t0 := time.Now()
	cancel(workload.ErrDeadline)
	for _, l := range lives {
		if err := l.result(t); !errors.Is(err, workload.ErrDeadline) {
			t.Fatalf("Run at the deadline: %v, want ErrDeadline", err)
		}
	}
	took := time.Since(t0)
	t.Logf("%d lives of 3 processes each killed at once: every Run returned %s after the deadline", n, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("%d lives took %s to stop at once, want well under a second (bound 5 s on a loaded machine)", n, took)
	}
}

// zombieKids lists this process's zombie children named comm.
func zombieKids(t *testing.T, comm string) []int {
	t.Helper()
	var out []int
	for _, pid := range observe.Children(os.Getpid()) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i > 0 && i+2 < len(b) && b[i+2] == 'Z' && bytes.Contains(b[:i], []byte("("+comm)) {
			out = append(out, pid)
		}
	}
	return out
}

// Orphans of a life that die before any look saw them alive (a daemon that
// forks and exits at once) are reaped by a member that starts no processes
// of its own (ReapOrphans, the immortald binary's): they do not stay
// zombies for the member's lifetime.
func TestOrphansThatDiedUnseenAreReaped(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid (util-linux) is not installed")
	}
	execkind.ReapAll(true)
	defer execkind.ReapAll(false)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	dir := t.TempDir()
	// Each sleep is orphaned at once (its subshell exits) and dies 0.1 s
	// later, most likely before the scan (every second) sees it.
	run(t, ctx, `for i in 1 2 3 4 5 6 7 8; do (setsid sleep 0.1 &); done; touch `+filepath.Join(dir, "forked")+`; while :; do sleep 0.05; done`, nil, nil)
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "forked")); err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the child did not fork its daemons")
		}
	}
	time.Sleep(300 * time.Millisecond) // the sleeps are dead: zombies of this process
	for end := time.Now().Add(10 * time.Second); len(zombieKids(t, "sleep")) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("zombie orphans %v are not reaped while the hold runs", zombieKids(t, "sleep"))
		}
	}
	cancel(workload.ErrStopped)
}

func TestConfigValidate(t *testing.T) {
	good := execkind.Config{Command: []string{"sh", "-c", "true"}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(good.Command[0]) || good.StopGrace != execkind.DefaultStopGrace || good.Restart != execkind.DefaultRestart {
		t.Fatalf("defaults not filled in: %+v", good)
	}
	for _, tc := range []struct {
		cfg  execkind.Config
		want string
	}{
		{execkind.Config{}, "command: must be a non-empty list"},
		{execkind.Config{Command: []string{"no-such-program-here"}}, "not found on PATH"},
		{execkind.Config{Command: []string{"bin/sh"}}, "absolute path or a name found on PATH"},
		{execkind.Config{Command: []string{"/etc/passwd"}}, "not an executable file"},
		{execkind.Config{Command: []string{"/bin/sh"}, Env: map[string]string{"IMMORTALD_LIFE": "x"}}, "set by the member"},
		{execkind.Config{Command: []string{"/bin/sh"}, Env: map[string]string{"A=B": "x"}}, "not a variable name"},
		{execkind.Config{Command: []string{"/bin/sh"}, StopGrace: -time.Second}, "stop_grace"},
		{execkind.Config{Command: []string{"/bin/sh"}, StopGrace: time.Hour}, "stop_grace"},
		{execkind.Config{Command: []string{"/bin/sh"}, Restart: "sometimes"}, `restart "sometimes"`},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
}

// observer counts what an execkind.Observer is told.
type observer struct {
	mu       sync.Mutex
	exits    map[string]int // by kind and outcome
	restarts map[string]int // by kind
}

func newObserver() *observer { return &observer{exits: map[string]int{}, restarts: map[string]int{}} }

func (o *observer) ChildExited(kind, outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.exits[kind+" "+outcome]++
}

func (o *observer) ChildRestarted(kind string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.restarts[kind]++
}

func (o *observer) counts() (exits map[string]int, restarts map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.exits), maps.Clone(o.restarts)
}

// The Observer of Options is told of every exit of a child, by outcome,
// and of every restart, with the kind's name: a child that exits 0, then
// 3, then is SIGKILLed by itself, over and over, under "always".
func TestObserverCountsExitsAndRestarts(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	obs := newObserver()
	l := run(t, ctx, `cd "$IMMORTALD_STATE_DIR"; n=$(cat state 2>/dev/null || echo 0); echo $((n+1)) > s.tmp && mv s.tmp state
case $((n % 3)) in 0) exit 0;; 1) exit 3;; *) kill -KILL $$;; esac`, nil,
		func(c *execkind.Config, o *execkind.Options) { c.Restart, o.Observer = execkind.RestartAlways, obs })
	deadline := time.Now().Add(20 * time.Second)
	for {
		exits, _ := obs.counts()
		if exits["test "+execkind.ExitSuccess] >= 2 && exits["test "+execkind.ExitFailure] >= 2 && exits["test "+execkind.ExitSignal] >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exits %v, want two of each outcome; log:\n%s", exits, l.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	exits, restarts := obs.counts()
	n := 0
	for k, v := range exits {
		if !strings.HasPrefix(k, "test ") {
			t.Errorf("an exit of kind %q, want test", k)
		}
		n += v
	}
	// Every child started exits once, the first was no restart.
	if len(restarts) != 1 || restarts["test"] != n-1 {
		t.Fatalf("restarts %v for %d exits %v, want one fewer, of kind test", restarts, n, exits)
	}
	if st := l.h.Statuses(); st[len(st)-1].Restarts != restarts["test"] {
		t.Fatalf("status %+v, want %d restarts as the Observer counted", st[len(st)-1], restarts["test"])
	}
}
