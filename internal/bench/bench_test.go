package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/registry"
)

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3} // unsorted on purpose
	for _, tc := range []struct {
		p    float64
		want float64
	}{
		{0, 1}, {25, 2}, {50, 3}, {75, 4}, {100, 5},
		{10, 1.4}, {99, 4.96}, {-5, 1}, {150, 5},
	} {
		if got := percentile(xs, tc.p); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("percentile(%v, %v) = %v, want %v", xs, tc.p, got, tc.want)
		}
	}
	if xs[0] != 5 {
		t.Errorf("percentile sorted its input in place: %v", xs)
	}
	if got := percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("percentile(nil) = %v, want NaN", got)
	}
	if got := percentile([]float64{7}, 99); got != 7 {
		t.Errorf("percentile of one sample = %v, want 7", got)
	}
	even := []float64{10, 20, 30, 40}
	if got := percentile(even, 50); got != 25 {
		t.Errorf("median of %v = %v, want 25", even, got)
	}
	if got, want := maxOf(even), 40.0; got != want {
		t.Errorf("maxOf = %v, want %v", got, want)
	}
	if got, want := minOf(even), 10.0; got != want {
		t.Errorf("minOf = %v, want %v", got, want)
	}
	if !math.IsNaN(maxOf(nil)) || !math.IsNaN(minOf(nil)) || !math.IsNaN(mean(nil)) {
		t.Error("maxOf, minOf and mean of nothing must be NaN")
	}
}

