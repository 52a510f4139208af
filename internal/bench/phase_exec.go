package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/cmd/counter/countercheck"
	"github.com/immortald/immortald/internal/observe"
)

// The exec phase's command kind: cmd/counter, ticking every execTick. Its
// probe life has a state of execStateBytes (the counter's --pad).
const (
	execTick       = 100 * time.Millisecond
	execStateBytes = 64 << 10
	execProbe      = "h64k"
	execLivesPfx   = "x"
)

// execKinds is the members' config file in the exec phase: the counter
// kind, and the same with a state of execStateBytes. Each child logs to
// logDir/<life>.log.
func execKinds(counter, logDir string) string {
	cmd := func(extra ...string) string {
		b, _ := json.Marshal(append([]string{counter, "--interval", execTick.String(), "--log-dir", logDir}, extra...))
		return string(b)
	}
	return fmt.Sprintf("kinds:\n  counter:\n    command: %s\n    stop_grace: 2s\n  counter64k:\n    command: %s\n    stop_grace: 2s\n",
		cmd(), cmd("--pad", fmt.Sprint(execStateBytes)))
}

// phaseExec measures lives of a command kind, the counter (cmd/counter),
// which three members declare in their config file (--config):
//
//   - start: execLives lives requested at once (a few Txns), until each
//     one's child process runs; the members' RSS (watchdog and member, the
//     children not counted) before and after, per life;
//   - a life with execStateBytes of state: SIGTERM of its holder (graceful
//     handoff: the child writes its state, the member checkpoints it, a
//     peer restores it and starts the child), SIGKILL of the holder's
//     member process (its watchdog revokes the lease; the child dies with
//     the member) and SIGKILL of the holder's top-level process (the lease
//     expires); each from the signal until the new holder's child runs;
//   - duplicates: a scan of /proc every 10 ms for two children of one life
//     at once, and every child's log checked for a line of an older token
//     after a newer one (countercheck); the counts lost at each handoff.
func (b *bench) phaseExec(ctx context.Context) error {
	dir := filepath.Join(b.workDir, "exec")
	logDir := filepath.Join(b.logDir, "counter")
	for _, d := range []string{dir, logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	conf := filepath.Join(dir, "kinds.yaml")
	if err := os.WriteFile(conf, []byte(execKinds(b.bins.Counter, logDir)), 0o644); err != nil {
		return err
	}
	flags := func(id string) []string {
		return []string{"--config", conf, "--state-dir", filepath.Join(dir, "state", id)}
	}
	sctx, stopSampler := context.WithCancel(ctx)
	defer stopSampler()
	samp := b.startChildSampler(sctx, b.bins.Counter, 10*time.Millisecond)
	defer func() {
		samp.mu.Lock()
		b.rep.set("exec_duplicates_sampled", len(samp.duplicates))
		if len(samp.duplicates) > 0 {
			b.rep.set("exec_duplicates", samp.duplicates[:min(10, len(samp.duplicates))])
		}
		b.rep.set("exec_proc_scans", samp.scans)
		samp.mu.Unlock()
	}()
	if _, err := b.startMembersWith(ctx, flags, "m1", "m2", "m3"); err != nil {
		return err
	}

	if err := b.execStart(ctx, samp); err != nil {
		return err
	}
	trialErr := b.execTrials(ctx, samp, flags)

	// Duplicates in the children's own logs: a line of an older token
	// after a newer one.
	logs, _ := filepath.Glob(filepath.Join(logDir, "*.log"))
	twoRunners, lines := 0, 0
	var violations []string
	for _, f := range logs {
		fh, err := os.Open(f)
		if err != nil {
			return err
		}
		rep, err := countercheck.Check(fh, math.MaxInt64)
		fh.Close()
		if err != nil {
			violations = append(violations, fmt.Sprintf("%s: %v", filepath.Base(f), err))
			continue
		}
		lines += rep.Lines
		for _, v := range rep.Violations {
			if strings.Contains(v, "two runners") {
				twoRunners++
			}
			violations = append(violations, filepath.Base(f)+": "+v)
		}
	}
	b.rep.set("exec_log_lines", lines)
	b.rep.set("exec_log_two_runners", twoRunners)
	if len(violations) > 0 {
		b.rep.set("exec_log_violations", violations[:min(10, len(violations))])
	}
	samp.mu.Lock()
	b.rep.set("exec_duplicates_seen", len(samp.duplicates)+twoRunners)
	samp.mu.Unlock()
	b.rep.set("exec_counter_logs", logDir)

	// Every child must go with its member: none may outlive the phase.
	b.reset(ctx)
	samp.scan()
	samp.mu.Lock()
	var left []int
	for pid, c := range samp.byPID {
		if c.gone.IsZero() {
			left = append(left, pid)
		}
	}
	samp.mu.Unlock()
	b.rep.set("exec_children_left_at_end", len(left))
	for _, pid := range left {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return trialErr
}

// execStart requests execLives counter lives at once and measures until
// each one's child runs, the members' memory per life, and the time until
// every child is gone once the lives are deleted.
func (b *bench) execStart(ctx context.Context, samp *childSampler) error {
	n := b.cfg.execLives
	b.rep.set("exec_lives", n)
	if err := sleepCtx(ctx, b.cfg.settleExtra); err != nil {
		return err
	}
	rss0, err := b.membersRSS()
	if err != nil {
		return err
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%04d", execLivesPfx, i)
	}
	t0 := time.Now()
	for i := 0; i < n; i += 128 { // etcd's default --max-txn-ops
		var ops []clientv3.Op
		for _, name := range names[i:min(i+128, n)] {
			ops = append(ops, clientv3.OpPut(livesPrefix+name, `{"kind":"counter"}`))
		}
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := b.cli.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return err
		}
	}
	err = samp.waitUntil(ctx, b.cfg.placeTimeout+30*time.Second, func() bool {
		for _, name := range names {
			if len(samp.byLife[name]) == 0 {
				return false
			}
		}
		return true
	})
	var startMS []float64
	samp.mu.Lock()
	for _, name := range names {
		if cs := samp.byLife[name]; len(cs) > 0 {
			startMS = append(startMS, ms(cs[0].seen.Sub(t0)))
		}
	}
	samp.mu.Unlock()
	b.rep.set("exec_start_p50_ms", percentile(startMS, 50))
	b.rep.set("exec_start_p99_ms", percentile(startMS, 99))
	b.rep.set("exec_started", len(startMS))
	if err != nil {
		return fmt.Errorf("%d of %d command lives have a child: %w", len(startMS), n, err)
	}
	all := maxOf(startMS) / 1000
	b.rep.set("exec_start_all_s", all)
	b.rep.set("exec_start_per_s", float64(n)/all)

	// Two checkpoint intervals: every state is checkpointed at least once.
	if err := sleepCtx(ctx, 2*time.Second+b.cfg.settleExtra); err != nil {
		return err
	}
	rss1, err := b.membersRSS()
	if err != nil {
		return err
	}
	b.rep.set("exec_member_rss_bytes_before", rss0)
	b.rep.set("exec_member_rss_bytes_after", rss1)
	b.rep.set("exec_rss_bytes_per_life", (rss1-rss0)/float64(n))

	t1 := time.Now()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = b.cli.Delete(dctx, livesPrefix+execLivesPfx, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return err
	}
	err = samp.waitUntil(ctx, 60*time.Second, func() bool {
		for _, name := range names {
			if len(samp.runningLocked(name)) > 0 {
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("children of deleted lives still run: %w", err)
	}
	b.rep.set("exec_stop_all_s", time.Since(t1).Seconds())
	return nil
}

// membersRSS sums the RSS of every alive member's watchdog and member
// process: not their children.
func (b *bench) membersRSS() (float64, error) {
	var sum float64
	for _, m := range b.alive() {
		r, err := treeRSS(m.p.pid)
		if err != nil {
			return 0, err
		}
		sum += float64(r)
	}
	return sum, nil
}

// execTrial is one signal to the holder of the probe life.
type execTrial struct {
	kind           trialKind
	victim         string
	token          int64 // the old child's
	moved          time.Duration
	oldChildLeftMS float64 // how long the old child outlived the signal; -1: it ran on
}

// execTrials signals the holder of a life with execStateBytes of state, as
// the latency phase does its probes, and measures until its new child runs.
func (b *bench) execTrials(ctx context.Context, samp *childSampler, flags func(string) []string) error {
	if _, err := b.cli.Put(ctx, livesPrefix+execProbe, `{"kind":"counter64k"}`); err != nil {
		return err
	}
	b.rep.set("exec_state_bytes", execStateBytes)
	var kinds []trialKind
	for i := range max(b.cfg.execHandoffTrials, b.cfg.execCrashTrials, b.cfg.execFailoverTrials) {
		if i < b.cfg.execHandoffTrials {
			kinds = append(kinds, trialKind{sig: syscall.SIGTERM})
		}
		if i < b.cfg.execCrashTrials {
			kinds = append(kinds, trialKind{sig: syscall.SIGKILL, member: true})
		}
		if i < b.cfg.execFailoverTrials {
			kinds = append(kinds, trialKind{sig: syscall.SIGKILL})
		}
	}
	var trials []execTrial
	var trialErrs []string
	defer func() {
		var handoffMS, crashMS, failoverS []float64
		left := 0
		for _, tr := range trials {
			switch {
			case tr.kind.sig == syscall.SIGTERM:
				handoffMS = append(handoffMS, ms(tr.moved))
			case tr.kind.member:
				crashMS = append(crashMS, ms(tr.moved))
			default:
				failoverS = append(failoverS, tr.moved.Seconds())
			}
			if tr.oldChildLeftMS < 0 {
				left++
			}
		}
		b.rep.set("exec_handoff_p50_ms", percentile(handoffMS, 50))
		b.rep.set("exec_handoff_p99_ms", percentile(handoffMS, 99))
		b.rep.set("exec_handoff_trials", len(handoffMS))
		b.rep.set("exec_member_crash_p50_ms", percentile(crashMS, 50))
		b.rep.set("exec_member_crash_p99_ms", percentile(crashMS, 99))
		b.rep.set("exec_member_crash_trials", len(crashMS))
		b.rep.set("exec_failover_p50_s", percentile(failoverS, 50))
		b.rep.set("exec_failover_p99_s", percentile(failoverS, 99))
		b.rep.set("exec_failover_trials", len(failoverS))
		b.rep.set("exec_old_child_left", left)
		if len(trialErrs) > 0 {
			b.rep.set("exec_trial_errors", trialErrs)
		}
		b.execLosses(trials)
	}()
	for i, kind := range kinds {
		tr, err := b.execTrial(ctx, samp, kind, flags)
		if tr.moved > 0 {
			trials = append(trials, tr)
			fmt.Fprintf(logw, "  exec trial %d: %s of %s (token %d): the new child ran after %s\n", i, kind, tr.victim, tr.token, tr.moved.Round(time.Millisecond))
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			trialErrs = append(trialErrs, fmt.Sprintf("trial %d (%s): %v", i, kind, err))
			fmt.Fprintf(logw, "  exec trial %d (%s) failed: %v\n", i, kind, err)
		}
	}
	return nil
}

// execTrial waits until the probe's child has run a while on a member that
// has not just started, signals that member as kind says, waits until a
// child of a newer token runs, and brings the member back.
func (b *bench) execTrial(ctx context.Context, samp *childSampler, kind trialKind, flags func(string) []string) (execTrial, error) {
	tr := execTrial{kind: kind}
	quiet := max(b.cfg.settleQuiet, 2500*time.Millisecond) // placement moves a life a second or two after a member joins
	var cur child
	err := samp.waitUntil(ctx, 60*time.Second, func() bool {
		b.mu.Lock()
		started := b.lastStarted
		b.mu.Unlock()
		rs := samp.runningLocked(execProbe)
		if len(rs) != 1 || rs[0].member == "" || time.Since(rs[0].seen) < quiet || time.Since(started) < quiet {
			return false
		}
		cur = *rs[0]
		return true
	})
	if err != nil {
		return tr, fmt.Errorf("the probe's child did not settle: %w", err)
	}
	b.mu.Lock()
	m := b.members[cur.member]
	b.mu.Unlock()
	if m == nil || m.p.exited() {
		return tr, fmt.Errorf("the probe's child runs on %q, not an alive member", cur.member)
	}
	tr.victim, tr.token = m.id, cur.token
	if kind.sig == syscall.SIGKILL {
		// The wait above ends at a fixed point of the member's checkpoint
		// cycle (its child started a fixed time after its last one); crashes
		// come at any point (see crashWait).
		if err := sleepCtx(ctx, b.crashWait()); err != nil {
			return tr, err
		}
	}
	memberPID, err := b.memberPID(ctx, m.id)
	if err != nil {
		return tr, err
	}
	at := time.Now()
	if kind.member {
		err = syscall.Kill(memberPID, syscall.SIGKILL)
	} else {
		err = m.p.signal(kind.sig)
	}
	if err != nil {
		return tr, err
	}
	var next child
	err = samp.waitUntil(ctx, 30*time.Second, func() bool {
		for _, c := range samp.byLife[execProbe] {
			if c.seen.After(at) && c.token > cur.token {
				next = *c
				return true
			}
		}
		return false
	})
	if err != nil {
		return tr, fmt.Errorf("no new child of %s after %s of %s: %w", execProbe, kind, m.id, err)
	}
	tr.moved = next.seen.Sub(at)
	tr.oldChildLeftMS = -1
	if observe.Gone(cur.pid, 2*time.Second) {
		tr.oldChildLeftMS = ms(time.Since(at))
	} else {
		fmt.Fprintf(logw, "  exec: the child %d of %s outlived %s of its member by 2s\n", cur.pid, m.id, kind)
	}
	if kind.member {
		return tr, b.waitRestarted(ctx, m, memberPID)
	}
	if !m.p.wait(20 * time.Second) {
		return tr, fmt.Errorf("%s still runs 20s after %s", m.id, kind)
	}
	if _, err := b.startMember(ctx, m.id, flags(m.id)...); err != nil {
		return tr, fmt.Errorf("restart %s: %w", m.id, err)
	}
	return tr, nil
}

// execLosses reads the probe's log and reports the counts each handoff
// lost: at the handoffs the trials caused, by kind (SIGTERM: the state the
// child wrote as it exited is restored, so none; a crash: up to one
// checkpoint interval of ticks), and at the others (placement's graceful
// moves).
func (b *bench) execLosses(trials []execTrial) {
	path := filepath.Join(b.logDir, "counter", execProbe+".log")
	fh, err := os.Open(path)
	if err != nil {
		return
	}
	defer fh.Close()
	rep, err := countercheck.Check(fh, math.MaxInt64)
	if err != nil {
		b.rep.set("exec_probe_log_error", err.Error())
		return
	}
	byToken := map[int64]trialKind{}
	for _, tr := range trials {
		byToken[tr.token] = tr.kind
	}
	var graceful, crash, other []float64
	for _, h := range rep.Handoffs {
		k, ok := byToken[h.FromToken]
		switch {
		case !ok:
			other = append(other, float64(h.Loss))
		case k.sig == syscall.SIGTERM:
			graceful = append(graceful, float64(h.Loss))
		default:
			crash = append(crash, float64(h.Loss))
		}
	}
	b.rep.set("exec_handoff_loss_ticks_max", maxOf(graceful))
	b.rep.set("exec_crash_loss_ticks_max", maxOf(crash))
	b.rep.set("exec_crash_loss_ticks_p50", percentile(crash, 50))
	b.rep.set("exec_placement_loss_ticks_max", maxOf(other))
	b.rep.set("exec_probe_handoffs", len(rep.Handoffs))
	b.rep.set("exec_tick_ms", ms(execTick))
}
