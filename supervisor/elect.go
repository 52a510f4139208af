package supervisor

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// The elections of many lives are run in batches: one Txn carries the
// election step of up to electBatch lives, each in its own nested Txn. The
// keys and the rule are concurrency.Election's: a candidate's key is
// elections/<name>/<lease-hex> on its session lease, and the key with the
// lowest create revision leads. What differs is the cost: one Txn for many
// lives instead of a Txn, a Get and a Watch per candidate, and one watch of
// deletions under elections/ for the whole member instead of one watch per
// waiting candidate.

// electWidth is the widest nested Txn of an election batch: a handoff
// compares its fence, the age record, the successor's candidacy and up to
// maxAhead candidacies in front of it.
const electWidth = 4 + maxAhead

// maxAhead is how many candidacies in front of the preferred member a
// handoff moves to the back of the line.
const maxAhead = 4

// electBatch is how many nested Txns go into one election Txn: etcd lets a
// nested Txn use what its parent leaves of --max-txn-ops.
const electBatch = maxTxnOps - electWidth

// taskKind is the election step a task takes for one life.
type taskKind int

const (
	taskCheck   taskKind = iota // create the candidacy if missing; read the leader, the request and the age
	taskStart                   // the first, fenced write of a life just won
	taskProbe                   // read a held life's candidacies: who would take it if its holder let go
	taskHandoff                 // final age and resignation in one Txn, if the preferred member is next in line
	taskClean                   // delete the candidacy; final age or dropped record for a stopped life
)

// task is one life's step in an election batch.
type task struct {
	c    *cand
	kind taskKind
	life registry.Life // check: the life campaigned for
	rev  int64         // check: the candidacy's revision as known (0: create it if missing)
	h    *heldLife     // start, handoff
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

// locked reports whether the task writes the age of a life that ran, so
// that it must be ordered with checkpoints (under writeMu).
func (t *task) locked() bool {
	return t.kind == taskHandoff || (t.kind == taskClean && t.owe.h != nil)
}

// electLoop sends election batches for gen until its context ends: as many
// as InFlight at once, each of up to electBatch lives.
func (s *Supervisor) electLoop(gen *generation) {
	sem := make(chan struct{}, s.cfg.InFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		next := s.promoteLocked(time.Now())
		s.mu.Unlock()
		for {
			select {
			case sem <- struct{}{}:
			case <-gen.ctx.Done():
				return
			}
			s.mu.Lock()
			plain, locked := s.takeLocked(gen)
			s.mu.Unlock()
			var batches [][]*task
			for _, b := range [][]*task{plain, locked} {
				if len(b) > 0 {
					batches = append(batches, b)
				}
			}
			if len(batches) == 0 {
				<-sem
				break
			}
			for i, b := range batches {
				if i > 0 { // the first took the slot above
					select {
					case sem <- struct{}{}:
					case <-gen.ctx.Done():
						return // the generation's cands are dropped with it
					}
				}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done() }()
					s.sendBatch(gen, b)
				}()
			}
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-gen.ctx.Done():
			return
		case <-gen.kick:
		case <-timer.C:
		}
	}
}

// takeLocked pops ready cands and returns their tasks in two batches: those
// that must be ordered with checkpoints, and the rest. Each cand it returns
// a task for is busy until its batch is handled.
func (s *Supervisor) takeLocked(gen *generation) (plain, locked []*task) {
	np, nl := 0, 0 // nested Txns in each; a task takes at most 2
	// A batch with checks also reads the heartbeats: one op less for lives.
	for np+2 <= electBatch-1 && nl+2 <= electBatch {
		c := s.popReadyLocked()
		if c == nil {
			break
		}
		c.queued = false
		if c.busy {
			c.again = true
			continue
		}
		t := s.nextLocked(gen, c)
		if t == nil {
			continue
		}
		c.busy = true
		t.n = 1
		if t.kind == taskClean && t.owe.h != nil && t.owe.rev != 0 {
			t.n = 2
		}
		if t.kind == taskClean && t.owe.dropAge && t.owe.h != nil && t.owe.h.work != nil {
			t.n++ // and its state record
		}
		if t.locked() {
			nl += t.n
			locked = append(locked, t)
		} else {
			np += t.n
			plain = append(plain, t)
		}
	}
	return plain, locked
}

