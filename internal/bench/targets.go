package bench

import (
	"fmt"
	"io"
)

// bar is one target a figure must meet.
type bar struct {
	key   string
	op    string // "<", "<=" or ">="
	limit float64
	what  string
}

// bars returns the targets of a run. A full run must show the project's
// targets. A quick run is CI's regression check on a noisy shared machine,
// with 10k lives in the bulk phase: the same bars where a figure does not
// depend on timing noise, the latency bars with slack, and bars for its own
// scale. Where the two differ, a quick bar names the full run's. A quick
// latency bar is there to catch a change of the protocol's shape (a handoff
// that waits for a lease, a start that waits a round): on a loaded 2-core
// machine one run's times vary by 3x, so the claims are held by the full
// run's bars and by ratios within one run (ratio_*), whose load cancels.
func bars(cfg config) []bar {
	t := cfg.ttl().Seconds()
	n := float64(cfg.scaleLives)
	type row struct {
		key         string
		op          string
		full, quick float64
		what        string
	}
	rows := []row{
		{"age_loss_graceful_ms", "<", 50, 50, "graceful handoff loses under 50 ms"},
		{"age_loss_crash_ms", "<=", 1100, 1100, "a crash loses at most one checkpoint interval (1 s) and the heartbeat's Txn time"},
		{"age_decreases_seen", "<=", 0, 0, "age never goes backwards (latency phase, ages as etcd shows them)"},
		{"scale_age_decreases_seen", "<=", 0, 0, "age never goes backwards (scale phase: SIGTERM of 10k lives, scale-out)"},
		{"member_rss_bytes_max", "<", 1 << 30, 1 << 30, "each member under 1 GiB RSS"},
		{"etcd_txn_per_s", "<", 10000, 10000, "steady-state etcd load far under one Txn per life per second"},
		{"ratio_rss_per_life", ">=", 100, 100, "at least 100x less memory per life than the baseline"},
		{"scaleout_2_to_4_s", "<=", 30, 30, "scale-out 2 -> 4: every member within 10% of its share within 30 s"},
		{"scaleout_2_to_4_moves", "<=", 0.6 * n, 0.6 * n, "scale-out moves close to the minimum (about half the lives)"},
		{"scaleout_2_to_4_lives_moved_twice", "<=", 0, 0, "no flapping: no life moves twice"},
		{"scaleout_2_to_4_age_lost_ms_max", "<=", 0, 0, "no age lost in the scale-out handoffs"},
		{"handoff_p99_ms", "<", 20, 100, "handoff p99 under 20 ms"},
		{"handoff_one_member_ms", "<", 1000, 5000, "10k lives handed off gracefully within 1 s"},
		{"ratio_handoff_to_place_one_member", "<=", 1.5, 2, "handing 10k lives from one member to a peer takes no longer than 1.5x placing them on one member, in the same run (the same first fenced write of each life, so machine load cancels out)"},
		{"failover_p99_s", "<=", t + 0.25, t + 1, "failover p99 at most TTL + 0.25 s (etcd's own revoke comes up to 0.5 s after the expiry; the members' comes within a poll)"},
		{"place_all_s", "<=", 30, 10, "the bulk phase's lives (100k; 10k quick) over 3 members running within 30 s"},
		{"failover_all_s", "<=", t + 10, t + 10, "SIGKILL of a member: all its lives elsewhere within TTL + 10 s"},
		{"ratio_failover_p99", "<=", 0.95, 1.2, "failover p99 at most 0.95x the baseline's, in the same run (a quick run has 2 trials)"},
		{"ratio_failover_p50", "<=", 0.95, 1.5, "failover p50 at most 0.95x the baseline's, in the same run (a quick run has 2 trials)"},
		{"member_crash_p50_ms", "<", 40, 100, "SIGKILL of a member process: its lives run on a peer (the watchdog revokes the lease), p50 under 40 ms"},
		{"member_crash_p99_ms", "<", 100, 500, "SIGKILL of a member process: p99 under 100 ms"},
		{"member_crash_trials", ">=", 100, 1, "at least 100 trials of SIGKILL of a member process"},
		{"age_loss_member_crash_ms", "<=", 1100, 1100, "SIGKILL of a member process loses at most one checkpoint interval (1 s) and the heartbeat's Txn time"},
		{"top_kill_members_left", "<=", 0, 0, "SIGKILL of the top-level process: no member process left"},
		{"member_crash_one_member_ms", "<", 3000, 5000, "SIGKILL of the member process holding 10k lives: all run on its peer within 3 s"},
		{"checkpoint_interval_effective_s", "<=", 1.1, 1.5, "at the bulk phase's scale every life is still checkpointed each 1 s interval: the worst member's mean interval between applied heartbeats"},
	}
	// The exec phase is full-only: a quick run checks its bars only when
	// -only names it.
	if cfg.runs("exec", true) {
		rows = append(rows, []row{
			{"exec_duplicates_seen", "<=", 0, 0, "command lives: never two children of one life at once (/proc every 10 ms), never a line of an older token after a newer one in a child's log"},
			{"exec_old_child_left", "<=", 0, 0, "command lives: the old holder's child is gone within 2 s of SIGTERM or SIGKILL of its member"},
		}...)
	}
	out := make([]bar, 0, len(rows))
	for _, r := range rows {
		b := bar{key: r.key, op: r.op, limit: r.full, what: r.what}
		if cfg.quick && r.quick != r.full {
			b.limit = r.quick
			b.what += fmt.Sprintf("; full-run bar %s %g", r.op, r.full)
		}
		out = append(out, b)
	}
	return out
}

// checkBars prints every bar with its figure and returns the ones missed. A
// missing figure misses its bar, unless only some phases ran (only).
func checkBars(w io.Writer, r *report, bs []bar, only bool) (failed []string) {
	fmt.Fprintln(w, "\n== targets")
	for _, b := range bs {
		v, ok := r.float(b.key)
		pass := ok
		if ok {
			switch b.op {
			case "<":
				pass = v < b.limit
			case "<=":
				pass = v <= b.limit
			case ">=":
				pass = v >= b.limit
			}
		}
		mark, val := "ok  ", "missing"
		if ok {
			val = fmt.Sprintf("%g", round(v, 3))
		}
		if !ok && only {
			fmt.Fprintf(w, "  skip %-36s %12s  (its phase was not run)\n", b.key, val)
			continue
		}
		if !pass {
			mark = "FAIL"
			failed = append(failed, fmt.Sprintf("%s = %s, want %s %g", b.key, val, b.op, b.limit))
		}
		fmt.Fprintf(w, "  %s %-36s %12s  (%s %g: %s)\n", mark, b.key, val, b.op, b.limit, b.what)
	}
	return failed
}
