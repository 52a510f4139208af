package engine

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// The elections of many lives are run in batches: one Txn carries the
// election step of up to ElectBatch lives, each in its own nested Txn. The
// keys and the rule are concurrency.Election's: a candidate's key is
// elections/<name>/<lease-hex> on its session lease, and the key with the
// lowest create revision leads. What differs is the cost: one Txn for many
// lives instead of a Txn, a Get and a Watch per candidate, and one watch of
// deletions under elections/ for the whole member instead of one watch per
// waiting candidate.

// MaxTxnOps is etcd's default limit of operations in one Txn
// (--max-txn-ops, 128); a nested Txn uses what its parent leaves of it.
const MaxTxnOps = 128

// electWidth is the widest nested Txn of an election batch: a handoff
// compares its fence, the age record, the successor's candidacy and up to
// maxAhead candidacies in front of it.
const electWidth = 4 + maxAhead

// maxAhead is how many candidacies in front of the preferred member a
// handoff moves to the back of the line.
const maxAhead = 4

// ElectBatch is how many nested Txns go into one election Txn (120).
const ElectBatch = MaxTxnOps - electWidth

// probeAgain is how long a holder waits before it probes again for a
// preferred member that has no candidacy yet.
const probeAgain = 100 * time.Millisecond

// taskKind is the election step a task takes for one life.
type taskKind int

const (
	taskCheck   taskKind = iota // create the candidacy if missing; read the leader, the request and the age
	taskStart                   // the first, fenced write of a life just won
	taskProbe                   // read a running life's candidacies: who would take it if its holder let go
	taskHandoff                 // final age and resignation in one Txn, if the preferred member is next in line
	taskClean                   // delete the candidacy; final age or dropped records for a stopped life
)

// task is one life's step in an election batch.
type task struct {
	c    *cand
	kind taskKind
	life registry.Life // check: the life campaigned for
	rev  int64         // check: the candidacy's revision as known (0: create it if missing)
	h    *Life         // start, probe, handoff
	to   string        // probe, handoff: the preferred member
	toK  string        // probe, handoff: its candidacy key
	plan *handPlan     // handoff
	owe  *cleanup      // clean
	rec  registry.AgeRecord
	// start: a direct start, guarded by these candidacies being gone.
	direct bool
	ahead  []revKey
	at     int // index of its first nested Txn in the batch sent
	n      int // nested Txns it takes, at most
	// start of a life with work: where its nested Txn reads states/<name>,
	// in the responses of Then and of Else (-1: it does not).
	stateThen, stateElse int
}

// ordered reports whether the task writes the age of a life that ran, so
// that it must be ordered with the heartbeats (see Batch.Ordered).
func (t *task) ordered() bool {
	return t.kind == taskHandoff || (t.kind == taskClean && t.owe.h != nil)
}

// Batch is one election Txn: the steps of up to ElectBatch lives. Its
// cands are busy from Take until Answer.
type Batch struct {
	session uint64
	tasks   []*task
	live    []*task // those Prepare kept
	beatsAt int     // index of the heartbeats' read in the Txn; -1: none
	// Ordered batches write the final ages of lives that ran: the driver
	// sends them one at a time, in order with its heartbeats, and sends
	// no heartbeat between their Prepare and their Answer (a heartbeat
	// there would carry a stopped life forward past its final record).
	Ordered bool
}

// Len is the number of lives in b.
func (b *Batch) Len() int { return len(b.tasks) }

