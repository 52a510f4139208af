package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immortald/immortald/cmd/counter/countercheck"
	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/internal/observe"
	"github.com/immortald/immortald/workload"
)

// A counter life end to end on real `immortald run` processes (each a
// watchdog and its member) with the kind in their config file: started by
// `start --kind`, its state shown by get-state; a SIGTERM of its member
// hands it over with nothing lost and a greater token; a SIGKILL of the
// member process kills its child, and the life goes on from its last
// checkpoint. The counter's log is checked for two runners and steps back.
// counterEnv is a plain etcd and the cmd/counter binary, declared as
// kinds in a member config file, for tests of real `immortald run`
// processes.
type counterEnv struct {
	*env
	dir, counter, cfg string
	ep                []string // the etcd flags
}

// newCounterEnv builds cmd/counter and writes a member config declaring
// each kind as the counter with that kind's arguments (stop grace 2 s,
// restart on failure, $COUNTER_LOG at dir/counter.log). Every process it
// starts is killed when the test ends.
func newCounterEnv(t *testing.T, kinds map[string][]string) *counterEnv {
	t.Helper()
	dir := t.TempDir()
	counter := filepath.Join(dir, "counter")
	if out, err := exec.Command("go", "build", "-o", counter, "../counter").CombinedOutput(); err != nil {
		t.Fatalf("go build counter: %v\n%s", err, out)
	}
	var cfg strings.Builder
	cfg.WriteString("kinds:\n")
	for _, name := range slices.Sorted(maps.Keys(kinds)) {
		cmd := []string{strconv.Quote(counter)}
		for _, a := range kinds[name] {
			cmd = append(cmd, strconv.Quote(a))
		}
		fmt.Fprintf(&cfg, "  %s:\n    command: [%s]\n    env: {COUNTER_LOG: %q}\n    stop_grace: 2s\n    restart: on-failure\n",
			name, strings.Join(cmd, ", "), filepath.Join(dir, "counter.log"))
	}
	c := &counterEnv{env: &env{t: t}, dir: dir, counter: counter, cfg: filepath.Join(dir, "member.yaml")}
	if err := os.WriteFile(c.cfg, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := etcdtest.MustStart(t)
	c.ep = []string{"--etcd-endpoints", srv.Endpoint()}
	t.Cleanup(func() {
		for _, p := range c.procs {
			p.kill()
		}
	})
	return c
}

// member starts `immortald run` as member id: TTL 2 s, checkpoints every
// 200 ms, JSON logs, its state directory under the test's.
func (c *counterEnv) member(id string) *proc {
	args := append([]string{"run", "--id", id, "--config", c.cfg, "--lease-ttl", "2s", "--checkpoint-interval", "200ms",
		"--http-addr", etcdtest.FreeAddr(c.t), "--log-format", "json", "--state-dir", filepath.Join(c.dir, "state-"+id)}, c.ep...)
	return c.start(id, args)
}

// cli runs a client command, failing the test unless it exits 0.
func (c *counterEnv) cli(args ...string) string {
	c.t.Helper()
	p := c.start("cli", append(args, c.ep...))
	if code := p.wait(c.t); code != 0 {
		c.t.Fatalf("immortald %v: exit %d: %s", args, code, p.stderr.String())
	}
	return p.stdout.String()
}

// counterState is a life's state record as `get-state -o json` prints it.
type counterState struct {
	Holder string               `json:"holder"`
	Token  int64                `json:"fencing_token"`
	Data   []byte               `json:"data"`
	Child  workload.ChildStatus `json:"child"`
}

// stateOf reads the state record of life name; false when there is none
// (yet) or the command failed.
func (c *counterEnv) stateOf(name string) (counterState, bool) {
	p := c.start("cli", append([]string{"get-state", name, "-o", "json"}, c.ep...))
	if p.wait(c.t) != 0 {
		return counterState{}, false
	}
	var st counterState
	return st, json.Unmarshal([]byte(p.stdout.String()), &st) == nil
}

// memberPIDs returns the pid of each live member's member process, by id.
func (c *counterEnv) memberPIDs() map[string]int {
	c.t.Helper()
	var members []struct {
		ID  string `json:"id"`
		PID int    `json:"pid"`
	}
	if err := json.Unmarshal([]byte(c.cli("members", "-o", "json")), &members); err != nil {
		c.t.Fatal(err)
	}
	out := make(map[string]int, len(members))
	for _, m := range members {
		out[m.ID] = m.PID
	}
	return out
}

// waitFor polls cond until it holds, failing the test after bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > bound {
			t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
	}
}

