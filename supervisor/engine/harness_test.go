package engine

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

// The engine's tests drive it with events and with answers built as etcd
// gives them (the shapes of the Txns in batch.go): no etcd, no goroutine,
// no timer. The clock is theirs.

var testKeys = func() registry.Keys {
	k, err := registry.NewKeys("/t/")
	if err != nil {
		panic(err)
	}
	return k
}()

// clock is a test's time.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)} }

// recorder keeps the effects the engine asked for, and checks that no two
// Runs of one life name run at once in the member.
type recorder struct {
	t       testing.TB
	wakes   int
	started []*Life
	stops   []*Life
	expired []*Life
	active  map[string]*Life // Runs started and not returned, by name
}

func (r *recorder) Wake() { r.wakes++ }
func (r *recorder) StartWork(l *Life) {
	if o := r.active[l.name]; o != nil && o != l {
		r.t.Fatalf("a Run of %s (incarnation %d) starts while the Run of incarnation %d has not returned", l.name, l.incarnate, o.incarnate)
	}
	r.active[l.name] = l
	r.started = append(r.started, l)
}
func (r *recorder) StopWork(l *Life)               { r.stops = append(r.stops, l) }
func (r *recorder) ExpireWork(l *Life, why string) { r.expired = append(r.expired, l) }

// returned tells the engine that l's Run returned.
func (r *recorder) returned(e *Engine, l *Life) bool {
	delete(r.active, l.name)
	return e.RunReturned(l)
}

// rig is an engine under test: member m1, its clock and its effects.
type rig struct {
	t     testing.TB
	e     *Engine
	clock *clock
	fx    *recorder
	lease int64
	rev   int64 // etcd's revision, as the answers built here tell it
}

// newRig returns an engine of member m1 running the age kind and the kind
// "work" (which has work), with a session on lease 0x10, and the members
// given (m1 first) as live.
func newRig(t testing.TB, members ...string) *rig {
	t.Helper()
	c := newClock()
	fx := &recorder{t: t, active: make(map[string]*Life)}
	e := New(Config{ID: "m1", Keys: testKeys, Candidates: 2, Kinds: map[string]bool{workload.AgeKind: false, "work": true},
		Now: c.now, Epoch: c.t.Add(-time.Hour), Logger: slog.New(slog.DiscardHandler), Effects: fx})
	r := &rig{t: t, e: e, clock: c, fx: fx, lease: 0x10, rev: 100}
	r.members(members...)
	e.OpenSession(r.lease)
	return r
}

// leaseOf is the lease of member id: 0x10 for m1, 0x20 for m2, and so on.
func leaseOf(id string) int64 {
	var n int64
	_, _ = fmt.Sscanf(id, "m%d", &n)
	return n * 0x10
}

func (r *rig) members(ids ...string) {
	ms := make([]registry.Member, len(ids))
	for i, id := range ids {
		ms[i] = registry.Member{ID: id, Lease: leaseOf(id)}
		if id != "m1" {
			ms[i].Kinds = []string{"work"}
		}
	}
	r.e.SetMembers(ms)
}

// put requests a life of kind ("" for age) and returns it.
func (r *rig) put(name, kind string) registry.Life {
	r.rev++
	val := []byte(nil)
	if kind != "" {
		val = []byte(`{"kind":"` + kind + `"}`)
	}
	l := registry.ParseLife(name, r.rev, r.rev, val)
	r.e.Put(l)
	return l
}

// take returns the one non-empty batch ready now (plain first), after
// letting due steps in; nil when none.
func (r *rig) take() *Batch {
	r.e.NextDue()
	p, o := r.e.Take()
	if p != nil && o != nil {
		r.t.Fatalf("two batches at once: %d plain and %d ordered steps", p.Len(), o.Len())
	}
	if p != nil {
		return p
	}
	return o
}

// mustTake is take, failing when nothing is ready or the batch is not of
// the kinds wanted.
func (r *rig) mustTake(kinds ...taskKind) *Batch {
	r.t.Helper()
	b := r.take()
	if b == nil {
		r.t.Fatalf("no step ready, want %v", kinds)
	}
	if len(b.tasks) != len(kinds) {
		r.t.Fatalf("batch of %d steps, want %v", len(b.tasks), kinds)
	}
	for i, t := range b.tasks {
		if t.kind != kinds[i] {
			r.t.Fatalf("step %d is %v, want %v", i, t.kind, kinds[i])
		}
	}
	if r.e.Prepare(b) == nil {
		r.t.Fatal("nothing of the batch applies")
	}
	return b
}

func (k taskKind) String() string {
	return [...]string{"check", "start", "probe", "handoff", "clean"}[k]
}

// answer answers b with one sub-answer per live step.
func (r *rig) answer(b *Batch, subs ...*etcdserverpb.TxnResponse) {
	r.t.Helper()
	r.rev++
	resp := &clientv3.TxnResponse{Header: &etcdserverpb.ResponseHeader{Revision: r.rev}}
	if len(subs) != len(b.live) {
		r.t.Fatalf("%d answers for %d steps", len(subs), len(b.live))
	}
	i := 0
	for _, t := range b.live {
		for range t.at - len(resp.Responses) {
			resp.Responses = append(resp.Responses, txnOp(&etcdserverpb.TxnResponse{Succeeded: true}))
		}
		resp.Responses = append(resp.Responses, txnOp(subs[i]))
		i++
	}
	if b.beatsAt >= 0 {
		for len(resp.Responses) < b.beatsAt {
			resp.Responses = append(resp.Responses, txnOp(&etcdserverpb.TxnResponse{Succeeded: true}))
		}
		resp.Responses = append(resp.Responses, rangeOp())
	}
	r.e.Answer(b, resp, nil)
}

