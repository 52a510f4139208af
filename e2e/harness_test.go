//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/observe"
)

// env is one scenario's cluster and checker.
type env struct {
	t   *testing.T
	c   Cluster
	chk *Checker
	o   Options
}

// setup starts a cluster (three etcd members, no immortald member yet) and
// the invariant checker on its keyspace. A wanted life may go without a
// checkpoint for TTL + one interval + 3 s of slack for this 2-core machine.
func setup(t *testing.T, opts Options) *env {
	t.Helper()
	start := time.Now()
	c := newCluster(t, opts)
	o := c.Options()
	chk := StartChecker(t, c.Client(), o.Prefix, o.LeaseTTL+o.CheckpointInterval+3*time.Second)
	t.Logf("cluster up in %v (lease TTL %v, checkpoint interval %v)", time.Since(start).Round(time.Millisecond), o.LeaseTTL, o.CheckpointInterval)
	return &env{t: t, c: c, chk: chk, o: o}
}

func (e *env) key(section, name string) string { return e.o.Prefix + section + "/" + name }

// addMembers starts n immortald members and waits until they are ready.
func (e *env) addMembers(n int) []string {
	e.t.Helper()
	ids, err := e.c.AddMembers(ctxT(3*time.Minute), n)
	must(e.t, err)
	waitReady(e.t, e.c, 60*time.Second, ids...)
	e.chk.Note("members %v ready", ids)
	return ids
}

// etcdctl runs etcdctl as a user would and fails the test on error.
func (e *env) etcdctl(args ...string) string {
	e.t.Helper()
	res, err := e.c.Etcdctl(ctxT(30*time.Second), args...)
	must(e.t, err)
	return res.Stdout
}

// putLives requests lives through the test's client, in a few Txns.
func (e *env) putLives(names []string) {
	e.t.Helper()
	for i := 0; i < len(names); i += 100 {
		var ops []clientv3.Op
		for _, n := range names[i:min(i+100, len(names))] {
			ops = append(ops, clientv3.OpPut(e.key("lives", n), ""))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := e.c.Client().Txn(ctx).Then(ops...).Commit()
		cancel()
		must(e.t, err)
	}
	e.chk.Note("requested %d lives", len(names))
}

// stopHolder stops the member holding name gracefully (docker stop; kubectl
// delete pod on kind) and waits until the life runs elsewhere, within 5 s and
// 500 ms of age lost; the new holder must log the spawn. It returns the
// handoff, its figures and how long the stop took.
func (e *env) stopHolder(name, holder string) (h Handoff, fo, loss stats, took time.Duration) {
	e.t.Helper()
	at := time.Now()
	must(e.t, e.c.Stop(ctxT(2*time.Minute), holder))
	took = time.Since(at)
	hs := e.chk.WaitHandoffs(e.t, []string{name}, at, 60*time.Second)
	fo, loss = e.handoffStats(hs, holder, 5*time.Second, 500*time.Millisecond)
	logs, err := e.c.Logs(ctxT(30*time.Second), hs[0].New.Holder)
	must(e.t, err)
	if want := "New life spawned: " + name; !strings.Contains(logs, want) {
		e.t.Errorf("log of %s does not say %q", hs[0].New.Holder, want)
	}
	return hs[0], fo, loss, took
}

// runLives requests n lives named prefix000... and waits until they run
// and have settled on their members.
func (e *env) runLives(prefix string, n int) []string {
	e.t.Helper()
	names := lifeNames(prefix, n)
	e.putLives(names)
	e.chk.WaitRunning(e.t, names, time.Time{}, 90*time.Second)
	e.settle(names, 2*time.Minute)
	return names
}

// settle waits until every life runs, has a standby candidate (when there
// are two members or more) and no life has changed holder for two seconds:
// placement (which moves lives to their preferred members by graceful
// handoffs) is done, and a failure now has a standby to fail over to.
func (e *env) settle(names []string, timeout time.Duration) {
	e.t.Helper()
	var last string
	var since time.Time
	fresh := 2*e.o.CheckpointInterval + 500*time.Millisecond
	waitFor(e.t, timeout, fmt.Sprintf("%d lives to settle", len(names)), func() (bool, string) {
		standbys := min(2, len(e.chk.Members()))
		var b strings.Builder
		for _, n := range names {
			if _, ok := e.chk.Running(n, time.Now().Add(-fresh)); !ok {
				return false, n + " is not running"
			}
			cands := e.chk.Candidates(n)
			if len(cands) < standbys {
				return false, fmt.Sprintf("%s has %d candidates", n, len(cands))
			}
			fmt.Fprintf(&b, "%s=%s;", n, cands[0].Key)
		}
		if b.String() != last {
			last, since = b.String(), time.Now()
			return false, "holders still moving"
		}
		return time.Since(since) >= 2*time.Second, "holders still moving"
	})
	e.chk.Note("%d lives settled", len(names))
}

// mostLoaded returns the member that holds the most lives, and those lives.
func (e *env) mostLoaded(ids []string) (string, []string) {
	var best string
	var held []string
	for _, id := range ids {
		if h := e.chk.HeldBy(id); best == "" || len(h) > len(held) {
			best, held = id, h
		}
	}
	return best, held
}

// livesHeld reads immortald_lives_held from a member's /metrics: the lives
// it runs by its own account. found is false when the metric is missing.
func (e *env) livesHeld(id string) (n int, found bool, err error) {
	v, found, err := e.metric(id, "immortald_lives_held")
	return int(v), found, err
}

// metric reads one unlabelled metric from a member's /metrics. found is
// false when the metric is missing.
func (e *env) metric(id, name string) (v float64, found bool, err error) {
	page, err := e.c.Metrics(ctxT(10*time.Second), id)
	if err != nil {
		return 0, false, err
	}
	m, err := observe.ParseMetrics(strings.NewReader(page))
	v, found = m[name]
	return v, found, err
}

// waitExactlyOnce waits until every life runs exactly once: each member's
// own count of the lives it runs (immortald_lives_held) equals the lives
// its election keys hold in etcd, and they add up to every life. A member
// that still ran a life it lost would count one too many.
func (e *env) waitExactlyOnce(names []string, ids []string, timeout time.Duration) {
	e.t.Helper()
	missing := false
	waitFor(e.t, timeout, fmt.Sprintf("%d lives to run exactly once on %v", len(names), ids), func() (bool, string) {
		total := 0
		var st []string
		for _, id := range ids {
			n, found, err := e.livesHeld(id)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", id, err)
			}
			if !found {
				missing = true
				return true, ""
			}
			want := len(e.chk.HeldBy(id))
			st = append(st, fmt.Sprintf("%s runs %d, holds %d", id, n, want))
			if n != want {
				return false, strings.Join(st, "; ")
			}
			total += n
		}
		if total != len(names) {
			return false, fmt.Sprintf("%d lives run in all, want %d: %s", total, len(names), strings.Join(st, "; "))
		}
		return true, ""
	})
	if missing {
		e.t.Logf("no immortald_lives_held in /metrics: exactly-once not checked from the members' side")
	}
}