// Take pops the ready steps and returns them in at most two batches: the
// plain one and the ordered one (nil when empty). Each cand it takes a
// step of is busy until its batch is answered.
func (e *Engine) Take() (plain, ordered *Batch) {
	var p, o []*task
	np, no := 0, 0 // nested Txns in each
	// A batch with checks also reads the heartbeats: one op less for lives.
	// (A clean-up of a life with work takes 3; the one op it may pass
	// ElectBatch by is within MaxTxnOps.)
	for np+2 <= ElectBatch-1 && no+2 <= ElectBatch {
		c := e.popReady()
		if c == nil {
			break
		}
		c.queued = false
		if c.busy {
			c.again = true
			continue
		}
		t := e.next(c)
		if t == nil {
			continue
		}
		c.busy = true
		t.n = 1
		if t.kind == taskClean && t.owe.h != nil && t.owe.rev != 0 {
			t.n = 2
		}
		if t.kind == taskClean && t.owe.dropAge && t.owe.h != nil && t.owe.h.hasWork {
			t.n++ // and its state record
		}
		if t.ordered() {
			no += t.n
			o = append(o, t)
		} else {
			np += t.n
			p = append(p, t)
		}
	}
	if len(p) > 0 {
		plain = &Batch{session: e.session, tasks: p}
	}
	if len(o) > 0 {
		ordered = &Batch{session: e.session, tasks: o, Ordered: true}
	}
	return plain, ordered
}

// next decides the next step for c, or returns nil when it needs none now
// (it may have deferred itself).
func (e *Engine) next(c *cand) *task {
	kind := c.life.Options.KindName()
	switch c.phase {
	case CleaningUp:
		if !workStopped(c.owe.h) {
			return nil // looked at again when its Run returns
		}
		return &task{c: c, kind: taskClean, owe: c.owe}
	case Running:
		if !c.want {
			return nil
		}
		to := e.preferred(c.name, kind)
		if to == e.cfg.ID {
			e.resumeWork(c) // a stop for a handoff that is off
			return nil
		}
		// Give views of the member set time to agree before moving a life
		// that just arrived or whose preferred member just changed: no
		// flapping between members.
		if at := later(c.h.started.Add(minHold), e.viewAt.Add(viewSettle)); e.now().Before(at) {
			e.queueAt(c, at)
			return nil
		}
		l, ok := e.leases[to]
		if !ok {
			return nil // queued again when the member set changes
		}
		toK := e.cfg.Keys.Candidacy(c.name, l)
		if p := c.plan; p != nil && p.h == c.h && p.toKey == toK {
			// The work stops first; the handoff is written once its Run
			// returned, with its final state checkpointed.
			if !e.stopWork(c.h) {
				return nil // looked at again when its Run returns
			}
			return &task{c: c, kind: taskHandoff, h: c.h, to: to, toK: toK, plan: p}
		}
		return &task{c: c, kind: taskProbe, h: c.h, to: to, toK: toK}
	case Starting:
		return &task{c: c, kind: taskStart, h: c.h}
	case Campaigning:
		switch {
		case c.want && e.isCandidate(c.name, kind):
			if _, old := e.runs[c.name]; old {
				// A Run of an earlier hold of this name has not returned (it
				// was told to stop at once, or given up): no new hold, and no
				// candidacy key in a peer's way, before it has.
				return nil // looked at again when it returns
			}
			if c.direct && c.rev != 0 {
				// Every key in front of ours has gone: we lead. Start from
				// the record the last check read, carried forward by the
				// newest heartbeat known; the Txn checks both are still
				// current.
				ahead := c.ahead
				e.win(c, e.newHeld(c.life, c.rev, c.seen))
				return &task{c: c, kind: taskStart, h: c.h, direct: true, ahead: ahead}
			}
			return &task{c: c, kind: taskCheck, life: c.life, rev: c.rev}
		case c.rev != 0:
			e.withdraw(c)
			return &task{c: c, kind: taskClean, owe: c.owe}
		default:
			if e.cands[c.name] == c {
				delete(e.cands, c.name) // nothing held, nothing owed, not wanted here
			}
			return nil
		}
	}
	return nil // HandingOff: its step is in flight
}

