//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/cmd/counter/countercheck"
)

// counterTick is the counter's --interval in counterConfig.
const counterTick = 100 * time.Millisecond

// counterLog is the counter's log file in the shared directory.
const counterLog = "counter.log"

// counterConfig is every member's config file in the command scenarios: the
// counter kind (cmd/counter, at /counter in the image) appending
// "<token> <n> <unix-ms>" to one log on the directory all members share,
// and the state directories under /data, which the members' user may write.
var counterConfig = fmt.Sprintf(`state-dir: /data/state
kinds:
  counter:
    command: ["/counter", "--interval", %q]
    env: {COUNTER_LOG: %s/%s}
    stop_grace: 2s
`, counterTick, SharedDir, counterLog)

// counterLine is one line of the counter's log.
type counterLine struct{ Token, N, MS int64 }

// StateInfo is what `immortald get-state NAME -o json` prints (the CLI
// contract); Data is base64 in the JSON.
type StateInfo struct {
	Name         string    `json:"name"`
	LifeID       int64     `json:"life_id"`
	Holder       string    `json:"holder"`
	FencingToken int64     `json:"fencing_token"`
	Incarnation  int64     `json:"incarnation"`
	Time         time.Time `json:"time"`
	Size         int       `json:"size"`
	Data         []byte    `json:"data"`
	Child        struct {
		State    string `json:"state"`
		ExitCode int    `json:"exit_code"`
		Restarts int    `json:"restarts"`
		Error    string `json:"error"`
	} `json:"child"`
}

// getState runs `immortald get-state NAME -o json` in member id.
func getState(t testing.TB, c Cluster, id, name string) (StateInfo, error) {
	t.Helper()
	res, err := c.Exec(ctxT(20*time.Second), id, "get-state", name, "-o", "json")
	if err != nil {
		return StateInfo{}, err
	}
	var st StateInfo
	if err := json.Unmarshal([]byte(res.Stdout), &st); err != nil {
		return StateInfo{}, fmt.Errorf("get-state %s -o json on %s: %v: %q", name, id, err, res.Stdout)
	}
	return st, nil
}

// counterLogRead reads the shared counter log: its complete lines (a line
// being written is left for the next read) as text, and parsed.
func (e *env) counterLogRead() (string, []counterLine) {
	e.t.Helper()
	b, err := e.c.ReadShared(ctxT(30*time.Second), counterLog)
	if err != nil {
		if strings.Contains(strings.ToLower(err.Error()), "no such file") {
			return "", nil
		}
		e.t.Fatalf("reading the counter log: %v", err)
	}
	b = b[:bytes.LastIndexByte(b, '\n')+1]
	var out []counterLine
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		var v [3]int64
		ok := len(f) == 3
		for j := 0; ok && j < 3; j++ {
			v[j], err = strconv.ParseInt(f[j], 10, 64)
			ok = err == nil
		}
		if !ok {
			e.t.Fatalf("counter log line %d %q: want \"token n unix-ms\"", i+1, line)
		}
		out = append(out, counterLine{v[0], v[1], v[2]})
	}
	return string(b), out
}

// waitCounter waits until the counter has logged at least lines lines under
// token, and returns its last line.
func (e *env) waitCounter(token int64, lines int, timeout time.Duration) counterLine {
	e.t.Helper()
	var last counterLine
	waitFor(e.t, timeout, fmt.Sprintf("%d counter lines of token %d", lines, token), func() (bool, string) {
		_, ls := e.counterLogRead()
		n := 0
		for _, l := range ls {
			if l.Token == token {
				n++
				last = l
			}
		}
		tail := "no line yet"
		if len(ls) > 0 {
			tail = fmt.Sprintf("last line %+v", ls[len(ls)-1])
		}
		return n >= lines, fmt.Sprintf("%d lines of token %d; %s", n, token, tail)
	})
	return last
}

// counters returns the counter processes of each member that runs.
func (e *env) counters(ids []string) map[string][]Proc {
	e.t.Helper()
	out := map[string][]Proc{}
	for _, id := range ids {
		ps, err := e.c.Procs(ctxT(30*time.Second), id)
		must(e.t, err)
		for _, p := range ps {
			if p.Cmdline == "/counter" || strings.HasPrefix(p.Cmdline, "/counter ") {
				out[id] = append(out[id], p)
			}
		}
	}
	return out
}

// oneCounter waits until exactly one counter process runs across the
// members, in holder's container, and returns its pid.
func (e *env) oneCounter(ids []string, holder string) int {
	e.t.Helper()
	var pid int
	waitFor(e.t, 20*time.Second, "one counter process, in "+holder, func() (bool, string) {
		cs := e.counters(ids)
		total := 0
		for _, ps := range cs {
			total += len(ps)
		}
		if total != 1 || len(cs[holder]) != 1 {
			return false, fmt.Sprintf("counter processes by member: %v", cs)
		}
		pid = cs[holder][0].PID
		return true, ""
	})
	return pid
}

