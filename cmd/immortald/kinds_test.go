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
)

// A counter life end to end on real `immortald run` processes (each a
// watchdog and its member) with the kind in their config file: started by
// `start --kind`, its state shown by get-state; a SIGTERM of its member
// hands it over with nothing lost and a greater token; a SIGKILL of the
// member process kills its child, and the life goes on from its last
// checkpoint. The counter's log is checked for two runners and steps back.
func TestCounterKindEndToEnd(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "counter")
	if out, err := exec.Command("go", "build", "-o", counter, "../counter").CombinedOutput(); err != nil {
		t.Fatalf("go build counter: %v\n%s", err, out)
	}
	counterLog := filepath.Join(dir, "counter.log")
	cfg := filepath.Join(dir, "member.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`kinds:
  counter:
    command: [%q, "--interval", "50ms"]
    env: {COUNTER_LOG: %q}
    stop_grace: 2s
    restart: on-failure
`, counter, counterLog)), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := etcdtest.MustStart(t)
	e := &env{t: t}
	t.Cleanup(func() {
		for _, p := range e.procs {
			p.kill()
		}
	})
	ep := []string{"--etcd-endpoints", srv.Endpoint()}
	member := func(id string) *proc {
		args := append([]string{"run", "--id", id, "--config", cfg, "--lease-ttl", "2s", "--checkpoint-interval", "200ms",
			"--http-addr", etcdtest.FreeAddr(t), "--log-format", "json", "--state-dir", filepath.Join(dir, "state-"+id)}, ep...)
		return e.start(id, args)
	}
	cli := func(args ...string) string {
		t.Helper()
		p := e.start("cli", append(args, ep...))
		if code := p.wait(t); code != 0 {
			t.Fatalf("immortald %v: exit %d: %s", args, code, p.stderr.String())
		}
		return p.stdout.String()
	}
	type state struct {
		Holder string `json:"holder"`
		Token  int64  `json:"fencing_token"`
		Data   []byte `json:"data"`
	}
	stateOf := func() (state, bool) {
		p := e.start("cli", append([]string{"get-state", "job", "-o", "json"}, ep...))
		if p.wait(t) != 0 {
			return state{}, false
		}
		var st state
		return st, json.Unmarshal([]byte(p.stdout.String()), &st) == nil
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for start := time.Now(); !cond(); time.Sleep(100 * time.Millisecond) {
			if time.Since(start) > bound {
				t.Fatalf("timed out after %s waiting for %s", bound, what)
			}
		}
	}

	m1 := member("m1")
	cli("start", "job", "--kind", "counter")
	var st1 state
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
	var st2 state
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
	counted := func(token int64) func() bool {
		return func() bool {
			b, _ := os.ReadFile(counterLog)
			return bytes.Contains(append([]byte("\n"), b...), []byte(fmt.Sprintf("\n%d ", token)))
		}
	}
	waitFor("m2's counter to count", counted(st2.Token))

	// SIGKILL of m2's member process (the watchdog's child): its counter
	// child dies with it; the watchdog starts the member again.
	var members []struct {
		ID  string `json:"id"`
		PID int    `json:"pid"`
	}
	if err := json.Unmarshal([]byte(cli("members", "-o", "json")), &members); err != nil {
		t.Fatal(err)
	}
	memberPID := 0
	for _, m := range members {
		if m.ID == "m2" {
			memberPID = m.PID
		}
	}
	kids := observe.Children(memberPID)
	if memberPID == 0 || len(kids) != 1 {
		t.Fatalf("m2's member process %d has children %v, want the counter alone", memberPID, kids)
	}
	if err := syscall.Kill(memberPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor("the counter to die with its member", func() bool { return syscall.Kill(kids[0], 0) != nil })
	var st3 state
	waitFor("the counter running again", func() bool {
		st, ok := stateOf()
		st3 = st
		return ok && st.Token > st2.Token
	})
	waitFor("the new counter to count", counted(st3.Token))
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
