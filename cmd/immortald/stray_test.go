package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immortald/immortald/cmd/counter/countercheck"
	"github.com/immortald/immortald/internal/observe"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

// The stray run of issue 22: once, in the benchmark's exec phase, a peer
// logged "New life spawned: h64k" after a SIGKILL of the holder's member
// process and never started its child. This test hunts for it on real
// `immortald run` processes: three members declaring counter kinds (one
// with 64 KiB of state), a few command lives, and random trials of member
// process SIGKILLs (the watchdog revokes and restarts at once), SIGTERMs
// of a whole `immortald run` (started again), and lives replaced, each
// trial a burst of up to three of them at random moments, most often while
// the previous one's lives are still starting. After each trial, within
// strayBound:
//
//   - every wanted life runs on a holder whose child runs (ls -o json:
//     running, child running; get-state: that holder, and the counter's
//     log has a line of its fencing token), or ls says why it does not;
//   - every "New life spawned" in a live member process was followed by
//     "child started" of the same incarnation, or by a line that says its
//     Run returned;
//
// and at the end no counter log shows two runners (a line of an older
// token after a newer one, a step back), and no replaced life's child
// wrote after its life was replaced and the next trial settled.
//
// The seed is printed; IMMORTALD_STRAY_SEED replays one and
// IMMORTALD_STRAY_TRIALS sets the number of trials (default strayTrials,
// about a minute here).
func TestSpawnedCommandLivesStartTheirChild(t *testing.T) {
	seed, trials := time.Now().UnixNano(), strayTrials
	if v := os.Getenv("IMMORTALD_STRAY_SEED"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("IMMORTALD_STRAY_SEED=%q: %v", v, err)
		}
		seed = n
	}
	if v := os.Getenv("IMMORTALD_STRAY_TRIALS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("IMMORTALD_STRAY_TRIALS=%q: want a positive number", v)
		}
		trials = n
	}
	t.Logf("seed %d, %d trials (replay: IMMORTALD_STRAY_SEED=%d IMMORTALD_STRAY_TRIALS=%d)", seed, trials, seed, trials)
	rnd := rand.New(rand.NewSource(seed))

	logs := t.TempDir()
	e := counterCluster(t, map[string][]string{
		"counter": {"--interval", "50ms", "--log-dir", logs},
		"padded":  {"--interval", "50ms", "--log-dir", logs, "--pad", "64KiB"},
	})
	h := &strayHunt{e: e, logs: logs, rnd: rnd, members: map[string]*proc{}, wanted: map[string]string{}, dead: map[string]time.Time{}}
	ids := []string{"m1", "m2", "m3"}
	for _, id := range ids {
		h.members[id] = e.member(id)
	}
	waitFor(t, "three members", func() bool { return len(e.memberPIDs()) == 3 })
	for name, kind := range map[string]string{"h64k": "padded", "a": "counter", "b": "counter"} {
		h.request(name, kind)
	}
	h.settle("the first start")

	replaced := 0
	for trial := 1; trial <= trials; trial++ {
		var did []string
		for n := 1 + rnd.Intn(3); n > 0; n-- {
			if len(did) > 0 {
				// Often while the lives the last action moved still start.
				time.Sleep(time.Duration(rnd.Intn(700)) * time.Millisecond)
			}
			switch x := rnd.Intn(100); {
			case x < 55:
				did = append(did, h.killHolder(""))
			case x < 70:
				did = append(did, h.killHolder(ids[rnd.Intn(len(ids))]))
			case x < 85:
				did = append(did, h.terminate(ids[rnd.Intn(len(ids))]))
			default:
				replaced++
				did = append(did, h.replace(replaced))
			}
		}
		took := h.settle(fmt.Sprintf("trial %d (%s)", trial, strings.Join(did, "; ")))
		t.Logf("trial %d: %s; settled in %s", trial, strings.Join(did, "; "), took.Round(10*time.Millisecond))
	}
	// The last handoffs to members started again, and the spawns they
	// make, settle too.
	time.Sleep(3 * time.Second)
	h.settle("the last trial's handoffs")
	h.checkLogs()
}

// strayTrials is the default number of trials: about a minute here.
const strayTrials = 25

// strayBound is how long a trial may take to settle: the lease TTL (2 s)
// for a start, the member's restart, a handoff to it after its view
// settled, with slack for a loaded machine.
const strayBound = 20 * time.Second

// strayHunt is the state of TestSpawnedCommandLivesStartTheirChild.
type strayHunt struct {
	e       *kindCluster
	logs    string
	rnd     *rand.Rand
	members map[string]*proc     // the current `immortald run` of each member id
	wanted  map[string]string    // the lives requested now, and their kinds
	dead    map[string]time.Time // replaced lives: their child wrote nothing after this
}

func (h *strayHunt) t() *testing.T { return h.e.t }

func (h *strayHunt) logOf(name string) string { return filepath.Join(h.logs, name+".log") }