// Prepare checks that each step of b still applies, takes what it needs
// from its cand at send time (a handoff stops its life here, before the
// Txn), and returns the Txn's operations; nil when nothing is left to
// send (b is answered then).
func (e *Engine) Prepare(b *Batch) []clientv3.Op {
	now := e.now()
	ops := make([]clientv3.Op, 0, len(b.tasks)+1)
	b.live, b.beatsAt = b.tasks[:0], -1
	checks := false
	if b.session != e.session {
		return nil // of an ended session: its cands are gone with it
	}
	for _, t := range b.tasks {
		if !e.prepare(t, now) {
			e.done(t.c)
			continue
		}
		t.at = len(ops)
		ops = append(ops, e.opsOf(t)...)
		b.live = append(b.live, t)
		checks = checks || t.kind == taskCheck
	}
	if len(b.live) == 0 {
		return nil
	}
	if checks {
		// A life just won resumes from its record carried forward to its
		// old holder's heartbeat, read in the same snapshot.
		b.beatsAt = len(ops)
		ops = append(ops, clientv3.OpGet(e.cfg.Keys.Heartbeats(), clientv3.WithPrefix()))
	}
	return ops
}

// prepare checks that t still applies and takes what it needs from the
// cand at send time.
func (e *Engine) prepare(t *task, now time.Time) bool {
	c := t.c
	switch t.kind {
	case taskCheck:
		return c.phase == Campaigning && c.want && c.life.ID == t.life.ID
	case taskProbe:
		return c.phase == Running && c.h == t.h
	case taskStart:
		if c.phase != Starting || c.h != t.h {
			return false
		}
		// The life runs from its first write: it resumes at exactly the
		// stored age.
		t.h.started, t.h.clockMS = now, e.ClockMS(now)
		t.rec = t.h.runningRecord()
	case taskHandoff:
		if c.phase != Running || c.h != t.h || !e.beginHandoff(c) {
			return false
		}
		t.rec = t.h.FinalRecord(now)
	case taskClean:
		if t.owe.h != nil && t.owe.final {
			t.rec = t.owe.h.FinalRecord(now)
		}
	}
	return true
}

