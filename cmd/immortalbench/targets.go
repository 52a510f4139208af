package main

import (
	"fmt"
	"io"
	"time"
)

// bar is one target a figure must meet.
type bar struct {
	key   string
	op    string // "<", "<=" or ">="
	limit float64
	what  string
}

// bars returns the targets of a run. A full run must show the project's
// targets. A quick run is CI's regression check on a noisy shared machine:
// the same bars where a figure does not depend on timing noise, and the
// latency bars with slack (each relaxed bar names its full-run target).
func bars(cfg config) []bar {
	ttl, err := time.ParseDuration(cfg.leaseTTL)
	if err != nil {
		ttl = 2 * time.Second
	}
	t := ttl.Seconds()
	n := float64(cfg.scaleLives)
	common := []bar{
		{"age_loss_graceful_ms", "<", 50, "graceful handoff loses under 50 ms"},
		{"age_loss_crash_ms", "<=", 1100, "a crash loses at most one checkpoint interval (1 s) and the checkpoint's Txn time"},
		{"member_rss_bytes_max", "<", 1 << 30, "each member under 1 GiB RSS"},
		{"etcd_txn_per_s", "<", 10000, "checkpoint load far under one Txn per life per second"},
		{"ratio_rss_per_life", ">=", 100, "at least 100x less memory per life than the baseline"},
		{"scaleout_2_to_4_s", "<=", 30, "scale-out 2 -> 4: every member within 10% of its share within 30 s"},
		{"scaleout_2_to_4_moves", "<=", 0.6 * n, "scale-out moves close to the minimum (about half the lives)"},
		{"scaleout_2_to_4_lives_moved_twice", "<=", 0, "no flapping: no life moves twice"},
		{"scaleout_2_to_4_age_lost_ms_max", "<=", 0, "no age lost in the scale-out handoffs"},
	}
	if !cfg.quick {
		return append(common,
			bar{"handoff_p99_ms", "<", 20, "handoff p99 under 20 ms"},
			bar{"handoff_one_member_ms", "<", 1000, "10k lives handed off gracefully within 1 s"},
			bar{"failover_p99_s", "<=", t + 0.5, "failover p99 at most TTL + 0.5 s"},
			bar{"place_all_s", "<=", 30, "100k lives over 3 members running within 30 s"},
			bar{"failover_all_s", "<=", t + 10, "SIGKILL of a member: all its lives elsewhere within TTL + 10 s"},
			bar{"ratio_failover_p99", "<=", 1, "failover no slower than the baseline"},
			bar{"checkpoint_interval_effective_s", "<=", 1.1, "at 100k lives every life is still checkpointed each 1 s interval"},
		)
	}
	return append(common,
		bar{"handoff_p99_ms", "<", 40, "handoff p99 (full-run target 20 ms)"},
		bar{"handoff_one_member_ms", "<", 2000, "10k lives handed off (full-run target 1 s)"},
		bar{"failover_p99_s", "<=", t + 1, "failover p99 (full-run target TTL + 0.5 s)"},
		bar{"place_all_s", "<=", 10, "10k lives over 3 members running within 10 s"},
		bar{"failover_all_s", "<=", t + 10, "SIGKILL of a member: all its lives elsewhere within TTL + 10 s"},
		bar{"ratio_failover_p99", "<=", 1.5, "failover not slower than the baseline (full-run target 1; 4 samples here)"},
		bar{"checkpoint_interval_effective_s", "<=", 1.5, "10k lives checkpointed about every 1 s interval"},
	)
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
