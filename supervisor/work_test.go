package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/supervisor/engine"
	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/execkind"
)

// runnerFunc is a workload.Runner made of a function.
type runnerFunc func(ctx context.Context, h workload.Handle) error

func (f runnerFunc) Run(ctx context.Context, h workload.Handle) error { return f(ctx, h) }

// noteRun is what one Run of the test kind "note" saw.
type noteRun struct {
	kind     string
	member   string
	token    int64
	inc      int64
	restored string
	started  time.Time
	// Set when Run returns (then done is closed).
	cause    error
	returned time.Time
	final    error // the final Checkpoint's error
	done     chan struct{}
}

// noteKind is the Go kind "note" for tests: a Run reports itself on runs,
// checkpoints "<member> <token>" at once, and after a graceful stop
// checkpoints "final <member> <token>" and returns.
func noteKind(member string, runs chan<- *noteRun) workload.Kind {
	return noteKindNamed("note", member, runs)
}

// noteKindNamed is noteKind under another name; its Runs report it in kind.
func noteKindNamed(kind, member string, runs chan<- *noteRun) workload.Kind {
	return workload.Kind{Name: kind, StopGrace: time.Second, New: func() workload.Runner {
		return runnerFunc(func(ctx context.Context, h workload.Handle) error {
			r := &noteRun{kind: kind, member: member, token: h.FencingToken(), inc: h.Incarnation(), restored: string(h.State()), started: time.Now(), done: make(chan struct{})}
			defer close(r.done)
			runs <- r
			if err := h.Checkpoint(ctx, []byte(fmt.Sprintf("%s %d", member, r.token))); err != nil {
				h.Logger().Warn("first checkpoint failed", "err", err)
			}
			<-ctx.Done()
			r.cause = context.Cause(ctx)
			if errors.Is(r.cause, workload.ErrStopped) {
				r.final = h.Checkpoint(context.WithoutCancel(ctx), []byte(fmt.Sprintf("final %s %d", member, r.token)))
			}
			r.returned = time.Now()
			return r.final
		})
	}}
}

func withKinds(kinds ...workload.Kind) func(*Config) {
	return func(c *Config) {
		c.Kinds = map[string]workload.Kind{}
		for _, k := range kinds {
			c.Kinds[k.Name] = k
		}
	}
}

func nextRun(tb testing.TB, runs <-chan *noteRun, bound time.Duration) *noteRun {
	tb.Helper()
	select {
	case r := <-runs:
		return r
	case <-time.After(bound):
		tb.Fatalf("no Run started within %s", bound)
		return nil
	}
}

func stateOf(tb testing.TB, cli *clientv3.Client, name string) (registry.StateRecord, bool) {
	tb.Helper()
	rec, _, err := registry.GetState(context.Background(), cli, testKeys, name)
	if errors.Is(err, registry.ErrNoState) || errors.Is(err, registry.ErrNoLife) {
		return rec, false
	}
	if err != nil {
		tb.Fatalf("state of %s: %v", name, err)
	}
	return rec, true
}

func waitState(tb testing.TB, cli *clientv3.Client, name, want string) registry.StateRecord {
	tb.Helper()
	var rec registry.StateRecord
	waitFor(tb, 10*time.Second, fmt.Sprintf("state of %s = %q", name, want), func() bool {
		r, ok := stateOf(tb, cli, name)
		rec = r
		return ok && string(r.Data) == want
	})
	return rec
}

// nameWhere returns a life name whose preferred member is, for each of
// prefs, prefs[0] among prefs[1:].
func nameWhere(prefs ...[]string) string {
	for i := 0; ; i++ {
		name := fmt.Sprintf("job-%d", i)
		ok := true
		for _, p := range prefs {
			ok = ok && engine.Candidates(name, p[1:], 2)[0] == p[0]
		}
		if ok {
			return name
		}
	}
}