// opsOf returns the nested Txns of t.
func (e *Engine) opsOf(t *task) []clientv3.Op {
	k, name := e.cfg.Keys, t.c.name
	own := k.Candidacy(name, e.lease)
	// The first keys of the election, oldest first: the leader, and (with
	// our own among them) every candidacy in front of ours.
	leader := clientv3.OpGet(k.Election(name)+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(maxAhead+1))
	switch t.kind {
	case taskCheck:
		reads := []clientv3.Op{leader, clientv3.OpGet(k.Life(name)), clientv3.OpGet(k.Age(name))}
		if t.rev != 0 {
			// A waiting candidate looks again: reads only, so a batch of
			// them is a read-only Txn that etcd serves without a raft
			// entry (what a member does when a peer's lives fall to it).
			return []clientv3.Op{clientv3.OpTxn(nil, append([]clientv3.Op{clientv3.OpGet(own)}, reads...), nil)}
		}
		return []clientv3.Op{clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(own), "=", 0)},
			append([]clientv3.Op{clientv3.OpPut(own, e.cfg.ID, clientv3.WithLease(clientv3.LeaseID(e.lease)))}, reads...),
			append([]clientv3.Op{clientv3.OpGet(own)}, reads...),
		)}
	case taskProbe:
		return []clientv3.Op{clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpGet(k.Election(name)+"/",
			clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))}, nil)}
	case taskStart, taskHandoff:
		h := t.h
		cmps, then, orElse := h.ageWrite(k, t.rec)
		if t.kind == taskStart && h.prev != nil && h.prev.Running() {
			// The age it resumes at counts the old holder's heartbeat as
			// read: it must not have moved since.
			bk := k.Heartbeat(h.prev.Lease)
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(bk), "=", h.beatRev))
			orElse = append(orElse, clientv3.OpGet(bk))
		}
		for _, a := range t.ahead {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(a.key), "=", 0))
			orElse = append(orElse, clientv3.OpGet(a.key, clientv3.WithKeysOnly()))
		}
		t.stateThen, t.stateElse = -1, -1
		if t.kind == taskStart && h.hasWork {
			// The state to restore, read in the snapshot of the first
			// write: from then on only this holder can write it.
			then = append(then, clientv3.OpGet(k.State(name)))
			orElse = append(orElse, clientv3.OpGet(k.State(name)))
			t.stateThen, t.stateElse = len(then)-1, len(orElse)-1
		}
		if t.kind == taskHandoff {
			// The successor is the preferred member only if no other
			// candidacy is in front of it: those go to the back of the
			// line (their members campaign again when they see them go).
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(t.toK), "=", t.plan.toRev))
			for _, a := range t.plan.ahead {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(a.key), "=", a.rev))
				then = append(then, clientv3.OpDelete(a.key))
			}
			then = append(then, clientv3.OpDelete(h.ownKey))
			orElse = append(orElse, clientv3.OpGet(t.toK))
		}
		return []clientv3.Op{clientv3.OpTxn(cmps, then, orElse)}
	default: // taskClean
		o := t.owe
		var ops []clientv3.Op
		if o.h != nil {
			age := k.Age(name)
			switch {
			case o.final:
				cmps, then, _ := o.h.ageWrite(k, t.rec)
				ops = append(ops, clientv3.OpTxn(cmps, then, nil))
			case o.dropAge:
				ops = append(ops, clientv3.OpTxn(
					[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(age), "=", o.h.lastRev)},
					[]clientv3.Op{clientv3.OpDelete(age)}, nil))
				if o.h.hasWork {
					// Its state record and its child record (written
					// together, so the state's revision guards both),
					// unless someone wrote them since this holder last
					// read or wrote them.
					st := k.State(name)
					ops = append(ops, clientv3.OpTxn(
						[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(st), "=", o.h.stateRev)},
						[]clientv3.Op{clientv3.OpDelete(st), clientv3.OpDelete(k.Child(name))}, nil))
				}
			}
		}
		if o.rev != 0 {
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(own), "=", o.rev)},
				[]clientv3.Op{clientv3.OpDelete(own)}, nil))
		}
		if len(ops) == 0 {
			// Nothing to undo: an empty nested Txn keeps the batch's shape.
			ops = append(ops, clientv3.OpTxn(nil, nil, nil))
		}
		return ops
	}
}

// Answer handles the answer to b's Txn (resp nil and err set: it failed
// or its outcome is unknown; every step is tried again after a backoff).
// It reports whether err is the first failure after a success, for the
// driver to log.
func (e *Engine) Answer(b *Batch, resp *clientv3.TxnResponse, err error) (firstFailure bool) {
	if b.session != e.session {
		return false // the session ended: its cands are gone
	}
	if err != nil {
		e.electFails++
		wait := min(100*time.Millisecond<<min(e.electFails, 5), 2*time.Second)
		for _, t := range b.live {
			c := t.c
			if t.kind == taskHandoff && c.phase == HandingOff && c.h == t.h {
				e.rehold(c)
			}
			if t.direct && c.phase == Starting && c.h == t.h {
				e.unwin(c, false) // its outcome is unknown: check again
			}
			// Every step is tried again after the backoff, whatever it was.
			c.busy, c.again, c.after = false, false, time.Time{}
			e.queueAt(c, e.now().Add(wait))
		}
		return e.electFails == 1
	}
	e.electFails = 0
	rev := resp.Header.Revision
	if b.beatsAt >= 0 {
		e.learnBeats(resp.Responses[b.beatsAt].GetResponseRange().GetKvs())
	}
	for _, t := range b.live {
		sub := resp.Responses[t.at].GetResponseTxn()
		switch t.kind {
		case taskCheck:
			e.checked(t, rev, sub)
		case taskStart:
			e.started(t, rev, sub)
		case taskProbe:
			e.probed(t, sub)
		case taskHandoff:
			e.handed(t, rev, sub)
		case taskClean:
			if t.owe.h != nil && t.owe.final && sub.GetSucceeded() {
				t.owe.h.wrote(rev, t.rec.AgeMS)
			}
			e.cleaned(t.c, t.owe)
		}
		e.done(t.c)
	}
	return false
}

