package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
func TestCounterKindEndToEnd(t *testing.T) {
	dir := t.TempDir()
	counter := buildCounter(t, dir)
	counterLog := filepath.Join(dir, "counter.log")
	c := newKindCluster(t, dir, fmt.Sprintf(`kinds:
  counter:
    command: [%q, "--interval", "50ms"]
    env: {COUNTER_LOG: %q}
    stop_grace: 2s
    restart: on-failure
`, counter, counterLog), "2s", "200ms")
	member, cli, waitFor := c.member, c.cli, c.waitFor
	stateOf := func() (lifeState, bool) { return c.stateOf("job") }

	m1 := member("m1")
	cli("start", "job", "--kind", "counter")
	var st1 lifeState
	waitFor("a counter state checkpointed by m1", func() bool {
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
	waitFor("m2 registered", func() bool { return strings.Contains(cli("members"), "m2") })
	m1.signal(syscall.SIGTERM)
	if code := m1.wait(t); code != 0 {
		t.Fatalf("m1 exited %d after SIGTERM: %s", code, m1.stderr.String())
	}
	var st2 lifeState
	waitFor("the counter on m2", func() bool {
		st, ok := stateOf()
		st2 = st
		return ok && st.Holder == "m2"
	})
	if st2.Token <= st1.Token {
		t.Fatalf("token %d on m2 after %d on m1", st2.Token, st1.Token)
	}
	// The state record names m2 as soon as its Run wrote its status; the
	// handoff is in the counter's log once m2's child counted.
	waitFor("m2's counter to count", counted(counterLog, st2.Token))

	// SIGKILL of m2's member process (the watchdog's child): its counter
	// child dies with it; the watchdog starts the member again.
	memberPID := c.memberPID("m2")
	kids := observe.Children(memberPID)
	if memberPID == 0 || len(kids) != 1 {
		t.Fatalf("m2's member process %d has children %v, want the counter alone", memberPID, kids)
	}
	if err := syscall.Kill(memberPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor("the counter to die with its member", func() bool { return syscall.Kill(kids[0], 0) != nil })
	var st3 lifeState
	waitFor("the counter running again", func() bool {
		st, ok := stateOf()
		st3 = st
		return ok && st.Token > st2.Token
	})
	waitFor("the new counter to count", counted(counterLog, st3.Token))
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

// kindCluster runs real `immortald run` processes (each a watchdog and its
// member) against one etcd, with a config file declaring kinds.
type kindCluster struct {
	t                    *testing.T
	e                    *env
	dir, cfg             string
	states               string // the members' state roots, made by the first member
	ep                   []string
	leaseTTL, checkpoint string
}

// newKindCluster starts an etcd and writes the members' config file in dir;
// members get --lease-ttl leaseTTL and --checkpoint-interval checkpoint.
// Every process is killed at the end of the test.
func newKindCluster(t *testing.T, dir, config, leaseTTL, checkpoint string) *kindCluster {
	t.Helper()
	cfg := filepath.Join(dir, "member.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := etcdtest.MustStart(t)
	c := &kindCluster{t: t, e: &env{t: t}, dir: dir, cfg: cfg, ep: []string{"--etcd-endpoints", srv.Endpoint()}, leaseTTL: leaseTTL, checkpoint: checkpoint}
	t.Cleanup(func() {
		for _, p := range c.e.procs {
			p.kill()
		}
	})
	return c
}

// member starts the member id (its HTTP address in the proc's http), its
// state directories under a short
// temporary directory (a test's, named for the test, may leave no room for
// a checkpoint socket's path: at most 107 bytes).
func (c *kindCluster) member(id string) *proc {
	c.t.Helper()
	if c.states == "" {
		dir, err := os.MkdirTemp("", "imd")
		if err != nil {
			c.t.Fatal(err)
		}
		c.t.Cleanup(func() { _ = os.RemoveAll(dir) })
		c.states = dir
	}
	addr := etcdtest.FreeAddr(c.t)
	args := append([]string{"run", "--id", id, "--config", c.cfg, "--lease-ttl", c.leaseTTL, "--checkpoint-interval", c.checkpoint,
		"--http-addr", addr, "--log-format", "json", "--state-dir", filepath.Join(c.states, id)}, c.ep...)
	p := c.e.start(id, args)
	p.http = addr
	return p
}

// cli runs a client command and returns its stdout; it fails the test
// unless the command exits 0.
func (c *kindCluster) cli(args ...string) string {
	c.t.Helper()
	p := c.e.start("cli", append(args, c.ep...))
	if code := p.wait(c.t); code != 0 {
		c.t.Fatalf("immortald %v: exit %d: %s", args, code, p.stderr.String())
	}
	return p.stdout.String()
}

// lifeState is what `get-state -o json` shows of a life.
type lifeState struct {
	Holder string               `json:"holder"`
	Token  int64                `json:"fencing_token"`
	Data   []byte               `json:"data"`
	Child  workload.ChildStatus `json:"child"`
}

// stateOf is the life's state record, false when there is none yet.
func (c *kindCluster) stateOf(name string) (lifeState, bool) {
	p := c.e.start("cli", append([]string{"get-state", name, "-o", "json"}, c.ep...))
	if p.wait(c.t) != 0 {
		return lifeState{}, false
	}
	var st lifeState
	return st, json.Unmarshal([]byte(p.stdout.String()), &st) == nil
}

// waitFor polls cond every 100ms, failing the test after bound.
func (c *kindCluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	waitFor(c.t, what, cond)
}

// waitFor polls cond every 100ms, failing the test after bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > bound {
			t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
	}
}

// memberPID is the pid of the member process (the watchdog's child) of
// member id, from `members -o json`; 0 when it is not listed.
func (c *kindCluster) memberPID(id string) int { return c.memberPIDs()[id] }

// memberPIDs returns the pid of each live member's member process, by id.
func (c *kindCluster) memberPIDs() map[string]int {
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

// counted reports whether the counter log at path has a line of token.
func counted(path string, token int64) func() bool {
	return func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(append([]byte("\n"), b...), []byte(fmt.Sprintf("\n%d ", token)))
	}
}

// buildCounter builds cmd/counter into dir and returns its path.
func buildCounter(t *testing.T, dir string) string {
	t.Helper()
	counter := filepath.Join(dir, "counter")
	if out, err := exec.Command("go", "build", "-o", counter, "../counter").CombinedOutput(); err != nil {
		t.Fatalf("go build counter: %v\n%s", err, out)
	}
	return counter
}