// A Go life restores its last checkpoint, gets a strictly greater fencing
// token on every new holder, and after a graceful stop (a shutdown, then a
// handoff to the preferred member) its final state reaches the next holder:
// the old Run returns before the new one starts. A crash loses only what
// was not checkpointed. Deleting the life stops its Run gracefully and
// deletes its state record.
func TestWorkStateAndTokenAcrossHolders(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	runs := make(chan *noteRun, 10)
	name := nameWhere([]string{"m1", "m1", "m2"}, []string{"m3", "m2", "m3"})
	m1 := startMemberWith(t, srv.Endpoint(), "m1", withKinds(noteKind("m1", runs)))
	put(t, obs, testKeys.Life(name), `{"kind":"note"}`)
	r1 := nextRun(t, runs, 10*time.Second)
	if r1.member != "m1" || r1.restored != "" || r1.inc != 1 {
		t.Fatalf("first Run = %+v, want on m1 with no state", r1)
	}
	waitState(t, obs, name, fmt.Sprintf("m1 %d", r1.token))

	// Shutdown of m1: m2 takes over with m1's final state.
	m2 := startMemberWith(t, srv.Endpoint(), "m2", withKinds(noteKind("m2", runs)))
	m1.stop()
	<-r1.done
	if !errors.Is(r1.cause, workload.ErrStopped) || r1.final != nil {
		t.Fatalf("m1's Run at shutdown: cause %v, final checkpoint %v; want ErrStopped and nil", r1.cause, r1.final)
	}
	r2 := nextRun(t, runs, 10*time.Second)
	if r2.member != "m2" || r2.restored != fmt.Sprintf("final m1 %d", r1.token) || r2.token <= r1.token || r2.inc != 2 {
		t.Fatalf("Run after the shutdown = %+v, want on m2, incarnation 2, restored m1's final state, token > %d", r2, r1.token)
	}
	if !r2.started.After(r1.returned) {
		t.Fatalf("m2's Run started at %s, before m1's returned at %s", r2.started, r1.returned)
	}
	waitState(t, obs, name, fmt.Sprintf("m2 %d", r2.token))

	// m3, the preferred member, joins: a handoff, the same way.
	m3 := startMemberWith(t, srv.Endpoint(), "m3", withKinds(noteKind("m3", runs)))
	r3 := nextRun(t, runs, 15*time.Second)
	<-r2.done
	if r3.member != "m3" || r3.restored != fmt.Sprintf("final m2 %d", r2.token) || r3.token <= r2.token {
		t.Fatalf("Run after the handoff = %+v, want on m3 with m2's final state and a token > %d", r3, r2.token)
	}
	if !errors.Is(r2.cause, workload.ErrStopped) || r2.final != nil || !r3.started.After(r2.returned) {
		t.Fatalf("m2's Run at the handoff: cause %v, final %v, returned %s; m3's started %s", r2.cause, r2.final, r2.returned, r3.started)
	}
	if rec := waitState(t, obs, name, fmt.Sprintf("m3 %d", r3.token)); rec.HolderRev != r3.token || rec.Holder != "m3" {
		t.Fatalf("state record %+v, want holder m3 at revision %d", rec, r3.token)
	}

	// m3 crashes: m2 takes over from m3's last checkpoint, with a greater token.
	m3.crash()
	r4 := nextRun(t, runs, 15*time.Second)
	if r4.member != "m2" || r4.token <= r3.token || !strings.HasSuffix(r4.restored, fmt.Sprintf("m3 %d", r3.token)) {
		t.Fatalf("Run after the crash = %+v, want on m2 with m3's last state and a token > %d", r4, r3.token)
	}
	<-r3.done

	// Deleted: a graceful stop, then the state record goes.
	del(t, obs, testKeys.Life(name))
	select {
	case <-r4.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the Run did not return after the life was deleted")
	}
	if !errors.Is(r4.cause, workload.ErrStopped) {
		t.Fatalf("cause after the delete = %v, want ErrStopped", r4.cause)
	}
	waitFor(t, 5*time.Second, "the state and child records deleted", func() bool {
		return countKeys(t, obs, testKeys.State(name)) == 0 && countKeys(t, obs, testKeys.Child(name)) == 0
	})
	if n := countKeys(t, obs, testKeys.Age(name)); n != 0 {
		t.Fatalf("%d age records left after the delete", n)
	}
	_ = m2
}