// checked handles the answer to a check: the member leads the election
// (win), waits in it (the deletion watch looks again), or the request is
// gone.
func (e *Engine) checked(t *task, rev int64, sub *etcdserverpb.TxnResponse) {
	c := t.c
	mine := rev // the put of a new candidacy is at the Txn's revision
	if t.rev != 0 || !sub.GetSucceeded() {
		// The candidacy existed: read back in the same snapshot.
		own := FirstKV(sub, 0)
		if own == nil {
			c.rev = 0 // gone (moved back in line by a handoff, or deleted): create it again
			e.queue(c)
			return
		}
		mine = own.CreateRevision
	}
	c.rev = mine
	first, req, age := FirstKV(sub, 1), FirstKV(sub, 2), FirstKV(sub, 3)
	switch {
	case c.phase != Campaigning || !c.want || c.life.ID != t.life.ID:
		e.queue(c) // it changed meanwhile: withdraw or campaign again
		return
	case req == nil || req.CreateRevision != t.life.ID:
		return // the request is gone or replaced; the registry says so soon
	case first == nil || first.CreateRevision != mine:
		// Waiting: the deletion watch looks again. Keep what a direct
		// start needs: the keys in front, if the read holds them all.
		c.ahead, c.left, c.seen, c.direct = nil, 0, age, false
		var kvs []*mvccpb.KeyValue
		if rs := sub.GetResponses(); len(rs) > 1 {
			kvs = rs[1].GetResponseRange().GetKvs()
		}
		var ahead []revKey
		for _, kv := range kvs {
			if kv.CreateRevision >= mine {
				c.ahead, c.left = ahead, len(ahead) // the read reached our key: nothing else is in front
				break
			}
			ahead = append(ahead, revKey{key: string(kv.Key), rev: kv.CreateRevision})
		}
		return
	}
	e.win(c, e.newHeld(t.life, c.rev, age))
}

// learnBeats keeps the newest heartbeat seen of each lease.
func (e *Engine) learnBeats(kvs []*mvccpb.KeyValue) {
	for _, kv := range kvs {
		l, ok := e.cfg.Keys.HeartbeatLease(string(kv.Key))
		if !ok {
			continue
		}
		if old, ok := e.beats[l]; ok && old.rev >= kv.ModRevision {
			continue
		}
		b, err := registry.ParseHeartbeat(kv.Value)
		if err != nil {
			e.log.Error("heartbeat does not parse; lives on its lease resume from their age records alone",
				"key", string(kv.Key), "err", err)
			e.beats[l] = seenBeat{rev: kv.ModRevision}
			continue
		}
		e.beats[l] = seenBeat{b: &b, rev: kv.ModRevision}
	}
}

// seenBeat is the newest heartbeat seen of a lease: b nil when it does not
// parse.
type seenBeat struct {
	b   *registry.Heartbeat
	rev int64
}

// newHeld prepares a life just won, from its age record (old nil: none)
// and the newest heartbeat seen of its holder's lease (a check reads the
// heartbeats in the same snapshot as the record).
func (e *Engine) newHeld(life registry.Life, rev int64, old *mvccpb.KeyValue) *Life {
	k, name := e.cfg.Keys, life.Name
	h := &Life{
		name:      name,
		lifeID:    life.ID,
		ownKey:    k.Candidacy(name, e.lease),
		ownRev:    rev,
		holder:    e.cfg.ID,
		lease:     e.lease,
		incarnate: 1,
		kind:      life.Options.KindName(),
		hasWork:   e.cfg.Kinds[life.Options.KindName()],
	}
	if old != nil {
		h.lastRev = old.ModRevision
		rec, err := registry.ParseAgeRecord(old.Value)
		switch {
		case err != nil:
			// Never resume, never silently overwrite: keep the bytes.
			e.log.Error("age record does not parse; keeping its bytes in quarantine and starting the life at age 0",
				"name", name, "key", k.Age(name), "quarantine", k.Quarantine(name), "err", err)
			h.keep = old.Value
			e.m.Quarantined.Inc()
		case rec.LifeID == life.ID:
			h.prev = &rec
			if rec.Running() {
				if sb, ok := e.beats[rec.Lease]; ok {
					h.beat, h.beatRev = sb.b, sb.rev
				}
			}
			h.base, h.incarnate = h.resumeAge(), rec.Incarnation+1
		}
	}
	h.started = e.now()
	return h
}