// popReadyLocked takes the next ready cand, lives just won first; nil when
// none is ready.
func (s *Supervisor) popReadyLocked() *cand {
	for _, q := range []*[]*cand{&s.q.first, &s.q.ready} {
		if len(*q) == 0 {
			continue
		}
		c := (*q)[0]
		(*q)[0] = nil
		*q = (*q)[1:]
		if len(*q) == 0 {
			*q = nil // let the backing array go
		}
		return c
	}
	return nil
}

// nextLocked decides the next step for c, or returns nil when it needs
// none now (it may have deferred itself).
func (s *Supervisor) nextLocked(gen *generation, c *cand) *task {
	kind := c.life.Options.KindName()
	switch {
	case c.owe != nil:
		if !s.workStoppedLocked(c.owe.h) {
			return nil // looked at again when its Run returns
		}
		return &task{c: c, kind: taskClean, owe: c.owe}
	case c.held:
		if !c.want {
			return nil
		}
		to := s.preferredLocked(c.name, kind)
		if to == s.cfg.ID {
			s.resumeWorkLocked(c) // a stop for a handoff that is off
			return nil
		}
		// Give views of the member set time to agree before moving a life
		// that just arrived or whose preferred member just changed: no
		// flapping between members.
		if at := later(c.h.started.Add(minHold), s.viewAt.Add(viewSettle)); time.Now().Before(at) {
			s.queueAtLocked(c, at)
			return nil
		}
		l, ok := s.leases[to]
		if !ok {
			return nil // queued again when the member set changes
		}
		toK := s.cfg.Keys.Candidacy(c.name, l)
		if p := c.plan; p != nil && p.h == c.h && p.toKey == toK {
			// The work stops first; the handoff is written once its Run
			// returned, with its final state checkpointed.
			if !s.stopWorkLocked(c.h) {
				return nil // looked at again when its Run returns
			}
			return &task{c: c, kind: taskHandoff, h: c.h, to: to, toK: toK, plan: p}
		}
		return &task{c: c, kind: taskProbe, h: c.h, to: to, toK: toK}
	case c.h != nil:
		return &task{c: c, kind: taskStart, h: c.h}
	case c.want && s.isCandidateLocked(c.name, kind):
		if _, old := s.runs[c.name]; old {
			// A Run of an earlier hold of this name has not returned (it
			// was told to stop at once): no new hold before it has.
			return nil // looked at again when it returns
		}
		if c.direct && c.rev != 0 {
			// Every key in front of ours has gone: we lead. Start from the
			// record the last check read, carried forward by the newest
			// heartbeat known; the Txn checks both are still current.
			t := &task{c: c, kind: taskStart, direct: true, ahead: c.ahead}
			c.h = s.newHeld(gen, c.life, c.rev, c.seen)
			c.ahead, c.left, c.seen, c.direct = nil, 0, nil, false
			t.h = c.h
			return t
		}
		return &task{c: c, kind: taskCheck, life: c.life, rev: c.rev}
	case c.rev != 0:
		c.owe = &cleanup{rev: c.rev} // withdraw
		c.rev = 0
		return &task{c: c, kind: taskClean, owe: c.owe}
	default:
		if s.cands[c.name] == c {
			delete(s.cands, c.name)
		}
		return nil
	}
}