func txnOp(t *etcdserverpb.TxnResponse) *etcdserverpb.ResponseOp {
	return &etcdserverpb.ResponseOp{Response: &etcdserverpb.ResponseOp_ResponseTxn{ResponseTxn: t}}
}

func rangeOp(kvs ...*mvccpb.KeyValue) *etcdserverpb.ResponseOp {
	var ks []*mvccpb.KeyValue
	for _, kv := range kvs {
		if kv != nil {
			ks = append(ks, kv)
		}
	}
	return &etcdserverpb.ResponseOp{Response: &etcdserverpb.ResponseOp_ResponseRange{ResponseRange: &etcdserverpb.RangeResponse{Kvs: ks}}}
}

// sub is a nested Txn's answer: succeeded, and a range answer per group of
// keys (nil: none read).
func sub(ok bool, reads ...*mvccpb.KeyValue) *etcdserverpb.TxnResponse {
	t := &etcdserverpb.TxnResponse{Succeeded: ok}
	for _, kv := range reads {
		t.Responses = append(t.Responses, rangeOp(kv))
	}
	return t
}

// subRanges is sub with whole ranges.
func subRanges(ok bool, ranges ...[]*mvccpb.KeyValue) *etcdserverpb.TxnResponse {
	t := &etcdserverpb.TxnResponse{Succeeded: ok}
	for _, kvs := range ranges {
		t.Responses = append(t.Responses, rangeOp(kvs...))
	}
	return t
}

type kvT = mvccpb.KeyValue

// counter reads a counter's value.
func counter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func kv(key string, create, mod int64, val []byte) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(key), CreateRevision: create, ModRevision: mod, Value: val}
}

// own is this member's candidacy key of name.
func (r *rig) own(name string) string { return testKeys.Candidacy(name, r.lease) }

// leads answers the check b (one step, a new candidacy) with: this
// member leads, the request is l, and the age record is age (nil: none).
func (r *rig) leads(b *Batch, l registry.Life, age *mvccpb.KeyValue) {
	r.t.Helper()
	mine := r.rev + 1
	r.answer(b, sub(true, nil, kv(r.own(l.Name), mine, mine, nil), kv(testKeys.Life(l.Name), l.ID, l.ID, nil), age))
}

// run brings l to Running on m1 with no age record, and returns its hold.
func (r *rig) run(l registry.Life) *Life {
	r.t.Helper()
	r.leads(r.mustTake(taskCheck), l, nil)
	b := r.mustTake(taskStart)
	r.answer(b, sub(true))
	h := r.e.held[l.Name]
	if h == nil {
		r.t.Fatalf("%s does not run", l.Name)
	}
	return h
}

func (r *rig) phase(name string) Phase {
	c := r.e.cands[name]
	if c == nil {
		r.t.Fatalf("no candidacy of %s", name)
	}
	return c.phase
}

// checkInvariants fails the test when the engine's state breaks one of its
// rules.
func (r *rig) checkInvariants(step string) {
	r.t.Helper()
	e := r.e
	for name, c := range e.cands {
		bad := func(msg string) { r.t.Fatalf("after %s: %s in phase %s: %s", step, name, c.phase, msg) }
		switch c.phase {
		case Campaigning:
			if c.h != nil || c.owe != nil {
				bad("holds a life or owes a clean-up")
			}
		case Starting, HandingOff:
			if c.h == nil || c.owe != nil {
				bad("has no life, or owes a clean-up")
			}
			if e.held[name] == c.h {
				bad("its life runs")
			}
		case Running:
			if c.h == nil || c.owe != nil {
				bad("has no life, or owes a clean-up")
			}
			if !e.heldClosed && e.held[name] != c.h {
				bad("its life is not among the running ones")
			}
		case CleaningUp:
			if c.h != nil || c.owe == nil {
				bad("holds a life, or owes nothing")
			}
		}
	}
	for name, l := range e.held {
		// No heartbeat carries a stopped life: what runs is what the
		// heartbeat carries, and nothing stopped is among it.
		if l.stopped {
			r.t.Fatalf("after %s: %s runs although it was stopped", step, name)
		}
		if c := e.cands[name]; c == nil || c.phase != Running || c.h != l {
			r.t.Fatalf("after %s: %s runs without a running candidacy", step, name)
		}
		if l.run.abandoned {
			r.t.Fatalf("after %s: %s runs although its Run was given up", step, name)
		}
	}
	if e.heldClosed && len(e.held) > 0 {
		r.t.Fatalf("after %s: %d lives run after the session was given up", step, len(e.held))
	}
	for name, l := range e.runs {
		if l.run.returned || !l.run.started {
			r.t.Fatalf("after %s: %s is listed with a Run that is not running", step, name)
		}
		// A Run left running once the session was given up would run on
		// after it, and hold every later hold of its name back.
		if e.heldClosed && !l.run.expired {
			r.t.Fatalf("after %s: the Run of %s was not told to stop at once when the lives were taken", step, name)
		}
	}
	for name, c := range e.cands {
		// A life of a kind with work that runs has had its Run started
		// (it may have returned since, or be stopped for a handoff).
		if c.phase == Running && c.h.hasWork && !c.h.run.started && !e.stopping {
			r.t.Fatalf("after %s: %s runs and its Run was never started", step, name)
		}
	}
}