// readState keeps the states/<name> read at index i of a start's nested
// Txn response, to restore from when the Run starts.
func (l *Life) readState(sub *etcdserverpb.TxnResponse, i int) {
	if !l.hasWork || i < 0 {
		return
	}
	l.stateKV = FirstKV(sub, i)
	if l.stateKV != nil {
		l.stateRev = l.stateKV.ModRevision
	}
}

// started handles the answer to the first write of a life.
func (e *Engine) started(t *task, rev int64, sub *etcdserverpb.TxnResponse) {
	c, h := t.c, t.h
	if sub.GetSucceeded() {
		if t.direct {
			e.m.DirectStarts.Inc()
		}
		h.readState(sub, t.stateThen)
		e.runStarted(c, h, rev, t.rec)
		return
	}
	if c.phase != Starting || c.h != h {
		return // stopped meanwhile
	}
	own, req, age := FirstKV(sub, 0), FirstKV(sub, 1), FirstKV(sub, 2)
	if !t.direct && h.fenceHolds(own, req) && h.isOwn(age) {
		// An earlier start of h, applied although its answer was lost (a
		// timeout): the life has run since that write, which heartbeats
		// carry forward. It runs on from it; writing a new start, from a
		// later clock, would set the age shown back.
		if rec, _ := registry.ParseAgeRecord(age.Value); rec.Running() && rec.Lease == h.lease && rec.ClockMS <= h.clockMS {
			h.started = e.cfg.Epoch.Add(time.Duration(rec.ClockMS) * time.Millisecond)
			h.clockMS = rec.ClockMS
			h.readState(sub, t.stateElse)
			e.runStarted(c, h, age.ModRevision, rec)
			return
		}
	}
	if t.direct {
		// The record or the heartbeat moved since the last check (a
		// handoff's final record, a final heartbeat), or a key in front
		// had not gone: the failure's reads are a fresh look at both.
		next := 3
		if h.prev != nil && h.prev.Running() {
			if hb := FirstKV(sub, next); hb != nil {
				e.learnBeats([]*mvccpb.KeyValue{hb})
			}
			next++
		}
		first := true
		for i := range t.ahead {
			first = first && FirstKV(sub, next+i) == nil
		}
		e.unwin(c, false)
		if h.fenceHolds(own, req) && first && c.want && c.life.ID == h.lifeID {
			// We lead, as read: start again from the record just read.
			e.win(c, e.newHeld(c.life, h.ownRev, age))
			return // done queues the start
		}
		e.queue(c) // check again
		return
	}
	switch {
	case !h.fenceHolds(own, req):
		e.unwin(c, true) // lost it already, or the request changed: check again
		e.queue(c)
	case h.isOwn(age):
		// Our own earlier write, applied although its answer was lost.
		h.adopt(age)
	case age != nil && age.ModRevision == h.lastRev:
		// The record is as read, so the old holder's heartbeat moved: its
		// lease still lives. Check again, which reads both anew.
		e.unwin(c, false)
		e.queue(c)
	case age != nil:
		e.m.Quarantined.Inc()
		e.log.Error("age record was written by someone other than its holder while the life started; keeping those bytes in quarantine",
			"name", h.name, "key", e.cfg.Keys.Age(h.name), "quarantine", e.cfg.Keys.Quarantine(h.name))
		h.lastRev = age.ModRevision
		h.keep = age.Value
	default:
		h.lastRev = 0 // deleted meanwhile
	}
	// done queues it again while it is Starting.
}