// A state over workload.MaxStateBytes is refused with ErrStateTooLarge and
// not written: the last good checkpoint stays.
func TestWorkStateOverTheBound(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	errs := make(chan error, 2)
	k := workload.Kind{Name: "big", New: func() workload.Runner {
		return runnerFunc(func(ctx context.Context, h workload.Handle) error {
			errs <- h.Checkpoint(ctx, []byte("small"))
			errs <- h.Checkpoint(ctx, make([]byte, workload.MaxStateBytes+1))
			<-ctx.Done()
			return nil
		})
	}}
	startMemberWith(t, srv.Endpoint(), "m1", withKinds(k))
	put(t, obs, testKeys.Life("big"), `{"kind":"big"}`)
	for i, want := range []error{nil, workload.ErrStateTooLarge} {
		select {
		case err := <-errs:
			if !errors.Is(err, want) {
				t.Fatalf("checkpoint %d = %v, want %v", i, err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no checkpoint")
		}
	}
	if rec, _ := stateOf(t, obs, "big"); string(rec.Data) != "small" {
		t.Fatalf("state = %.20q, want the last good checkpoint", rec.Data)
	}
	// Exactly at the bound is fine.
	if _, err := (registry.StateRecord{LifeID: 1, HolderRev: 1, Incarnation: 1, Data: make([]byte, workload.MaxStateBytes)}).Marshal(); err != nil {
		t.Fatal(err)
	}
}

// A member never campaigns for a life of a kind it does not run, even when
// placement would prefer it, and never gets it handed; status says when no
// live member runs the kind. A request that carries a command is invalid
// and never started.
func TestWorkKindsAndPlacement(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	name := nameWhere([]string{"m1", "m1", "m2"})
	m1 := startMember(t, srv.Endpoint(), "m1") // age only
	put(t, obs, testKeys.Life(name), `{"kind":"note"}`)
	put(t, obs, testKeys.Life("cmd"), `{"kind":"note","command":["/bin/sh","-c","id"]}`)
	put(t, obs, testKeys.Life("plain"), "")
	waitFor(t, 5*time.Second, "plain on m1", func() bool { return m1.holds("plain") })
	time.Sleep(4 * testInterval)
	if n := countKeys(t, obs, testKeys.Election(name)+"/"); n != 0 {
		t.Fatalf("%d election keys for a life of a kind no member runs", n)
	}
	if st := status(t, obs, name); st.State != registry.StateWaiting || !strings.Contains(st.Error, `no live member runs kind "note"`) || st.Kind != "note" {
		t.Fatalf("status = %+v, want waiting: no live member runs kind note", st)
	}
	if st := status(t, obs, "cmd"); st.State != registry.StateInvalid || !strings.Contains(st.Error, "cannot carry a command") {
		t.Fatalf("status of a request with a command = %+v, want invalid", st)
	}

	runs := make(chan *noteRun, 4)
	m2 := startMemberWith(t, srv.Endpoint(), "m2", withKinds(noteKind("m2", runs)))
	r := nextRun(t, runs, 10*time.Second)
	if r.member != "m2" {
		t.Fatalf("Run on %s, want m2", r.member)
	}
	// Settled: it stays on m2 (no handoff to m1, whom placement would prefer
	// for its name), and m1 has never had a candidacy for it.
	time.Sleep(2*engine.MinHold + engine.ViewSettle)
	if !m2.holds(name) || m1.holds(name) || countKeysWithValue(t, obs, testKeys.Election(name)+"/", "m1") != 0 {
		t.Fatalf("after settling: m2 holds %v, m1 holds %v, m1's candidacies %d", m2.holds(name), m1.holds(name),
			countKeysWithValue(t, obs, testKeys.Election(name)+"/", "m1"))
	}
	if m2.holds("cmd") || m1.holds("cmd") || countKeys(t, obs, testKeys.Election("cmd")+"/") != 0 {
		t.Fatal("a request with a command was campaigned for")
	}
	select {
	case r := <-runs:
		t.Fatalf("a second Run started: %+v", r)
	default:
	}
}

// shKind is a command kind of /bin/sh: the child writes "run <token> after
// [<restored>]" to its state file at once, its pid to pids/<token>, and on
// SIGTERM "final <token> after [<restored>]" before it exits.
func shKind(tb testing.TB, pids, stateRoot string) workload.Kind {
	tb.Helper()
	script := `D=$IMMORTALD_STATE_DIR
save() { printf '%s' "$1" > "$D/state.tmp" && mv "$D/state.tmp" "$D/state"; }
prev=$(cat "$D/state" 2>/dev/null)
trap 'save "final $IMMORTALD_FENCING_TOKEN after [$prev]"; exit 0' TERM
save "run $IMMORTALD_FENCING_TOKEN after [$prev]"
echo $$ > "$PIDS/$IMMORTALD_FENCING_TOKEN.tmp" && mv "$PIDS/$IMMORTALD_FENCING_TOKEN.tmp" "$PIDS/$IMMORTALD_FENCING_TOKEN"
while :; do sleep 0.05; done`
	c := execkind.Config{Command: []string{"/bin/sh", "-c", script}, Env: map[string]string{"PIDS": pids}, StopGrace: 3 * time.Second, Restart: execkind.RestartNever}
	if err := c.Validate(); err != nil {
		tb.Fatal(err)
	}
	return execkind.Kind("sh", c, execkind.Options{StateRoot: stateRoot, CheckpointInterval: testInterval})
}

// childPid waits for the pid file of the child run under token.
func childPid(tb testing.TB, pids string, token int64) int {
	tb.Helper()
	var pid int
	waitFor(tb, 15*time.Second, fmt.Sprintf("the child of token %d", token), func() bool {
		b, err := os.ReadFile(filepath.Join(pids, strconv.FormatInt(token, 10)))
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

// alive reports whether pid runs: a zombie does not (the child of a member
// this test process started, reparented to it: it is a subreaper once it
// has run a command life itself, see execkind).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// The holder of a command life as its state record names it.
func holderRev(tb testing.TB, cli *clientv3.Client, name string, not int64) int64 {
	tb.Helper()
	var rev int64
	waitFor(tb, 15*time.Second, "a new holder of "+name, func() bool {
		rec, ok := ageRecord(tb, cli, name)
		rev = rec.HolderRev
		return ok && rec.Running() && rev != not
	})
	return rev
}

// A command life: its state is checkpointed on change only; on a graceful
// stop (SIGTERM) the final state it writes reaches the next holder, whose
// child gets a greater token; at the safe deadline of a member cut off from
// etcd its child is SIGKILLed before a peer can start the life.
func TestWorkCommandLife(t *testing.T) {
	srv := etcdtest.MustStart(t)
	proxy := etcdtest.MustProxy(t, srv.Endpoint())
	obs := etcdtest.MustClient(t, srv.Endpoint())
	pids := t.TempDir()
	kind := shKind(t, pids, t.TempDir())
	name := nameWhere([]string{"m1", "m1", "m2"}, []string{"m2", "m2", "m3"})
	m1 := startMemberWith(t, srv.Endpoint(), "m1", withKinds(kind))
	put(t, obs, testKeys.Life(name), `{"kind":"sh"}`)
	tok1 := holderRev(t, obs, name, 0)
	pid1 := childPid(t, pids, tok1)
	want1 := fmt.Sprintf("run %d after []", tok1)
	waitState(t, obs, name, want1)

	// On change only: the state record stays as it is while the file does.
	resp, err := obs.Get(context.Background(), testKeys.State(name))
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Kvs[0].ModRevision
	time.Sleep(6 * testInterval)
	if resp, err = obs.Get(context.Background(), testKeys.State(name)); err != nil || resp.Kvs[0].ModRevision != rev {
		t.Fatalf("the state record was written again although the file did not change (%v)", err)
	}
	if st := status(t, obs, name); st.Child == nil || st.Child.State != workload.ChildRunning || st.Kind != "sh" {
		t.Fatalf("status = %+v, want kind sh with a running child", st)
	}

	// SIGTERM by a graceful stop: m2 (via the freezable proxy) gets the final state.
	startMemberWith(t, proxy.Addr(), "m2", withKinds(kind))
	m1.stop()
	if alive(pid1) {
		t.Fatalf("m1's child %d is alive after m1 stopped", pid1)
	}
	tok2 := holderRev(t, obs, name, tok1)
	if tok2 <= tok1 {
		t.Fatalf("token %d after %d", tok2, tok1)
	}
	pid2 := childPid(t, pids, tok2)
	want2 := fmt.Sprintf("run %d after [final %d after []]", tok2, tok1)
	waitState(t, obs, name, want2)

	// m2 is cut off: its child dies by its safe deadline, before m3 runs one.
	m3 := startMemberWith(t, srv.Endpoint(), "m3", withKinds(kind))
	proxy.Freeze()
	cut := time.Now()
	waitFor(t, testTTL+5*time.Second, "m2's child killed", func() bool {
		// Read the holder first: a new holder seen while the old child
		// still lives afterwards is two runners.
		rec, _ := ageRecord(t, obs, name)
		dead := !alive(pid2)
		if !dead && rec.HolderRev != tok2 && rec.Running() {
			t.Fatalf("a new holder (revision %d) started while m2's child %d was alive", rec.HolderRev, pid2)
		}
		return dead
	})
	killed := time.Since(cut)
	tok3 := holderRev(t, obs, name, tok2)
	childPid(t, pids, tok3)
	t.Logf("cut off: m2's child killed after %s, m3's child started after %s", killed.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond))
	// The killed child checkpointed nothing after the kill: m3 resumes
	// from m2's last checkpoint.
	waitState(t, obs, name, fmt.Sprintf("run %d after [%s]", tok3, want2))
	proxy.Thaw()
	_ = m3
}

// The child of a command life dies with its member when the member process
// is SIGKILLed (parent-death signal). The member is this test binary,
// run again as a member (see TestMain).
func TestWorkChildDiesWithItsMember(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	pids := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), memberEnv+"="+srv.Endpoint(), "TEST_PIDS="+pids, "TEST_STATE_ROOT="+t.TempDir())
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	reap := func() { once.Do(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) }
	t.Cleanup(reap)
	put(t, obs, testKeys.Life("job"), `{"kind":"sh"}`)
	tok := holderRev(t, obs, "job", 0)
	pid := childPid(t, pids, tok)
	if !alive(pid) {
		t.Fatal("the child is not running")
	}
	reap() // SIGKILL
	waitFor(t, 5*time.Second, "the child to die with its member", func() bool { return !alive(pid) })
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil) // reparented to this process: reap it
}

// memberEnv makes this test binary a member (runMember), for
// TestWorkChildDiesWithItsMember.
const memberEnv = "SUPERVISOR_TEST_MEMBER"

// runMember runs a supervisor with the sh kind against the etcd at
// $SUPERVISOR_TEST_MEMBER until the process is killed.
func runMember() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Getenv(memberEnv)}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c := execkind.Config{Command: []string{"/bin/sh", "-c", `echo $$ > "$PIDS/$IMMORTALD_FENCING_TOKEN.tmp" && mv "$PIDS/$IMMORTALD_FENCING_TOKEN.tmp" "$PIDS/$IMMORTALD_FENCING_TOKEN"; while :; do sleep 0.05; done`},
		Env: map[string]string{"PIDS": os.Getenv("TEST_PIDS")}}
	if err := c.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sup, err := New(Config{ID: "child", Client: cli, Keys: testKeys, Lease: lease.Config{TTL: testTTL}, CheckpointInterval: testInterval,
		Kinds: map[string]workload.Kind{"sh": execkind.Kind("sh", c, execkind.Options{StateRoot: os.Getenv("TEST_STATE_ROOT")})}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = sup.Run(context.Background())
	os.Exit(0)
}

// A request whose kind changes in place stops the Run of the old kind
// gracefully and starts one of the new kind, the life keeping its age.
func TestWorkKindChangedInPlace(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	runs := make(chan *noteRun, 4)
	startMemberWith(t, srv.Endpoint(), "m1", withKinds(noteKindNamed("note", "m1", runs), noteKindNamed("other", "m1", runs)))
	put(t, obs, testKeys.Life("job"), `{"kind":"note"}`)
	r1 := nextRun(t, runs, 10*time.Second)
	waitState(t, obs, "job", fmt.Sprintf("m1 %d", r1.token))
	time.Sleep(500 * time.Millisecond)
	put(t, obs, testKeys.Life("job"), `{"kind":"other"}`)
	r2 := nextRun(t, runs, 10*time.Second)
	<-r1.done
	if r1.kind != "note" || !errors.Is(r1.cause, workload.ErrStopped) || r2.kind != "other" || !r2.started.After(r1.returned) {
		t.Fatalf("runs %+v then %+v: want note stopped gracefully, then other", r1, r2)
	}
	if r2.inc != 2 || r2.token <= r1.token {
		t.Fatalf("the new Run has incarnation %d and token %d (old %d)", r2.inc, r2.token, r1.token)
	}
	if rec, _ := ageRecord(t, obs, "job"); rec.AgeMS < 400 {
		t.Fatalf("age %d ms after the change, want the age kept (at least 400 ms)", rec.AgeMS)
	}
}

// A state record that does not parse is not restored: the life starts with
// no state, and the bytes are kept at quarantine-states/<name> by the
// holder's first state write. A record of an earlier life of the same name
// is not restored either.
func TestWorkCorruptOrForeignStateIsNotRestored(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	runs := make(chan *noteRun, 4)
	put(t, obs, testKeys.State("bad"), "garbage")
	old, _ := registry.StateRecord{LifeID: 1, Holder: "gone", HolderRev: 1, Incarnation: 1, Data: []byte("old life")}.Marshal()
	put(t, obs, testKeys.State("reborn"), string(old))
	startMemberWith(t, srv.Endpoint(), "m1", withKinds(noteKind("m1", runs)))
	put(t, obs, testKeys.Life("bad"), `{"kind":"note"}`)
	put(t, obs, testKeys.Life("reborn"), `{"kind":"note"}`)
	for range 2 {
		if r := nextRun(t, runs, 10*time.Second); r.restored != "" {
			t.Fatalf("Run restored %q, want no state", r.restored)
		}
	}
	waitFor(t, 10*time.Second, "the corrupt record quarantined", func() bool {
		return getValue(t, obs, testKeys.StateQuarantine("bad")) == "garbage"
	})
	if countKeys(t, obs, testKeys.StateQuarantine("reborn")) != 0 {
		t.Fatal("a record of an earlier life was quarantined; it parses")
	}
}

// The state record of a life that ended while nobody ran it goes with its
// age record when the dead holder's heartbeat is collected.
func TestWorkStateOfLifeEndedWhileNobodyRanItIsCollected(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	runs := make(chan *noteRun, 2)
	m1 := startMemberWith(t, srv.Endpoint(), "m1", withKinds(noteKind("m1", runs)))
	m2 := startMember(t, srv.Endpoint(), "m2") // lacks the kind: never runs it
	put(t, obs, testKeys.Life("job"), `{"kind":"note"}`)
	r := nextRun(t, runs, 10*time.Second)
	waitState(t, obs, "job", fmt.Sprintf("m1 %d", r.token))
	// The sweep finds the dead holder's records through its heartbeat.
	waitFor(t, 5*time.Second, "a heartbeat of m1", func() bool { _, ok := ownBeat(t, m1, obs); return ok })
	m1.crash()
	del(t, obs, testKeys.Life("job"))
	deadline := time.Now().Add(testTTL + 10*time.Second)
	for countKeys(t, obs, testKeys.State("job")) != 0 || countKeys(t, obs, testKeys.Age("job")) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not collected: state %q, age %q", getValue(t, obs, testKeys.State("job")), getValue(t, obs, testKeys.Age("job")))
		}
		m2.sup.collectBeats(context.Background())
		time.Sleep(100 * time.Millisecond)
	}
}