func (h *strayHunt) request(name, kind string) {
	h.e.cli("start", name, "--kind", kind)
	h.wanted[name] = kind
}

// status lists the wanted lives.
func (h *strayHunt) status() map[string]registry.Status {
	var all []registry.Status
	if err := json.Unmarshal([]byte(h.e.cli("ls", "-o", "json")), &all); err != nil {
		h.t().Fatal(err)
	}
	out := map[string]registry.Status{}
	for _, st := range all {
		out[st.Name] = st
	}
	return out
}

// killHolder SIGKILLs the member process of id, or (id "") of the holder
// of a random wanted life; its watchdog revokes its lease and starts it
// again.
func (h *strayHunt) killHolder(id string) string {
	what := "member process of " + id
	if id == "" {
		names := slices.Sorted(maps.Keys(h.wanted))
		name := names[h.rnd.Intn(len(names))]
		id = h.status()[name].Holder
		what = fmt.Sprintf("member process of %s (holder of %s)", id, name)
		if id == "" {
			return what + ": no holder now"
		}
	}
	pid := h.e.memberPIDs()[id]
	top := h.members[id]
	// Only a member process of ours: a child of the watchdog we started.
	if pid == 0 || !slices.Contains(observe.Children(top.cmd.Process.Pid), pid) {
		return "SIGKILL " + what + ": not running now"
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return "SIGKILL " + what
}

// terminate SIGTERMs the `immortald run` of id (its lives are handed off),
// waits for it to exit and starts it again.
func (h *strayHunt) terminate(id string) string {
	p := h.members[id]
	p.signal(syscall.SIGTERM)
	what := "SIGTERM " + id
	if code := p.wait(h.t()); code != 0 {
		// Its member process was dead (a SIGKILL of this burst) and not
		// started again yet: the watchdog exits with its status.
		what += fmt.Sprintf(" (exit %d)", code)
	}
	h.members[id] = h.e.member(id)
	return what + ", started again"
}

// replace ends a random counter life and requests another in its place.
func (h *strayHunt) replace(n int) string {
	var names []string
	for name, kind := range h.wanted {
		if kind == "counter" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	old := names[h.rnd.Intn(len(names))]
	h.e.cli("stop", old)
	delete(h.wanted, old)
	h.dead[old] = time.Time{}
	name := fmt.Sprintf("r%d", n)
	h.request(name, "counter")
	return fmt.Sprintf("replaced %s by %s", old, name)
}

// settle waits until every wanted life's holder runs its child (or ls says
// why not) and every spawn in a live member process was followed by its
// child's start; it fails the test after strayBound, with the members'
// logs of the lives that did not settle.
func (h *strayHunt) settle(what string) time.Duration {
	t := h.t()
	t.Helper()
	t0 := time.Now()
	var bad map[string]string
	for {
		bad = h.unsettled()
		if len(bad) == 0 {
			break
		}
		if time.Since(t0) > strayBound {
			var b strings.Builder
			for _, name := range slices.Sorted(maps.Keys(bad)) {
				fmt.Fprintf(&b, "\n%s: %s", name, bad[name])
				h.printLogs(name)
			}
			t.Fatalf("after %s, not settled within %s:%s", what, strayBound, b.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	now := time.Now()
	for name, at := range h.dead {
		if at.IsZero() {
			h.dead[name] = now.Add(2 * time.Second) // the kinds' stop grace
		}
	}
	return now.Sub(t0)
}

// unsettled returns what is still wrong, by life name.
func (h *strayHunt) unsettled() map[string]string {
	bad := map[string]string{}
	ls := h.status()
	for name := range h.wanted {
		st, ok := ls[name]
		switch {
		case !ok:
			bad[name] = "not listed"
			continue
		case st.State != registry.StateRunning:
			bad[name] = fmt.Sprintf("%s, error %q", st.State, st.Error)
			continue
		case st.Child == nil:
			bad[name] = fmt.Sprintf("held by %s, which wrote no child status", st.Holder)
			continue
		case st.Child.State != workload.ChildRunning:
			if st.Child.Error != "" || st.Error != "" {
				h.t().Logf("%s: child %s on %s, and ls says why: %q %q", name, st.Child.State, st.Holder, st.Child.Error, st.Error)
				continue
			}
			bad[name] = fmt.Sprintf("held by %s, child %s and no error", st.Holder, st.Child.State)
			continue
		}
		gs, ok := h.e.stateOf(name)
		switch {
		case !ok || gs.Holder != st.Holder:
			bad[name] = fmt.Sprintf("held by %s, state record of %q", st.Holder, gs.Holder)
		case !counted(h.logOf(name), gs.Token)():
			bad[name] = fmt.Sprintf("held by %s, child running, no counter line of token %d yet", st.Holder, gs.Token)
		}
	}
	for _, s := range h.strays(5 * time.Second) {
		bad[s.name] += fmt.Sprintf("; %s spawned incarnation %d at %s and neither its child started nor its Run returned", s.member, s.inc, s.at.Format("15:04:05.000"))
	}
	return bad
}

// logLine is the part of a member's JSON log line the test reads.
type logLine struct {
	Time        time.Time `json:"time"`
	Msg         string    `json:"msg"`
	Name        string    `json:"name"`
	Life        string    `json:"life"`
	Incarnation int64     `json:"incarnation"`
}

type spawn struct {
	member, name string
	inc          int64
	at           time.Time
}

// strays returns the spawns older than age in the member processes alive
// now that were followed neither by their child's start nor by word of
// their Run's return.
func (h *strayHunt) strays(age time.Duration) []spawn {
	var out []spawn
	for id, p := range h.members {
		select {
		case <-p.done:
			continue
		default:
		}
		// The lines of the member process running now: after the last
		// death its watchdog logged.
		lines := strings.Split(p.stderr.String(), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if strings.Contains(lines[i], "watchdog: member died") {
				lines = lines[i+1:]
				break
			}
		}
		open := map[[2]string]spawn{}
		for _, raw := range lines {
			var l logLine
			if json.Unmarshal([]byte(raw), &l) != nil {
				continue
			}
			switch {
			case strings.HasPrefix(l.Msg, "New life spawned: ") && l.Name != "":
				open[[2]string{l.Name, strconv.FormatInt(l.Incarnation, 10)}] = spawn{member: id, name: l.Name, inc: l.Incarnation, at: l.Time}
			case l.Life != "" && (l.Msg == "child started" || strings.HasPrefix(l.Msg, "the life's work")):
				delete(open, [2]string{l.Life, strconv.FormatInt(l.Incarnation, 10)})
			}
		}
		for _, s := range open {
			if time.Since(s.at) > age {
				out = append(out, s)
			}
		}
	}
	return out
}

// printLogs logs every line of every member's log that names life name,
// with the session and watchdog lines around them.
func (h *strayHunt) printLogs(name string) {
	t := h.t()
	quoted := strconv.Quote(name)
	for _, id := range slices.Sorted(maps.Keys(h.members)) {
		var b strings.Builder
		for _, p := range h.e.e.procs {
			if p.name != id {
				continue
			}
			sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				line := sc.Text()
				if strings.Contains(line, quoted) || strings.Contains(line, "watchdog:") || strings.Contains(line, "session") {
					b.WriteString(line + "\n")
				}
			}
		}
		t.Logf("member %s, the lines of %s:\n%s", id, name, b.String())
	}
}

// checkLogs checks every counter log: no two runners, no step back, no
// line of a replaced life after the trial that replaced it settled.
func (h *strayHunt) checkLogs() {
	t := h.t()
	files, _ := filepath.Glob(filepath.Join(h.logs, "*.log"))
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".log")
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		// A crash loses at most a checkpoint interval (200 ms: 4 counts);
		// slack for a loaded machine.
		rep, err := countercheck.Check(r, 40)
		r.Close()
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(rep.Violations) > 0 {
			h.printLogs(name)
			t.Errorf("counter log of %s: %d lines, violations %q", name, rep.Lines, rep.Violations)
		}
		if at, ok := h.dead[name]; ok {
			if last := lastLineMS(f); last > at.UnixMilli() {
				h.printLogs(name)
				t.Errorf("the child of %s, replaced, wrote at %s, after %s", name, time.UnixMilli(last).Format("15:04:05.000"), at.Format("15:04:05.000"))
			}
		}
		t.Logf("counter log of %s: %d lines, %d handoffs", name, rep.Lines, len(rep.Handoffs))
	}
}

// lastLineMS is the unix-ms of the last "<token> <n> <unix-ms>" line of
// the counter log f.
func lastLineMS(f string) int64 {
	b, _ := os.ReadFile(f)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	fields := strings.Fields(lines[len(lines)-1])
	if len(fields) != 3 {
		return 0
	}
	ms, _ := strconv.ParseInt(fields[2], 10, 64)
	return ms
}

// counterCluster is a kindCluster (TTL 2 s, checkpoints every 200 ms) whose
// config declares each kind as cmd/counter with that kind's arguments (stop
// grace 2 s, restart on failure).
func counterCluster(t *testing.T, kinds map[string][]string) *kindCluster {
	t.Helper()
	dir := t.TempDir()
	counter := buildCounter(t, dir)
	var cfg strings.Builder
	cfg.WriteString("kinds:\n")
	for _, name := range slices.Sorted(maps.Keys(kinds)) {
		cmd := []string{strconv.Quote(counter)}
		for _, a := range kinds[name] {
			cmd = append(cmd, strconv.Quote(a))
		}
		fmt.Fprintf(&cfg, "  %s:\n    command: [%s]\n    stop_grace: 2s\n    restart: on-failure\n", name, strings.Join(cmd, ", "))
	}
	return newKindCluster(t, dir, cfg.String(), "2s", "200ms")
}