// runStarted runs h, whose start record rec was applied at revision rev,
// unless it was stopped meanwhile or the session is ending.
func (e *Engine) runStarted(c *cand, h *Life, rev int64, rec registry.AgeRecord) {
	h.wrote(rev, rec.AgeMS)
	h.prev, h.beat = nil, nil // resumed: no longer needed
	if c.phase != Starting || c.h != h {
		return // stopped meanwhile; its clean-up sees this write
	}
	if !e.run(c) {
		return // the session is ending
	}
	name := h.name
	e.log.Info(fmt.Sprintf("New life spawned: %s (age %d, incarnation %d)", name, rec.AgeMS/1000, h.incarnate),
		"name", name, "age", rec.AgeMS/1000, "incarnation", h.incarnate, "life_id", h.lifeID)
	e.startWork(h)
	if e.preferred(name, c.life.Options.KindName()) != e.cfg.ID {
		e.queueAt(c, h.started.Add(minHold))
	}
}

// handPlan is what a probe found for the handoff of h: the preferred
// member's candidacy, and the candidacies in front of it.
type handPlan struct {
	h     *Life
	toKey string
	toRev int64
	ahead []revKey
}

type revKey struct {
	key string
	rev int64
}

// probed handles the answer to a probe: a plan for the handoff when the
// preferred member is a candidate, else a look again shortly.
func (e *Engine) probed(t *task, sub *etcdserverpb.TxnResponse) {
	c := t.c
	if c.phase != Running || c.h != t.h {
		return
	}
	var kvs []*mvccpb.KeyValue
	if rs := sub.GetResponses(); len(rs) > 0 {
		kvs = rs[0].GetResponseRange().GetKvs()
	}
	p := &handPlan{h: t.h, toKey: t.toK}
	for _, kv := range kvs {
		if string(kv.Key) == t.toK {
			p.toRev = kv.CreateRevision
			break
		}
		if string(kv.Key) != t.h.ownKey && len(p.ahead) < maxAhead {
			p.ahead = append(p.ahead, revKey{key: string(kv.Key), rev: kv.CreateRevision})
		}
	}
	if p.toRev == 0 {
		// It has not campaigned yet (it may be creating thousands of
		// candidacies after a start): look again shortly, not at once.
		c.plan = nil
		e.queueAt(c, e.now().Add(probeAgain))
		return
	}
	c.plan = p
	e.queue(c)
}

// handed handles the answer to a handoff.
func (e *Engine) handed(t *task, rev int64, sub *etcdserverpb.TxnResponse) {
	c, h := t.c, t.h
	mine := c.phase == HandingOff && c.h == h // not stopped meanwhile
	if sub.GetSucceeded() {
		h.wrote(rev, t.rec.AgeMS)
		e.m.Handoffs.Inc()
		e.m.Lost.WithLabelValues("handoff").Inc()
		// Stamped with the time the life stopped: the peer may log its start
		// before this answer reaches us.
		LogAt(e.log, t.rec.Time, fmt.Sprintf("life handed off: %s to %s (age %d)", h.name, t.to, t.rec.AgeMS/1000), "name", h.name, "to", t.to)
		if mine {
			e.handedOff(c)
			e.queue(c) // campaign again as a waiting candidate, if still one
		}
		return
	}
	own, req, age, target := FirstKV(sub, 0), FirstKV(sub, 1), FirstKV(sub, 2), FirstKV(sub, 3)
	rehold := func() {
		if mine {
			e.rehold(c)
		}
	}
	switch {
	case !h.fenceHolds(own, req):
		e.m.Lost.WithLabelValues("fenced").Inc()
		e.log.Warn("lost the life: a fenced write failed", "name", h.name)
		if mine {
			e.lose(c, "a fenced write failed")
		}
	case target == nil:
		c.plan = nil
		rehold()
		// Its candidacy has gone (it withdrew, or the view changed): probe
		// again, as when it had not campaigned yet.
		e.queueAt(c, e.now().Add(probeAgain))
	case target.CreateRevision != t.plan.toRev || (age != nil && age.ModRevision == h.lastRev):
		c.plan = nil // the line changed: look again
		rehold()
		e.queueAt(c, e.now().Add(100*time.Millisecond))
	case h.isOwn(age):
		h.adopt(age)
		rehold()
		e.queue(c)
	default:
		// Someone else wrote or deleted the record: the next try writes
		// over it, keeping foreign bytes in quarantine.
		var seen int64
		if age != nil {
			seen, h.keep = age.ModRevision, age.Value
			e.m.Quarantined.Inc()
			e.log.Error("age record was written by someone other than its holder; keeping those bytes in quarantine",
				"name", h.name, "key", e.cfg.Keys.Age(h.name), "quarantine", e.cfg.Keys.Quarantine(h.name))
		}
		h.lastRev = seen
		rehold()
		e.queueAt(c, e.now().Add(time.Second))
	}
}