func TestReportJSONShape(t *testing.T) {
	r := newReport()
	r.set("mode", "quick")
	r.set("start_p50_ms", 12.34567)
	r.set("failover_p99_s", math.NaN()) // unmeasured: null
	r.set("lives", 10000)
	r.set("extra_list", []string{"a<b", "c"})
	r.set("extra_map", map[string]int{"m1": 3})
	r.set("rss_bytes_per_life", 2048.0)
	r.set("baseline_rss_bytes_per_life", 20480.0)
	r.set("ratio_rss_per_life", ratio(r, "baseline_rss_bytes_per_life", "rss_bytes_per_life"))
	r.set("ratio_failover_p99", ratio(r, "failover_p99_s", "baseline_failover_p99_s"))

	js, err := r.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.ContainsAny(js, "\n\r") {
		t.Fatalf("JSON spans more than one line: %s", js)
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, js)
	}
	for _, k := range requiredKeys {
		if _, ok := m[k]; !ok {
			t.Errorf("required key %q missing", k)
		}
	}
	if m["mode"] != "quick" {
		t.Errorf("mode = %v", m["mode"])
	}
	if m["start_p50_ms"] != 12.346 {
		t.Errorf("start_p50_ms = %v, want rounded to 12.346", m["start_p50_ms"])
	}
	if m["failover_p99_s"] != nil || m["ratio_failover_p99"] != nil {
		t.Errorf("unmeasured figures must be null: %v %v", m["failover_p99_s"], m["ratio_failover_p99"])
	}
	if m["ratio_rss_per_life"] != 10.0 {
		t.Errorf("ratio_rss_per_life = %v, want 10", m["ratio_rss_per_life"])
	}
	if m["lives"] != 10000.0 {
		t.Errorf("lives = %v", m["lives"])
	}
	if !strings.Contains(string(js), `"a<b"`) {
		t.Errorf("HTML escaping is not wanted in the JSON: %s", js)
	}
	// Required keys come first, in their order, then the rest.
	dec := json.NewDecoder(bytes.NewReader(js))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	for i, k := range requiredKeys {
		if keys[i] != k {
			t.Fatalf("key %d = %q, want %q (order %v)", i, keys[i], k, keys)
		}
	}
	if keys[len(keys)-1] != "extra_map" {
		t.Errorf("extra keys out of order: %v", keys)
	}

	var table bytes.Buffer
	r.printTable(&table)
	for _, want := range []string{"start_p50_ms", "12.3 ms", "2048 B (2.0 KiB)", "10.000x", "extra_map"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func TestHuman(t *testing.T) {
	for _, tc := range []struct {
		key  string
		v    any
		want string
	}{
		{"handoff_p50_ms", 3.21, "3.2 ms"},
		{"failover_p99_s", 2.5, "2.500 s"},
		{"cpu_per_1k_lives", 0.01234, "0.0123 cpu-s/s"},
		{"etcd_txn_per_s", 800.0, "800.0 /s"},
		{"mode", "full", "full"},
		{"lives", 100000, "100000"},
		{"anything", nil, "-"},
	} {
		if got := human(tc.key, tc.v); got != tc.want {
			t.Errorf("human(%q, %v) = %q, want %q", tc.key, tc.v, got, tc.want)
		}
	}
}

func TestDelta(t *testing.T) {
	if d := delta(map[string]float64{"a": 1}, map[string]float64{"a": 4}, "a"); d != 3 {
		t.Errorf("delta = %v", d)
	}
	if d := delta(nil, map[string]float64{"a": 4}, "a"); !math.IsNaN(d) {
		t.Errorf("delta of a missing counter = %v, want NaN", d)
	}
}

func TestRecordsAndNames(t *testing.T) {
	v := []byte(`{"life_id":7,"age_ms":1500,"incarnation":2,"holder":"m2","holder_rev":9,"time":"2026-01-02T03:04:05Z"}`)
	if h := holderOf(v); h != "m2" {
		t.Errorf("holderOf = %q", h)
	}
	if h := holderOf([]byte("not json")); h != "" {
		t.Errorf("holderOf(garbage) = %q", h)
	}
	if got := holderCounts(map[string]string{"a": "m1", "b": "m1", "c": "m2"}); got["m1"] != 2 || got["m2"] != 1 {
		t.Errorf("holderCounts = %v", got)
	}
	if bulkName(42) != "b000042" {
		t.Errorf("bulkName(42) = %q", bulkName(42))
	}
	if life, c, gen, ok := parseTag("b17.1.3"); !ok || life != 17 || c != 1 || gen != 3 {
		t.Errorf("parseTag(b17.1.3) = %d %d %d %v", life, c, gen, ok)
	}
	for _, bad := range []string{"", "b17.1", "x17.1.3", "b17.x.3", "b.1.3"} {
		if _, _, _, ok := parseTag(bad); ok {
			t.Errorf("parseTag(%q) accepted", bad)
		}
	}
}

func TestScanMemberLogs(t *testing.T) {
	dir := t.TempDir()
	log := `{"time":"t","level":"INFO","msg":"session opened"}
{"time":"t","level":"WARN","msg":"heartbeats are failing; lives keep running until the lease's safe deadline","err":"x"}
{"time":"t","level":"WARN","msg":"heartbeats are failing; lives keep running until the lease's safe deadline","err":"y"}
panic: boom
{"time":"t","level":"ERROR","msg":"cannot revoke the lease"}
`
	if err := os.WriteFile(filepath.Join(dir, "m1.1.log"), []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etcd.log"), []byte("not a member\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A member of the scale phase.
	slow := `{"time":"t","level":"WARN","msg":"a heartbeat takes longer than the checkpoint interval: etcd is slow, and a crash can lose up to that long","took":"1.2s"}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "s1.1.log"), []byte(slow), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := scanMemberLogs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("findings = %+v, want 4", got)
	}
	if got[0].Msg != "heartbeats are failing; lives keep running until the lease's safe deadline" || got[0].Count != 2 || !strings.HasSuffix(got[0].First, "m1.1.log:2") {
		t.Errorf("first finding = %+v", got[0])
	}
	if got[1].Level != "NOT-JSON" || got[2].Level != "ERROR" {
		t.Errorf("findings = %+v", got)
	}
	if !strings.HasPrefix(got[3].Msg, "a heartbeat takes longer") || !strings.HasSuffix(got[3].First, "s1.1.log:1") {
		t.Errorf("the scale member's finding = %+v", got[3])
	}
}

func TestDefaults(t *testing.T) {
	q, f := defaults(true), defaults(false)
	if !q.quick || q.lives != 10000 || q.baselineLives != 100 {
		t.Errorf("quick defaults: %+v", q)
	}
	if f.quick || f.lives != 100000 || f.baselineLives != 1000 {
		t.Errorf("full defaults: %+v", f)
	}
}

func TestOptionsConfig(t *testing.T) {
	q := defaults(true)
	c := Options{Quick: true, LeaseTTL: "3s", Lives: 500, BaselineLives: 7, Budget: q.budget / 2}.config()
	if c.lives != 500 || c.baselineLives != 7 || !c.baselineLivesForced || c.leaseTTL != "3s" {
		t.Errorf("config = %+v", c)
	}
	if c.budget != q.budget/2 || c.latencyBudget != q.latencyBudget/2 || c.scaleBudget != q.scaleBudget/2 {
		t.Errorf("a budget of half the default halves each phase's: %v %v %v", c.budget, c.latencyBudget, c.scaleBudget)
	}
	if d := (Options{}).config(); d.lives != defaults(false).lives || d.baselineLivesForced || d.budget != defaults(false).budget {
		t.Errorf("no options: %+v, want the full run's defaults", d)
	}
}

// ageEvents builds the watch events of a handoff: m1 starts life x on lease
// 0xa, beats twice (the second its final heartbeat at SIGTERM), and m2
// resumes x on lease 0xb at resumeMS.
func ageEvents(t *testing.T, resumeMS int64) (evs []*clientv3.Event, t0 time.Time) {
	t.Helper()
	t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rev := int64(10)
	put := func(key string, val []byte) {
		rev++
		evs = append(evs, &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: val, ModRevision: rev}})
	}
	rec := registry.AgeRecord{LifeID: 7, AgeMS: 0, Incarnation: 1, Holder: "m1", HolderRev: 9, Time: t0, Lease: 0xa, ClockMS: 1000}
	put(keys.Age("x"), rec.Marshal())
	put(keys.Heartbeat(0xa), registry.Heartbeat{Member: "m1", ClockMS: 2000, Time: t0.Add(time.Second)}.Marshal())
	put(keys.Candidacy("x", 0xb), []byte("m2")) // not an age: ignored
	put(keys.Heartbeat(0xa), registry.Heartbeat{Member: "m1", ClockMS: 2500, Time: t0.Add(1500 * time.Millisecond)}.Marshal())
	next := registry.AgeRecord{LifeID: 7, AgeMS: resumeMS, Incarnation: 2, Holder: "m2", HolderRev: 20, Time: t0.Add(1520 * time.Millisecond), Lease: 0xb, ClockMS: 300}
	put(keys.Age("x"), next.Marshal())
	// m2's heartbeat carries it on.
	put(keys.Heartbeat(0xb), registry.Heartbeat{Member: "m2", ClockMS: 1300, Time: t0.Add(2520 * time.Millisecond)}.Marshal())
	return evs, t0
}

func TestAgeLogEffectiveAges(t *testing.T) {
	evs, t0 := ageEvents(t, 1500)
	l := &ageLog{view: registry.NewAgeView(keys), hist: make(map[string][]obs), notify: make(chan struct{})}
	for _, ev := range evs {
		l.addLocked(ev, t0)
	}
	h := l.hist["x"]
	if len(h) != 5 {
		t.Fatalf("history of x has %d entries, want 5 (2 records, 3 heartbeats): %+v", len(h), h)
	}
	// What killTrial takes: the victim's last effective age before the new
	// holder's first record, and that record as written.
	final, first := h[2], h[3]
	if !final.beat || final.rec.Holder != "m1" || final.rec.AgeMS != 1500 || !final.rec.Time.Equal(t0.Add(1500*time.Millisecond)) {
		t.Errorf("final = %+v, want m1's record carried to 1500 ms by its last heartbeat", final)
	}
	if first.beat || first.rec.Holder != "m2" || first.rec.AgeMS != 1500 {
		t.Errorf("new holder's first = %+v", first)
	}
	if gap := first.rec.Time.Sub(final.rec.Time); gap != 20*time.Millisecond {
		t.Errorf("graceful gap = %s, want 20ms", gap)
	}
	if got := h[4]; !got.beat || got.rec.AgeMS != 2500 {
		t.Errorf("m2's heartbeat carried x to %+v, want 2500 ms", got)
	}
	if len(l.decreases) != 0 || l.badRecords != 0 {
		t.Errorf("decreases %v, bad %d", l.decreases, l.badRecords)
	}
	if o, ok := l.holdersLocked([]string{"x"})["x"]; !ok || o.rec.Holder != "m2" {
		t.Errorf("holder of x = %+v", o)
	}

	// Resumed below the final heartbeat's age: a decrease.
	evs, _ = ageEvents(t, 1200)
	l = &ageLog{view: registry.NewAgeView(keys), hist: make(map[string][]obs), notify: make(chan struct{})}
	for _, ev := range evs {
		l.addLocked(ev, t0)
	}
	if len(l.decreases) != 1 {
		t.Errorf("decreases = %v, want one", l.decreases)
	}
}

func TestTrackerLostAge(t *testing.T) {
	for _, tc := range []struct {
		resume   int64
		wantLost float64
	}{{1500, 0}, {1200, 300}, {1700, 0}} {
		evs, _ := ageEvents(t, tc.resume)
		tr := &tracker{view: registry.NewAgeView(keys), last: make(map[string]registry.AgeRecord), moved: make(map[string]int)}
		for _, ev := range evs {
			tr.add(ev)
		}
		mv := tr.moveStats()
		if mv.moves != 1 || mv.lostMax != tc.wantLost {
			t.Errorf("resumed at %d: moves %d, lost %v; want 1, %v", tc.resume, mv.moves, mv.lostMax, tc.wantLost)
		}
		if h := tr.holders(); h["m2"] != 1 || len(h) != 1 {
			t.Errorf("holders = %v", h)
		}
	}
	// A record written again from its start (a repair) carries to the
	// same age: not a decrease.
	evs, _ := ageEvents(t, 1500)
	tr := &tracker{view: registry.NewAgeView(keys), last: make(map[string]registry.AgeRecord), moved: make(map[string]int)}
	for _, ev := range evs {
		tr.add(ev)
	}
	tr.add(&clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: evs[4].Kv.Key, Value: evs[4].Kv.Value, ModRevision: 99}})
	if tr.decreased != 0 || tr.moves != 1 {
		t.Errorf("repair counted: decreased %d %v, moves %d", tr.decreased, tr.decreases, tr.moves)
	}
}

// The exec phase is full-only: its bars are checked by a full run and by a
// quick one that names it in -only, and by no other quick run.
func TestExecBars(t *testing.T) {
	has := func(cfg config) bool {
		for _, b := range bars(cfg) {
			if b.key == "exec_duplicates_seen" {
				return true
			}
		}
		return false
	}
	full, quick := defaults(false), defaults(true)
	onlyExec := quick
	onlyExec.only = "latency,exec"
	onlyOther := full
	onlyOther.only = "latency"
	for _, tc := range []struct {
		name string
		cfg  config
		want bool
	}{{"full", full, true}, {"quick", quick, false}, {"quick -only latency,exec", onlyExec, true}, {"full -only latency", onlyOther, false}} {
		if got := has(tc.cfg); got != tc.want {
			t.Errorf("%s: exec bars %v, want %v", tc.name, got, tc.want)
		}
		if got := tc.cfg.runs("exec", true); got != tc.want {
			t.Errorf("%s: runs exec %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The exec phase's config file declares its kinds as a member reads them.
func TestExecKinds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kinds.yaml")
	if err := os.WriteFile(path, []byte(execKinds(os.Args[0], "/tmp/logs")), 0o644); err != nil {
		t.Fatal(err)
	}
	kinds, err := daemon.LoadKinds(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := daemon.New(daemon.Config{ID: "m1", Kinds: kinds, StateDir: t.TempDir()}); err != nil {
		t.Fatalf("a member refuses the exec phase's kinds: %v", err)
	}
	c, ok := kinds["counter64k"]
	if !ok || len(kinds) != 2 || !slices.Contains(c.Command, "--pad") || !slices.Contains(c.Command, "65536") || c.Command[0] != os.Args[0] {
		t.Errorf("kinds = %+v", kinds)
	}
}