// A command life whose child keeps failing is restarted in place with
// backoff, and its status (state, last exit code, restarts) reaches `ls`
// through status-only writes of its state record.
func TestWorkRestartStatusIsShown(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	c := execkind.Config{Command: []string{"/bin/sh", "-c", "sleep 0.1; exit 3"}, Restart: execkind.RestartOnFailure}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	kind := execkind.Kind("flaky", c, execkind.Options{StateRoot: t.TempDir(), CheckpointInterval: testInterval,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 400 * time.Millisecond})
	startMemberWith(t, srv.Endpoint(), "m1", withKinds(kind))
	put(t, obs, testKeys.Life("flaky"), `{"kind":"flaky"}`)
	var st registry.Status
	waitFor(t, 15*time.Second, "two restarts shown", func() bool {
		st = status(t, obs, "flaky")
		return st.Child != nil && st.Child.Restarts >= 2 && st.Child.ExitCode == 3
	})
	if st.State != registry.StateRunning || st.Kind != "flaky" {
		t.Fatalf("status %+v, want the life running, of kind flaky", st)
	}
}

// A Run that panics is a Run that returned with an error: the member goes
// on, the life stays held, and its delete is cleaned up.
func TestWorkPanicIsAnError(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	k := workload.Kind{Name: "boom", New: func() workload.Runner {
		return runnerFunc(func(context.Context, workload.Handle) error { panic("boom") })
	}}
	m1 := startMemberWith(t, srv.Endpoint(), "m1", withKinds(k))
	put(t, obs, testKeys.Life("boom"), `{"kind":"boom"}`)
	waitFor(t, 10*time.Second, "boom held", func() bool { return m1.holds("boom") })
	time.Sleep(3 * testInterval)
	if !m1.holds("boom") || !m1.sup.Ready() {
		t.Fatal("the member lost the life or its readiness after a panicking Run")
	}
	del(t, obs, testKeys.Life("boom"))
	waitFor(t, 10*time.Second, "boom cleaned up", func() bool {
		return !m1.holds("boom") && countKeys(t, obs, testKeys.Age("boom")) == 0 && countKeys(t, obs, testKeys.Election("boom")+"/") == 0
	})
}