// TestCommandLife: a life of a command kind, the counter (cmd/counter), on
// three members that declare it in their config file, requested as
// {"kind":"counter"}. Its child appends "<fencing token> <n> <unix-ms>" to a
// log on a directory all members share, and keeps n in its state file. Its
// holder is stopped (SIGTERM, docker stop), killed (SIGKILL of the
// container, docker kill) and loses its member process (SIGKILL of the
// member alone: the watchdog revokes its lease). Each time the life moves
// with its state and a greater fencing token, the old holder's child is
// gone, and exactly one child runs. Over the whole log (countercheck): no
// line of an older token after a newer one (two runners), no step back or
// skip in n, a crash loses at most one checkpoint interval (+500 ms) of
// ticks and a graceful handoff at most one tick. Every state write is fenced
// (the checker).
func TestCommandLife(t *testing.T) {
	e := setup(t, Options{Config: counterConfig, Shared: true})
	c, chk, o := e.c, e.chk, e.o
	t.Cleanup(func() {
		if keepLogs(t) {
			text, _ := e.counterLogRead()
			writeLog(t, "counter-log", text)
		}
	})
	ids := e.addMembers(3)
	const name = "job"
	e.etcdctl("put", e.key("lives", name), `{"kind":"counter"}`)
	chk.WaitRunning(t, []string{name}, time.Time{}, 60*time.Second)
	e.settle([]string{name}, 60*time.Second)

	st := listLives(t, c, ids[0])[name]
	if st.Kind != "counter" || st.State != "running" {
		t.Errorf("ls -o json: %s = %+v, want kind counter, running", name, st)
	}

	// A crash may lose the ticks since the last checkpoint of the state
	// file (one interval, + 500 ms as the age bound of the suite); a
	// graceful handoff checkpoints the state the child wrote as it exited:
	// at most one tick.
	crashLoss := int64((o.CheckpointInterval + 500*time.Millisecond) / counterTick)
	const gracefulLoss = 1

	type stepResult struct {
		what          string
		from, to      string
		token, next   int64
		failover      time.Duration
		lastN, firstN int64
	}
	var steps []stepResult
	crashTokens := map[int64]bool{}
	step := func(what string, crash bool, maxFailover, maxAgeLoss time.Duration, act func(string) error) {
		t.Helper()
		h, ok := chk.Holder(name)
		if !ok {
			t.Fatalf("%s: no holder of %s", what, name)
		}
		last := e.waitCounter(h.Rev, 10, 30*time.Second)
		pid := e.oneCounter(ids, h.Member)
		at := time.Now()
		must(t, act(h.Member))
		chk.Note("%s: %s (token %d, counter pid %d, last n %d)", what, h.Member, h.Rev, pid, last.N)
		hs := chk.WaitHandoffs(t, []string{name}, at, o.LeaseTTL+30*time.Second)
		fo, _ := e.handoffStats(hs, h.Member, maxFailover, maxAgeLoss)
		next := hs[0].New.HolderRev
		if next <= h.Rev {
			t.Errorf("%s: the new holder %s has fencing token %d, not greater than %d", what, hs[0].New.Holder, next, h.Rev)
		}
		// The old holder's child is gone (its container stopped, or, when
		// only its member died, by the parent-death signal), and the new
		// holder's counter runs, under the new token.
		waitFor(t, 10*time.Second, fmt.Sprintf("the counter (pid %d) of the old holder %s to be gone", pid, h.Member), func() (bool, string) {
			ps, err := c.Procs(ctxT(30*time.Second), h.Member)
			must(t, err)
			for _, p := range ps {
				if p.PID == pid {
					return false, fmt.Sprintf("pid %d runs: %q", p.PID, p.Cmdline)
				}
			}
			return true, ""
		})
		first := e.waitCounter(next, 5, 30*time.Second)
		if crash {
			crashTokens[h.Rev] = true
		}
		steps = append(steps, stepResult{what: what, from: h.Member, to: hs[0].New.Holder, token: h.Rev, next: next,
			failover: time.Duration(fo.Max) * time.Millisecond, lastN: last.N, firstN: first.N})
	}
	restart := func(id string) {
		t.Helper()
		nid, err := c.Start(ctxT(time.Minute), id)
		must(t, err)
		for i := range ids {
			if ids[i] == id {
				ids[i] = nid
			}
		}
		waitReady(t, c, 60*time.Second, nid)
		e.settle([]string{name}, 60*time.Second)
	}

	// SIGTERM: a graceful handoff with the state as the child left it.
	step("sigterm", false, 5*time.Second, 500*time.Millisecond, func(id string) error { return c.Stop(ctxT(2*time.Minute), id) })
	restart(steps[len(steps)-1].from)
	// SIGKILL of the holder's container: its lease expires.
	step("sigkill", true, o.LeaseTTL+2*time.Second, o.CheckpointInterval+500*time.Millisecond, func(id string) error { return c.Kill(ctxT(time.Minute), id) })
	restart(steps[len(steps)-1].from)
	// SIGKILL of the member process alone: its watchdog revokes the lease
	// at once and starts it again; its child dies with it.
	step("member-sigkill", true, o.LeaseTTL/2, o.CheckpointInterval+500*time.Millisecond, func(id string) error { return c.KillMember(ctxT(time.Minute), id) })
	waitReady(t, c, 60*time.Second, ids...)
	e.settle([]string{name}, 60*time.Second)

	// The life runs exactly once, its state checkpointed under the last
	// token, and counting on.
	h, _ := chk.Holder(name)
	lastLine := e.waitCounter(h.Rev, 10, 30*time.Second)
	e.oneCounter(ids, h.Member)
	e.waitExactlyOnce([]string{name}, ids, 30*time.Second)
	var state StateInfo
	waitFor(t, 20*time.Second, "get-state to show the state under the last token", func() (bool, string) {
		s, err := getState(t, c, ids[0], name)
		if err != nil {
			return false, err.Error()
		}
		state = s
		return s.FencingToken == h.Rev && s.Holder == h.Member, fmt.Sprintf("%+v", s)
	})
	n, err := strconv.ParseInt(strings.TrimSpace(string(state.Data)), 10, 64)
	if err != nil {
		t.Errorf("get-state %s: data %q is not the counter's n", name, state.Data)
	}
	if n < steps[len(steps)-1].firstN-1 || n > lastLine.N+crashLoss+100 {
		t.Errorf("get-state %s: n %d, want at least %d (before the last move) and about %d (the log)", name, n, steps[len(steps)-1].firstN-1, lastLine.N)
	}
	if state.Child.State != "running" {
		t.Errorf("get-state %s -o json: child %+v, want running", name, state.Child)
	}

	// The whole log.
	text, lines := e.counterLogRead()
	rep, err := countercheck.Check(strings.NewReader(text), crashLoss)
	must(t, err)
	for _, v := range rep.Violations {
		t.Errorf("counter log: %s", v)
	}
	var gracefulMax, crashMax int64
	for _, hf := range rep.Handoffs {
		if crashTokens[hf.FromToken] {
			crashMax = max(crashMax, hf.Loss)
			continue
		}
		gracefulMax = max(gracefulMax, hf.Loss)
		if hf.Loss > gracefulLoss {
			t.Errorf("counter log: graceful handoff from token %d to %d lost %d ticks (n %d, then %d), over %d",
				hf.FromToken, hf.ToToken, hf.Loss, hf.LastN, hf.FirstN, gracefulLoss)
		}
	}
	if len(rep.Handoffs) < len(steps) {
		t.Errorf("counter log: %d handoffs, want at least %d (one per step)", len(rep.Handoffs), len(steps))
	}
	// Every token in the log is a holder's election revision, as the age
	// records name it; each step's is there.
	holderRevs := map[int64]bool{}
	for _, cp := range chk.History(name) {
		holderRevs[cp.HolderRev] = true
	}
	var tokens []int64
	for _, l := range lines {
		if len(tokens) == 0 || tokens[len(tokens)-1] != l.Token {
			tokens = append(tokens, l.Token)
		}
	}
	for _, tok := range tokens {
		if !holderRevs[tok] {
			t.Errorf("counter log: token %d is no holder's election revision (holders: %v)", tok, holderRevs)
		}
	}
	for _, s := range steps {
		if !slices.Contains(tokens, s.token) || !slices.Contains(tokens, s.next) {
			t.Errorf("%s: tokens %d and %d not both in the log (%v)", s.what, s.token, s.next, tokens)
		}
	}
	if ws := chk.States(name); len(ws) == 0 {
		t.Errorf("no write of states/%s seen", name)
	}

	kv := []any{"lines", rep.Lines, "handoffs", len(rep.Handoffs), "tokens", len(tokens),
		"graceful_loss_ticks_max", gracefulMax, "crash_loss_ticks_max", crashMax, "crash_loss_bound_ticks", crashLoss,
		"state_writes", len(chk.States(name)), "final_n", lastLine.N}
	for _, s := range steps {
		kv = append(kv, s.what+"_failover_ms", ms(s.failover), s.what+"_tokens", fmt.Sprintf("%d->%d", s.token, s.next))
	}
	report(t, "command-life", kv...)
	chk.Check(t)
}