// sendBatch builds, sends and handles one batch.
func (s *Supervisor) sendBatch(gen *generation, b []*task) {
	if b[0].locked() {
		s.writeMu.Lock()
		defer s.writeMu.Unlock()
	}
	now := time.Now()
	s.mu.Lock()
	ops := make([]clientv3.Op, 0, len(b)+1)
	live := b[:0]
	checks := false
	for _, t := range b {
		if !s.prepareLocked(gen, t, now) {
			s.doneLocked(t.c)
			continue
		}
		t.at = len(ops)
		ops = append(ops, s.opsOf(gen, t)...)
		live = append(live, t)
		checks = checks || t.kind == taskCheck
	}
	s.mu.Unlock()
	if len(live) == 0 {
		return
	}
	beatsAt := -1
	if checks {
		// A life just won resumes from its record carried forward to its
		// old holder's heartbeat, read in the same snapshot.
		beatsAt = len(ops)
		ops = append(ops, clientv3.OpGet(s.cfg.Keys.Heartbeats(), clientv3.WithPrefix()))
	}
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(gen.ctx), s.batchTimeout())
	resp, err := s.cfg.Client.Txn(ctx).Then(ops...).Commit()
	cancel()
	s.m.ElectionTxns.Inc()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen {
		return // the generation ended: its cands are gone
	}
	if err != nil {
		s.m.ElectionErrors.Inc()
		s.electFails++
		wait := min(100*time.Millisecond<<min(s.electFails, 5), 2*time.Second)
		if s.electFails == 1 && gen.ctx.Err() == nil {
			s.log.Warn("election batch failed; will retry", "lives", len(live), "err", err)
		}
		for _, t := range live {
			if t.kind == taskHandoff {
				s.reholdLocked(t.c, t.h)
			}
			if t.direct && t.c.h == t.h {
				t.c.h = nil // its outcome is unknown: check again
			}
			// Every step is tried again after the backoff, whatever it was.
			t.c.busy, t.c.again, t.c.after = false, false, time.Time{}
			s.queueAtLocked(t.c, time.Now().Add(wait))
		}
		return
	}
	s.electFails = 0
	if beatsAt >= 0 {
		s.learnBeatsLocked(resp.Responses[beatsAt].GetResponseRange().GetKvs())
	}
	for _, t := range live {
		sub := resp.Responses[t.at].GetResponseTxn()
		switch t.kind {
		case taskCheck:
			s.checkedLocked(gen, t, resp.Header.Revision, sub)
		case taskStart:
			s.startedLocked(t, resp.Header.Revision, sub)
		case taskProbe:
			s.probedLocked(t, sub)
		case taskHandoff:
			s.handedLocked(t, resp.Header.Revision, sub)
		case taskClean:
			if t.owe.h != nil && t.owe.final && sub.GetSucceeded() {
				t.owe.h.wrote(resp.Header.Revision, t.rec.AgeMS)
			}
			if t.c.owe == t.owe {
				t.c.owe = nil
			}
		}
		s.doneLocked(t.c)
	}
}

// doneLocked ends c's operation and looks at c again if something happened
// meanwhile, or if its step left more to do.
func (s *Supervisor) doneLocked(c *cand) {
	c.busy = false
	after := c.after
	c.after = time.Time{}
	switch {
	case c.again || c.owe != nil || (c.h != nil && !c.held):
		c.again = false
		s.queueLocked(c)
	case !after.IsZero():
		s.queueAtLocked(c, after)
	}
}

// prepareLocked checks that t still applies and takes what it needs from
// the cand at send time; a handoff stops its life here, before the Txn.
func (s *Supervisor) prepareLocked(gen *generation, t *task, now time.Time) bool {
	if s.gen != gen {
		return false
	}
	c := t.c
	switch t.kind {
	case taskCheck:
		return c.want && c.life.ID == t.life.ID && c.owe == nil && c.h == nil
	case taskProbe:
		return c.h == t.h && c.held
	case taskStart:
		if c.h != t.h || c.held {
			return false
		}
		// The life runs from its first write: it resumes at exactly the
		// stored age.
		t.h.started, t.h.clockMS = now, s.clockMS(now)
		t.rec = t.h.runningRecord()
	case taskHandoff:
		if c.h != t.h || !c.held || !s.removeHeldLocked(t.h) {
			return false
		}
		c.held = false
		t.rec = t.h.finalRecord(now)
	case taskClean:
		if t.owe.h != nil && t.owe.final {
			t.rec = t.owe.h.finalRecord(now)
		}
	}
	return true
}