// A Run that ignores its stop (its context and Expired) is given up
// AbandonAfter after Expired closed: the member lets the life go (its last
// age written, its key resigned), a peer runs it with a greater token, the
// given-up Run's writes are fenced, and the metrics say so. The member does
// not run the life again until that Run returns.
func TestWorkRunIgnoringItsStopIsGivenUp(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	type started struct {
		member string
		token  int64
		h      workload.Handle
	}
	runs := make(chan started, 4)
	release := make(chan struct{})
	stubborn := func(member string) workload.Kind {
		return workload.Kind{Name: "stubborn", StopGrace: 100 * time.Millisecond, New: func() workload.Runner {
			return runnerFunc(func(ctx context.Context, h workload.Handle) error {
				runs <- started{member, h.FencingToken(), h}
				<-release // neither ctx nor Expired
				return nil
			})
		}}
	}
	short := func(c *Config) { c.AbandonAfter = 500 * time.Millisecond }
	name := nameWhere([]string{"m2", "m1", "m2"})
	m1 := startMemberWith(t, srv.Endpoint(), "m1", withKinds(stubborn("m1")), short)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	put(t, obs, testKeys.Life(name), `{"kind":"stubborn"}`)
	first := <-runs
	if first.member != "m1" {
		t.Fatalf("first Run on %s, want m1", first.member)
	}
	// m2 is preferred: m1 is to hand the life over, and its Run never stops.
	t0 := time.Now()
	startMemberWith(t, srv.Endpoint(), "m2", withKinds(stubborn("m2")), short)
	var second started
	select {
	case second = <-runs:
	case <-time.After(20 * time.Second):
		t.Fatalf("no Run on a peer within 20s while m1's Run ignores its stop")
	}
	t.Logf("the peer ran the life %s after m2 started", time.Since(t0).Round(time.Millisecond))
	if second.member != "m2" || second.token <= first.token {
		t.Fatalf("second Run on %s with token %d (first %d): want m2 with a greater token", second.member, second.token, first.token)
	}
	if m1.holds(name) {
		t.Fatal("m1 still holds the life after giving its Run up")
	}
	if got := readCounter(m1.sup.m.RunsAbandoned); got != 1 {
		t.Fatalf("m1 immortald_runs_abandoned_total = %v, want 1", got)
	}
	if got := readGauge(m1.sup.m.RunsUnreturned); got != 1 {
		t.Fatalf("m1 immortald_runs_abandoned = %v, want 1", got)
	}
	if err := first.h.Checkpoint(context.Background(), []byte("late")); !errors.Is(err, workload.ErrFenced) {
		t.Fatalf("a checkpoint of the given-up Run = %v, want ErrFenced", err)
	}
	if got := readCounter(m1.sup.m.RunsStopped.WithLabelValues("stubborn", causeAbandoned)); got != 1 {
		t.Fatalf("m1 immortald_runs_stopped_total{cause=abandoned} = %v, want 1", got)
	}
	if got := readGauge(m1.sup.m.Runs.WithLabelValues("stubborn")); got != 0 {
		t.Fatalf("m1 immortald_runs = %v with its Run given up, want 0", got)
	}
	close(release)
	waitFor(t, 10*time.Second, "the given-up Run counted as returned", func() bool {
		return readGauge(m1.sup.m.RunsUnreturned) == 0
	})
	if got := readCounter(m1.sup.m.RunsStopped.WithLabelValues("stubborn", causeReturned)); got != 0 {
		t.Fatalf("m1 counted the given-up Run's return as another end (%v)", got)
	}
	if m1.holds(name) {
		t.Fatal("m1 took the life back from its preferred member")
	}
}