// ElectionKeysDeleted takes the deletions the election watch saw: a
// deleted key may make a waiting candidate the leader, and the deletion of
// a running life's own key means the life is lost. It returns the names of
// the lives this member now leads, to start directly once the heartbeats
// were read (Lead).
func (e *Engine) ElectionKeysDeleted(keys []string) (lead []string) {
	k := e.cfg.Keys
	for _, key := range keys {
		name, ok := k.ElectionName(key)
		if !ok {
			continue
		}
		c := e.cands[name]
		switch {
		case c == nil:
		case c.phase == Running && key == c.h.ownKey:
			e.lose(c, "its election key was deleted")
		case c.phase == Campaigning || c.phase == CleaningUp:
			if e.behind(c, key) {
				lead = append(lead, name)
			} else {
				e.queue(c)
			}
		}
	}
	return lead
}

// Lead starts the lives ElectionKeysDeleted said this member leads, with
// beats, the heartbeats read since (nil: the read failed; a heartbeat that
// moved fails their start, which reads it then).
func (e *Engine) Lead(names []string, beats []*mvccpb.KeyValue) {
	e.learnBeats(beats)
	for _, name := range names {
		if c := e.cands[name]; c != nil {
			e.queue(c)
		}
	}
}

// ElectionWatchBroke looks at every candidacy without a life again: the
// watch of deletions may have missed some.
func (e *Engine) ElectionWatchBroke() {
	for _, c := range e.cands {
		if c.phase == Campaigning || c.phase == CleaningUp {
			e.queue(c)
		}
	}
}

// behind notes that key, an election key of c's life, was deleted, and
// reports whether c now leads: key was the last one in front of c's
// candidacy, and c's next step is a direct start. When it was c's own,
// what c knew is void.
func (e *Engine) behind(c *cand, key string) bool {
	if key == e.cfg.Keys.Candidacy(c.name, e.lease) {
		c.ahead, c.left, c.seen, c.direct = nil, 0, nil, false
		return false
	}
	for i, a := range c.ahead {
		if a.key == key && a.rev != 0 {
			c.ahead[i].rev = 0 // seen gone
			c.left--
			c.direct = c.left == 0
			return c.direct
		}
	}
	return false
}

// FirstKV is the first key of the i-th range response of a Txn, or nil.
func FirstKV(t *etcdserverpb.TxnResponse, i int) *mvccpb.KeyValue {
	if i >= len(t.GetResponses()) {
		return nil
	}
	kvs := t.Responses[i].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil
	}
	return kvs[0]
}

// LogAt logs msg at info level with the time at, when the thing it tells of
// happened, rather than the time of the call: a line written after a
// revoke, say, about a life that stopped before it.
func LogAt(log *slog.Logger, at time.Time, msg string, args ...any) {
	if !log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(at, slog.LevelInfo, msg, 0)
	r.Add(args...)
	_ = log.Handler().Handle(context.Background(), r)
}