// counted reports whether the counter log at path has a line of token.
func counted(path string, token int64) func() bool {
	return func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(append([]byte("\n"), b...), []byte(fmt.Sprintf("\n%d ", token)))
	}
}

// A counter life end to end on real `immortald run` processes (each a
// watchdog and its member) with the kind in their config file: started by
// `start --kind`, its state shown by get-state; a SIGTERM of its member
// hands it over with nothing lost and a greater token; a SIGKILL of the
// member process kills its child, and the life goes on from its last
// checkpoint. The counter's log is checked for two runners and steps back.
func TestCounterKindEndToEnd(t *testing.T) {
	e := newCounterEnv(t, map[string][]string{"counter": {"--interval", "50ms"}})
	counterLog := filepath.Join(e.dir, "counter.log")
	member, cli := e.member, e.cli
	stateOf := func() (counterState, bool) { return e.stateOf("job") }

	m1 := member("m1")
	cli("start", "job", "--kind", "counter")
	var st1 counterState
	waitFor(t, "a counter state checkpointed by m1", func() bool {
		st, ok := stateOf()
		st1 = st
		n, err := strconv.Atoi(strings.TrimSpace(string(st.Data)))
		return ok && st.Holder == "m1" && err == nil && n > 5
	})
	if ls := cli("ls"); !strings.Contains(ls, "job") || !strings.Contains(ls, "counter") || !strings.Contains(ls, "running") {
		t.Fatalf("ls = %q, want job, kind counter, running", ls)
	}

	// SIGTERM: a graceful handoff to m2.
	m2 := member("m2")
	waitFor(t, "m2 registered", func() bool { return strings.Contains(cli("members"), "m2") })
	m1.signal(syscall.SIGTERM)
	if code := m1.wait(t); code != 0 {
		t.Fatalf("m1 exited %d after SIGTERM: %s", code, m1.stderr.String())
	}
	var st2 counterState
	waitFor(t, "the counter on m2", func() bool {
		st, ok := stateOf()
		st2 = st
		return ok && st.Holder == "m2"
	})
	if st2.Token <= st1.Token {
		t.Fatalf("token %d on m2 after %d on m1", st2.Token, st1.Token)
	}
	// The state record names m2 as soon as its Run wrote its status; the
	// handoff is in the counter's log once m2's child counted.
	waitFor(t, "m2's counter to count", counted(counterLog, st2.Token))

	// SIGKILL of m2's member process (the watchdog's child): its counter
	// child dies with it; the watchdog starts the member again.
	memberPID := e.memberPIDs()["m2"]
	kids := observe.Children(memberPID)
	if memberPID == 0 || len(kids) != 1 {
		t.Fatalf("m2's member process %d has children %v, want the counter alone", memberPID, kids)
	}
	if err := syscall.Kill(memberPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the counter to die with its member", func() bool { return syscall.Kill(kids[0], 0) != nil })
	var st3 counterState
	waitFor(t, "the counter running again", func() bool {
		st, ok := stateOf()
		st3 = st
		return ok && st.Token > st2.Token
	})
	waitFor(t, "the new counter to count", counted(counterLog, st3.Token))
	time.Sleep(500 * time.Millisecond)
	cli("stop", "job")
	_ = m2

	f, err := os.Open(counterLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A crash loses at most a checkpoint interval (200 ms: 4 counts), with
	// slack for a loaded machine.
	rep, err := countercheck.Check(f, 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Violations) > 0 || len(rep.Handoffs) < 2 || rep.Handoffs[0].Loss != 0 {
		t.Fatalf("counter log: %d lines, handoffs %+v, violations %q; want two handoffs or more, the graceful one losing nothing",
			rep.Lines, rep.Handoffs, rep.Violations)
	}
	t.Logf("counter log: %d lines, handoffs %+v", rep.Lines, rep.Handoffs)
}