// The metrics of work follow the Runs, by kind: a Run that checkpoints
// counts as started and running, with applied state writes, their bytes,
// the state writer's Txn times and a checkpoint age; deleting its life
// stops it gracefully (cause "stopped"), its final checkpoint, fenced by
// the delete, counts as fenced, and its checkpoint age goes. A Run that
// returns on its own, one that panics and one that outlasts its stop grace
// (told to stop at once) end with their own causes.
func TestWorkMetrics(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	runs := make(chan *noteRun, 4)
	quick := workload.Kind{Name: "quick", New: func() workload.Runner {
		return runnerFunc(func(ctx context.Context, h workload.Handle) error { return h.Checkpoint(ctx, []byte("done")) })
	}}
	boom := workload.Kind{Name: "boom", New: func() workload.Runner {
		return runnerFunc(func(context.Context, workload.Handle) error { panic("boom") })
	}}
	slow := workload.Kind{Name: "slow", StopGrace: 100 * time.Millisecond, New: func() workload.Runner {
		return runnerFunc(func(ctx context.Context, h workload.Handle) error {
			<-h.Expired() // ignores the graceful stop
			return nil
		})
	}}
	m1 := startMemberWith(t, srv.Endpoint(), "m1", withKinds(noteKind("m1", runs), quick, boom, slow))
	m := m1.sup.m
	stopped := func(kind, cause string) float64 { return readCounter(m.RunsStopped.WithLabelValues(kind, cause)) }
	writes := func(kind, result string) float64 { return readCounter(m.StateWrites.WithLabelValues(kind, result)) }
	running := func(kind string) float64 { return readGauge(m.Runs.WithLabelValues(kind)) }
	if got := running("note"); got != 0 {
		t.Fatalf("immortald_runs{kind=note} = %v before any Run, want 0", got)
	}

	put(t, obs, testKeys.Life("job"), `{"kind":"note"}`)
	r := nextRun(t, runs, 10*time.Second)
	waitState(t, obs, "job", fmt.Sprintf("m1 %d", r.token))
	waitFor(t, 10*time.Second, "an applied state write counted", func() bool { return writes("note", "applied") >= 1 })
	if got := readCounter(m.RunsStarted.WithLabelValues("note")); got != 1 {
		t.Fatalf("immortald_runs_started_total{kind=note} = %v, want 1", got)
	}
	if got := running("note"); got != 1 {
		t.Fatalf("immortald_runs{kind=note} = %v while the Run runs, want 1", got)
	}
	if got := readCounter(m.StateWriteBytes.WithLabelValues("note")); got <= float64(len(fmt.Sprintf("m1 %d", r.token))) {
		t.Fatalf("immortald_state_write_bytes_total{kind=note} = %v, want more than the state's bytes", got)
	}
	if n := readHistogramCount(m.StateWriteSeconds); n == 0 {
		t.Fatal("immortald_state_write_seconds has no observation after a state write")
	}
	if age, ok := checkpointAge(m, "note"); !ok || age < 0 || age > 60 {
		t.Fatalf("immortald_checkpoint_age_seconds{kind=note} = %v (present %v), want a small age", age, ok)
	}
	if _, ok := checkpointAge(m, "slow"); ok {
		t.Fatal("a checkpoint age for a kind with no Run")
	}

	// Deleted: a graceful stop, whose final checkpoint is fenced (the
	// request it is fenced on is gone).
	del(t, obs, testKeys.Life("job"))
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the Run did not return after its life was deleted")
	}
	if !errors.Is(r.cause, workload.ErrStopped) || !errors.Is(r.final, workload.ErrFenced) {
		t.Fatalf("the Run's cause %v and final checkpoint %v, want ErrStopped and ErrFenced", r.cause, r.final)
	}
	waitFor(t, 10*time.Second, "the graceful stop counted", func() bool { return stopped("note", "stopped") == 1 })
	if got := writes("note", "fenced"); got != 1 {
		t.Fatalf("immortald_state_writes_total{kind=note,result=fenced} = %v, want 1", got)
	}
	if got := running("note"); got != 0 {
		t.Fatalf("immortald_runs{kind=note} = %v after the Run returned, want 0", got)
	}
	if age, ok := checkpointAge(m, "note"); ok {
		t.Fatalf("immortald_checkpoint_age_seconds{kind=note} = %v with no Run, want no series", age)
	}

	// Returned on its own, and a panic: the lives stay held.
	put(t, obs, testKeys.Life("quick"), `{"kind":"quick"}`)
	put(t, obs, testKeys.Life("boom"), `{"kind":"boom"}`)
	waitFor(t, 10*time.Second, "the Run that returned counted", func() bool { return stopped("quick", "returned") == 1 })
	waitFor(t, 10*time.Second, "the Run that panicked counted", func() bool { return stopped("boom", "panic") == 1 })
	if !m1.holds("quick") || !m1.holds("boom") {
		t.Fatal("a life whose Run returned is not held")
	}
	if _, ok := checkpointAge(m, "quick"); ok {
		t.Fatal("a checkpoint age for a Run that returned")
	}

	// Past its stop grace and one checkpoint round, told to stop at once.
	put(t, obs, testKeys.Life("slow"), `{"kind":"slow"}`)
	waitFor(t, 10*time.Second, "slow running", func() bool { return running("slow") == 1 })
	del(t, obs, testKeys.Life("slow"))
	waitFor(t, 20*time.Second, "the Run told to stop at once counted", func() bool { return stopped("slow", "deadline") == 1 })

	for _, k := range []string{"note", "quick", "boom", "slow"} {
		var ended float64
		for _, c := range []string{causeStopped, causeDeadline, causeReturned, causeAbandoned, causePanic} {
			ended += stopped(k, c)
		}
		if started := readCounter(m.RunsStarted.WithLabelValues(k)); started != 1 || ended != 1 || running(k) != 0 {
			t.Errorf("kind %s: %v started, %v ended, %v running; want 1, 1, 0", k, started, ended, running(k))
		}
	}
	if got := writes("note", "error"); got != 0 {
		t.Errorf("immortald_state_writes_total{kind=note,result=error} = %v, want 0", got)
	}
}