// opsOf returns the nested Txns of t.
func (s *Supervisor) opsOf(gen *generation, t *task) []clientv3.Op {
	k, name := s.cfg.Keys, t.c.name
	own := k.Candidacy(name, int64(gen.sess.Lease()))
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
			append([]clientv3.Op{clientv3.OpPut(own, s.cfg.ID, clientv3.WithLease(gen.sess.Lease()))}, reads...),
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
		if t.kind == taskStart && h.work != nil {
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
					[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(age), "=", o.h.lastRev.Load())},
					[]clientv3.Op{clientv3.OpDelete(age)}, nil))
				if o.h.work != nil {
					ops = append(ops, s.dropStateOp(o.h))
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

// checkedLocked handles the answer to a check: the member leads the
// election (start the life), waits in it (the deletion watch looks again),
// or the request is gone.
func (s *Supervisor) checkedLocked(gen *generation, t *task, rev int64, sub *etcdserverpb.TxnResponse) {
	c := t.c
	mine := rev // the put of a new candidacy is at the Txn's revision
	if t.rev != 0 || !sub.GetSucceeded() {
		// The candidacy existed: read back in the same snapshot.
		own := firstKV(sub, 0)
		if own == nil {
			c.rev = 0 // gone (moved back in line by a handoff, or deleted): create it again
			s.queueLocked(c)
			return
		}
		mine = own.CreateRevision
	}
	c.rev = mine
	first, req, age := firstKV(sub, 1), firstKV(sub, 2), firstKV(sub, 3)
	switch {
	case !c.want || c.life.ID != t.life.ID || c.owe != nil:
		s.queueLocked(c) // it changed meanwhile: withdraw or campaign again
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
	c.ahead, c.left, c.seen = nil, 0, nil
	c.h = s.newHeld(gen, t.life, c.rev, age)
}

// learnBeatsLocked keeps the newest heartbeat seen of each lease.
func (s *Supervisor) learnBeatsLocked(kvs []*mvccpb.KeyValue) {
	for _, kv := range kvs {
		l, ok := s.cfg.Keys.HeartbeatLease(string(kv.Key))
		if !ok {
			continue
		}
		if old, ok := s.beats[l]; ok && old.rev >= kv.ModRevision {
			continue
		}
		b, err := registry.ParseHeartbeat(kv.Value)
		if err != nil {
			s.log.Error("heartbeat does not parse; lives on its lease resume from their age records alone",
				"key", string(kv.Key), "err", err)
			s.beats[l] = seenBeat{rev: kv.ModRevision}
			continue
		}
		s.beats[l] = seenBeat{b: &b, rev: kv.ModRevision}
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
func (s *Supervisor) newHeld(gen *generation, life registry.Life, rev int64, old *mvccpb.KeyValue) *heldLife {
	k, name := s.cfg.Keys, life.Name
	h := &heldLife{
		name:      name,
		lifeID:    life.ID,
		ownKey:    k.Candidacy(name, int64(gen.sess.Lease())),
		ownRev:    rev,
		holder:    s.cfg.ID,
		lease:     int64(gen.sess.Lease()),
		incarnate: 1,
		work:      s.newWork(gen, life),
	}
	if old != nil {
		h.lastRev.Store(old.ModRevision)
		rec, err := registry.ParseAgeRecord(old.Value)
		switch {
		case err != nil:
			// Never resume, never silently overwrite: keep the bytes.
			s.log.Error("age record does not parse; keeping its bytes in quarantine and starting the life at age 0",
				"name", name, "key", k.Age(name), "quarantine", k.Quarantine(name), "err", err)
			h.keep = old.Value
			s.m.Quarantined.Inc()
		case rec.LifeID == life.ID:
			h.prev = &rec
			if rec.Running() {
				if sb, ok := s.beats[rec.Lease]; ok {
					h.beat, h.beatRev = sb.b, sb.rev
				}
			}
			h.base, h.incarnate = h.resumeAge(), rec.Incarnation+1
		}
	}
	h.started = time.Now()
	return h
}

// startedLocked handles the answer to the first write of a life.
func (s *Supervisor) startedLocked(t *task, rev int64, sub *etcdserverpb.TxnResponse) {
	c, h := t.c, t.h
	if sub.GetSucceeded() {
		if t.direct {
			s.m.DirectStarts.Inc()
		}
		h.restoreFrom(sub, t.stateThen)
		s.runStartedLocked(c, h, rev, t.rec)
		return
	}
	if c.h != h {
		return
	}
	own, req, age := firstKV(sub, 0), firstKV(sub, 1), firstKV(sub, 2)
	if !t.direct && h.fenceHolds(own, req) && h.isOwn(age) {
		// An earlier start of h, applied although its answer was lost (a
		// timeout): the life has run since that write, which heartbeats
		// carry forward. It runs on from it; writing a new start, from a
		// later clock, would set the age shown back.
		if rec, _ := registry.ParseAgeRecord(age.Value); rec.Running() && rec.Lease == h.lease && rec.ClockMS <= h.clockMS {
			h.started = s.epoch.Add(time.Duration(rec.ClockMS) * time.Millisecond)
			h.clockMS = rec.ClockMS
			h.restoreFrom(sub, t.stateElse)
			s.runStartedLocked(c, h, age.ModRevision, rec)
			return
		}
	}
	if t.direct {
		// The record or the heartbeat moved since the last check (a
		// handoff's final record, a final heartbeat), or a key in front
		// had not gone: the failure's reads are a fresh look at both.
		next := 3
		if h.prev != nil && h.prev.Running() {
			if hb := firstKV(sub, next); hb != nil {
				s.learnBeatsLocked([]*mvccpb.KeyValue{hb})
			}
			next++
		}
		first := true
		for i := range t.ahead {
			first = first && firstKV(sub, next+i) == nil
		}
		c.h, c.ahead, c.left, c.seen = nil, nil, 0, nil
		if h.fenceHolds(own, req) && first && c.want && c.life.ID == h.lifeID {
			// We lead, as read: start again from the record just read.
			c.h = s.newHeld(s.gen, c.life, h.ownRev, age)
			return // doneLocked queues the start
		}
		s.queueLocked(c) // check again
		return
	}
	switch {
	case !h.fenceHolds(own, req):
		c.h, c.rev = nil, 0 // lost it already, or the request changed: check again
	case h.isOwn(age):
		// Our own earlier write, applied although its answer was lost.
		h.adopt(age)
	case age != nil && age.ModRevision == h.lastRev.Load():
		// The record is as read, so the old holder's heartbeat moved: its
		// lease still lives. Check again, which reads both anew.
		c.h = nil
		s.queueLocked(c)
	case age != nil:
		s.m.Quarantined.Inc()
		s.log.Error("age record was written by someone other than its holder while the life started; keeping those bytes in quarantine",
			"name", h.name, "key", s.cfg.Keys.Age(h.name), "quarantine", s.cfg.Keys.Quarantine(h.name))
		h.lastRev.Store(age.ModRevision)
		h.keep = age.Value
	default:
		h.lastRev.Store(0) // deleted meanwhile
	}
	// doneLocked queues it again: c.h is set and not held.
}

// runStartedLocked runs h, whose start record rec was applied at revision
// rev, unless it was stopped meanwhile or the session is ending.
func (s *Supervisor) runStartedLocked(c *cand, h *heldLife, rev int64, rec registry.AgeRecord) {
	h.wrote(rev, rec.AgeMS)
	h.prev, h.beat = nil, nil // resumed: no longer needed
	if c.h != h {
		return // stopped meanwhile; its clean-up sees this write
	}
	if !s.addHeldLocked(h) {
		c.h = nil // the session is ending
		return
	}
	c.held = true
	name := h.name
	s.log.Info(fmt.Sprintf("New life spawned: %s (age %d, incarnation %d)", name, rec.AgeMS/1000, h.incarnate),
		"name", name, "age", rec.AgeMS/1000, "incarnation", h.incarnate, "life_id", h.lifeID)
	s.startWorkLocked(h)
	if s.preferredLocked(name, c.life.Options.KindName()) != s.cfg.ID {
		s.queueAtLocked(c, h.started.Add(minHold))
	}
}

// handPlan is what a probe found for the handoff of h: the preferred
// member's candidacy, and the candidacies in front of it.
type handPlan struct {
	h     *heldLife
	toKey string
	toRev int64
	ahead []revKey
}

type revKey struct {
	key string
	rev int64
}

// probedLocked handles the answer to a probe: a plan for the handoff when
// the preferred member is a candidate, else a look again in a second.
func (s *Supervisor) probedLocked(t *task, sub *etcdserverpb.TxnResponse) {
	c := t.c
	if c.h != t.h || !c.held {
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
		c.plan = nil
		s.queueAtLocked(c, time.Now().Add(time.Second)) // it has not campaigned yet
		return
	}
	c.plan = p
	s.queueLocked(c)
}

// handedLocked handles the answer to a handoff.
func (s *Supervisor) handedLocked(t *task, rev int64, sub *etcdserverpb.TxnResponse) {
	c, h := t.c, t.h
	if sub.GetSucceeded() {
		h.wrote(rev, t.rec.AgeMS)
		s.m.Handoffs.Inc()
		s.m.Lost.WithLabelValues("handoff").Inc()
		// Stamped with the time the life stopped: the peer may log its start
		// before this answer reaches us.
		s.logAt(t.rec.Time, fmt.Sprintf("life handed off: %s to %s (age %d)", h.name, t.to, t.rec.AgeMS/1000), "name", h.name, "to", t.to)
		if c.h == h {
			c.h, c.rev = nil, 0
			s.queueLocked(c) // campaign again as a waiting candidate, if still one
		}
		return
	}
	own, req, age, target := firstKV(sub, 0), firstKV(sub, 1), firstKV(sub, 2), firstKV(sub, 3)
	switch {
	case !h.fenceHolds(own, req):
		s.m.Lost.WithLabelValues("fenced").Inc()
		s.log.Warn("lost the life: a fenced write failed", "name", h.name)
		if c.h == h {
			c.h, c.rev = nil, 0
			s.queueLocked(c)
		}
		return
	case target == nil:
		c.plan = nil
		s.reholdLocked(c, h)
		s.queueAtLocked(c, time.Now().Add(time.Second)) // it has gone
	case target.CreateRevision != t.plan.toRev || (age != nil && age.ModRevision == h.lastRev.Load()):
		c.plan = nil // the line changed: look again
		s.reholdLocked(c, h)
		s.queueAtLocked(c, time.Now().Add(100*time.Millisecond))
	case h.isOwn(age):
		h.adopt(age)
		s.reholdLocked(c, h)
		s.queueLocked(c)
	default:
		// Someone else wrote or deleted the record: the next try writes
		// over it, keeping foreign bytes in quarantine.
		var seen int64
		if age != nil {
			seen, h.keep = age.ModRevision, age.Value
			s.m.Quarantined.Inc()
			s.log.Error("age record was written by someone other than its holder; keeping those bytes in quarantine",
				"name", h.name, "key", s.cfg.Keys.Age(h.name), "quarantine", s.cfg.Keys.Quarantine(h.name))
		}
		h.lastRev.Store(seen)
		s.reholdLocked(c, h)
		s.queueAtLocked(c, time.Now().Add(time.Second))
	}
}

// reholdLocked runs h again after a handoff that did not happen.
func (s *Supervisor) reholdLocked(c *cand, h *heldLife) {
	if c.h != h || c.held {
		return
	}
	if s.restoreHeldLocked(h) {
		c.held = true
		s.resumeWorkLocked(c)
		return
	}
	c.h, c.rev = nil, 0 // the session is ending
}

// watchElections watches deletions under elections/ from rev for gen: a
// deleted key may make a waiting candidate the leader (look again), and
// the deletion of a held life's own key means the life is lost.
func (s *Supervisor) watchElections(gen *generation, rev int64) {
	k := s.cfg.Keys
	handle := func(wr clientv3.WatchResponse) {
		var lead []*cand // now first in line: started directly
		s.mu.Lock()
		for _, ev := range wr.Events {
			name, ok := k.ElectionName(string(ev.Kv.Key))
			if !ok {
				continue
			}
			c := s.cands[name]
			switch {
			case c == nil:
			case c.held && string(ev.Kv.Key) == c.h.ownKey:
				s.loseLocked(c, "its election key was deleted")
			case c.h == nil:
				if s.behindLocked(gen, c, string(ev.Kv.Key)) {
					lead = append(lead, c)
				} else {
					s.queueLocked(c)
				}
			}
		}
		s.mu.Unlock()
		if len(lead) > 0 {
			// The holder that left most likely wrote a last heartbeat
			// first: one read of the heartbeats, so that the direct
			// starts carry the ages forward to it.
			ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(gen.ctx), s.batchTimeout())
			resp, err := s.cfg.Client.Get(ctx, k.Heartbeats(), clientv3.WithPrefix())
			cancel()
			s.mu.Lock()
			if err == nil {
				s.learnBeatsLocked(resp.Kvs)
			} else if gen.ctx.Err() == nil {
				// The starts go on: a heartbeat that moved fails their
				// Txn, which reads it then.
				s.log.Warn("cannot read the heartbeats before starting lives directly", "lives", len(lead), "err", err)
			}
			for _, c := range lead {
				s.queueLocked(c)
			}
			s.mu.Unlock()
		}
	}
	// The watch broke (compaction, lost leader): look at every waiting
	// candidacy again.
	resync := func() {
		s.log.Warn("election watch ended; checking every candidacy again")
		s.mu.Lock()
		for _, c := range s.cands {
			if c.h == nil {
				s.queueLocked(c)
			}
		}
		s.mu.Unlock()
	}
	s.watchGen(gen, k.Elections(), rev, handle, resync, clientv3.WithFilterPut())
}

// behindLocked notes that key, an election key of c's life, was deleted,
// and reports whether c now leads: key was the last one in front of c's
// candidacy, and c's next step is a direct start. When it was c's own,
// what c knew is void.
func (s *Supervisor) behindLocked(gen *generation, c *cand, key string) bool {
	if key == s.cfg.Keys.Candidacy(c.name, int64(gen.sess.Lease())) {
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

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