// waitAge waits until every life is at least age old by its effective
// checkpoints (records carried forward by their holders' heartbeats).
func (e *env) waitAge(names []string, age time.Duration) {
	e.t.Helper()
	waitFor(e.t, age+30*time.Second, fmt.Sprintf("lives to be %v old", age), func() (bool, string) {
		for _, n := range names {
			cp, ok := e.chk.Latest(n)
			if !ok || cp.AgeMS < age.Milliseconds() {
				return false, fmt.Sprintf("%s at %d ms", n, cp.AgeMS)
			}
		}
		return true, ""
	})
}

// etcdLeader returns the name of the etcd member that leads now, asking
// every member but those excluded (down).
func (e *env) etcdLeader(exclude ...string) string {
	e.t.Helper()
	var leader string
	waitFor(e.t, 30*time.Second, "an etcd leader", func() (bool, string) {
		var st []string
		for _, name := range e.c.EtcdMembers() {
			if slices.Contains(exclude, name) {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := e.c.Client().Status(ctx, e.c.EtcdEndpoint(name))
			cancel()
			if err != nil {
				st = append(st, name+": "+err.Error())
				continue
			}
			if resp.Leader != 0 && resp.Leader == resp.Header.MemberId {
				leader = name
				return true, ""
			}
			st = append(st, fmt.Sprintf("%s: leader %x", name, resp.Leader))
		}
		return false, strings.Join(st, "; ")
	})
	return leader
}

// handoffStats checks and summarizes handoffs: none may take longer than
// maxFailover or lose more age than maxLoss, and each must move the life off
// from.
func (e *env) handoffStats(hs []Handoff, from string, maxFailover, maxLoss time.Duration) (fo, loss stats) {
	e.t.Helper()
	var fos, losses []int64
	for _, h := range hs {
		if h.New.Holder == from && from != "" {
			e.t.Errorf("%s: new holder is the old one, %s", h.Name, from)
		}
		if h.Failover > maxFailover {
			e.t.Errorf("%s: failover took %v, over %v (last checkpoint %d ms by %s at %s, next %d ms by %s at %s)",
				h.Name, h.Failover.Round(time.Millisecond), maxFailover, h.Old.AgeMS, h.Old.Holder, h.Old.Time.Format("15:04:05.000"),
				h.New.AgeMS, h.New.Holder, h.New.Time.Format("15:04:05.000"))
		}
		if h.Loss > maxLoss {
			e.t.Errorf("%s: lost %v of age, over %v (last checkpoint %d ms by %s at %s, resumed at %d ms by %s)",
				h.Name, h.Loss, maxLoss, h.Old.AgeMS, h.Old.Holder, h.Old.Time.Format("15:04:05.000"), h.New.AgeMS, h.New.Holder)
		}
		if h.New.AgeMS < h.Old.AgeMS {
			e.t.Errorf("%s: resumed at %d ms, below its last checkpoint %d ms", h.Name, h.New.AgeMS, h.Old.AgeMS)
		}
		fos = append(fos, ms(h.Failover))
		losses = append(losses, max(0, ms(h.Loss)))
	}
	return summarize(fos), summarize(losses)
}

func lifeNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03d", prefix, i)
	}
	return out
}

// parallel runs f for each item at once and returns the first error.
func parallel(items []string, f func(string) error) error {
	errs := make(chan error, len(items))
	for _, it := range items {
		go func() { errs <- f(it) }()
	}
	var first error
	for range items {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// logLine is one line of a member's JSON log (slog's field names).
type logLine struct {
	Time time.Time      `json:"time"`
	Msg  string         `json:"msg"`
	Rest map[string]any `json:"-"`
}

// logLines parses the JSON lines of a member's log; other lines are skipped.
func logLines(logs string) []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b := sc.Bytes()
		if i := bytes.IndexByte(b, '{'); i > 0 {
			b = b[i:] // docker logs --timestamps puts a time first
		}
		var l logLine
		if json.Unmarshal(b, &l) == nil && !l.Time.IsZero() {
			out = append(out, l)
		}
	}
	return out
}

// firstLog returns the first log line after t whose message contains sub.
func firstLog(logs string, after time.Time, sub string) (logLine, bool) {
	for _, l := range logLines(logs) {
		if l.Time.After(after) && strings.Contains(l.Msg, sub) {
			return l, true
		}
	}
	return logLine{}, false
}
