package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// requiredKeys are the figures every run reports, in this order, null when
// a figure could not be measured. Everything else a run learns follows them.
var requiredKeys = []string{
	"mode",
	"start_p50_ms", "start_p99_ms",
	"handoff_p50_ms", "handoff_p99_ms",
	"failover_p50_s", "failover_p99_s",
	"age_loss_graceful_ms", "age_loss_crash_ms",
	"lives", "place_all_s", "failover_all_s", "handoff_all_ms",
	"rss_bytes_per_life", "cpu_per_1k_lives", "etcd_txn_per_s",
	"baseline_lives",
	"baseline_start_p50_ms", "baseline_failover_p50_s", "baseline_failover_p99_s",
	"baseline_rss_bytes_per_life", "baseline_cpu_per_1k_lives",
	"ratio_rss_per_life", "ratio_failover_p99",
	"cores", "cpu_model", "mem_total_bytes", "date", "go_version", "etcd_version", "immortald_version", "command_line",
}

// tableSections group the figures of the human table. Keys not named here
// are printed under "details".
var tableSections = []struct {
	title string
	keys  []string
}{
	{"immortald (3 members, real processes, lease TTL 2s)", []string{
		"start_p50_ms", "start_p99_ms", "handoff_p50_ms", "handoff_p99_ms",
		"failover_p50_s", "failover_p99_s", "failover_revoke_p50_s", "failover_after_revoke_p50_ms", "failover_after_revoke_p99_ms",
		"age_loss_graceful_ms", "age_loss_crash_ms",
		"member_crash_p50_ms", "member_crash_p99_ms", "member_crash_max_ms", "member_crash_trials", "member_crash_samples",
		"age_loss_member_crash_ms", "top_kill_members_left", "member_crash_one_member_ms",
		"lives", "place_all_s", "failover_all_s", "handoff_all_ms",
		"rss_bytes_per_life", "cpu_per_1k_lives", "etcd_txn_per_s",
	}},
	{"command lives (exec phase: the counter kind, cmd/counter, ticking every 100 ms; 3 members)", []string{
		"exec_lives", "exec_start_all_s", "exec_start_per_s", "exec_start_p50_ms", "exec_start_p99_ms", "exec_stop_all_s",
		"exec_rss_bytes_per_life", "exec_state_bytes",
		"exec_handoff_p50_ms", "exec_handoff_p99_ms", "exec_handoff_trials", "exec_handoff_loss_ticks_max",
		"exec_member_crash_p50_ms", "exec_member_crash_p99_ms", "exec_member_crash_trials",
		"exec_failover_p50_s", "exec_failover_p99_s", "exec_failover_trials", "exec_crash_loss_ticks_max",
		"exec_duplicates_seen", "exec_old_child_left",
	}},
	{"baseline (etcdctl lock --ttl 2 per life, 2 contenders)", []string{
		"baseline_lives", "baseline_start_p50_ms", "baseline_failover_p50_s", "baseline_failover_p99_s",
		"baseline_failover_revoke_p50_s", "baseline_failover_after_revoke_p50_ms", "baseline_failover_after_revoke_p99_ms",
		"baseline_rss_bytes_per_life", "baseline_cpu_per_1k_lives", "baseline_dup_trials", "baseline_duplicates",
	}},
	{"ratios", []string{"ratio_rss_per_life", "ratio_failover_p99", "ratio_failover_p50", "ratio_handoff_to_place_one_member"}},
	{"machine", []string{"mode", "cores", "cpu_model", "mem_total_bytes", "date", "go_version", "etcd_version", "immortald_version", "command_line"}},
}

// report holds the figures of a run in the order they were first set.
type report struct {
	keys []string
	vals map[string]any
	// prefix is put before every key set (a phase that runs another's
	// code at another scale: scale1m_).
	prefix string
}

func newReport() *report {
	r := &report{vals: make(map[string]any)}
	for _, k := range requiredKeys {
		r.set(k, nil)
	}
	return r
}

// set records a figure. A NaN or infinite float is stored as null.
func (r *report) set(key string, v any) {
	key = r.prefix + key
	if _, ok := r.vals[key]; !ok {
		r.keys = append(r.keys, key)
	}
	if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
		v = nil
	}
	r.vals[key] = v
}

// float returns a figure as a float64, if it is a number.
func (r *report) float(key string) (float64, bool) {
	switch v := r.vals[key].(type) {
	case float64:
		return v, true
	case int:
		return float64(v), true
	case int64:
		return float64(v), true
	}
	return 0, false
}

// JSON encodes the report as one line: a JSON object with its keys in order.
func (r *report) JSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range r.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		vb, err := encodeValue(r.vals[k])
		if err != nil {
			return nil, fmt.Errorf("figure %s: %w", k, err)
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// encodeValue writes floats rounded to 3 decimals, and everything else as
// encoding/json does, on one line.
func encodeValue(v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return []byte("null"), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return []byte("null"), nil
		}
		return []byte(strconv.FormatFloat(round(x, 3), 'f', -1, 64)), nil
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// printTable writes the human table.
func (r *report) printTable(w io.Writer) {
	named := make(map[string]bool)
	for _, s := range tableSections {
		fmt.Fprintf(w, "\n== %s\n", s.title)
		for _, k := range s.keys {
			named[k] = true
			fmt.Fprintf(w, "  %-34s %s\n", k, human(k, r.vals[k]))
		}
	}
	fmt.Fprintf(w, "\n== details\n")
	for _, k := range r.keys {
		if named[k] {
			continue
		}
		fmt.Fprintf(w, "  %-34s %s\n", k, human(k, r.vals[k]))
	}
}

// human formats one figure for the table, with its unit.
func human(key string, v any) string {
	if v == nil {
		return "-"
	}
	f, isNum := v.(float64)
	if i, ok := v.(int); ok {
		f, isNum = float64(i), true
	}
	if i, ok := v.(int64); ok {
		f, isNum = float64(i), true
	}
	if !isNum {
		b, err := encodeValue(v)
		if err != nil {
			return fmt.Sprint(v)
		}
		s := string(b)
		if str, ok := v.(string); ok {
			s = str
		}
		if len(s) > 200 {
			s = s[:200] + "..."
		}
		return s
	}
	switch {
	case strings.HasSuffix(key, "_per_s"):
		return fmt.Sprintf("%.1f /s", f)
	case strings.HasSuffix(key, "_ms"):
		return fmt.Sprintf("%.1f ms", f)
	case strings.HasSuffix(key, "_s"):
		return fmt.Sprintf("%.3f s", f)
	case strings.Contains(key, "bytes"):
		return fmt.Sprintf("%.0f B (%s)", f, iec(f))
	case strings.Contains(key, "cpu_per_1k") || strings.HasSuffix(key, "cpu_cores"):
		return fmt.Sprintf("%.4f cpu-s/s", f)
	case strings.HasPrefix(key, "ratio_"):
		return fmt.Sprintf("%.3fx", f)
	}
	return strconv.FormatFloat(round(f, 3), 'f', -1, 64)
}

func iec(f float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for math.Abs(f) >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// ratio returns a/b, or NaN when either is missing or b is zero.
func ratio(r *report, a, b string) float64 {
	x, ok1 := r.float(a)
	y, ok2 := r.float(b)
	if !ok1 || !ok2 || y == 0 {
		return math.NaN()
	}
	return x / y
}
