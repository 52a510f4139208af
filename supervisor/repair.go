package supervisor

import (
	"context"
	"math"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/supervisor/engine"
)

// A held life's age record is written only by its holder between its start
// and its stop. A record someone else changed (a put or a delete) is found
// by the watch of ages/ at once, or by the sweep's look at every held
// life's record, and written again; foreign bytes go to quarantine/<name>.

// verifyAges looks at the age record of every held life: one written by
// someone other than its holder, or deleted, is written again (the foreign
// bytes are kept in quarantine/<name>). Between a life's start and its stop
// nothing else writes the record, so this is how a tampered one is found.
// It reads keys and revisions only, and values only of suspects.
func (s *Supervisor) verifyAges(ctx context.Context) {
	s.mu.Lock()
	gen := s.gen
	lives := s.eng.HeldLives()
	last := make([]int64, len(lives))
	for i, l := range lives {
		last[i] = l.LastRev()
	}
	s.mu.Unlock()
	if gen == nil || len(lives) == 0 {
		return
	}
	revs, err := s.revisions(ctx, s.cfg.Keys.Ages())
	if err != nil {
		s.sweepFailed(ctx, "cannot read the age records to verify them", err)
		return // looked at again at the next sweep
	}
	for i, l := range lives {
		if rev, ok := revs[l.Name()]; ok && rev.mod <= last[i] {
			continue // ours, or older than our last write (which the range missed)
		}
		resp, err := s.cfg.Client.Get(ctx, s.cfg.Keys.Age(l.Name()))
		if err != nil {
			s.sweepFailed(ctx, "cannot read an age record to verify it", err)
			return
		}
		found, rev := (*mvccpb.KeyValue)(nil), int64(math.MaxInt64) // missing: deleted after our write
		if len(resp.Kvs) > 0 {
			found, rev = resp.Kvs[0], resp.Kvs[0].ModRevision
		}
		s.repairAge(gen, l, found, rev)
	}
}

// watchAges watches ages/ from rev for gen: a change to the record of a
// held life that its holder did not make (a put or a delete by someone
// else) is repaired at once, so that a crash does not make a successor
// resume from it. Records change only when lives start, move or stop, so
// the watch is quiet in the steady state. After the watch breaks, every
// held life's record is checked (verifyAges), then it watches from now on.
func (s *Supervisor) watchAges(gen *generation, rev int64) {
	k := s.cfg.Keys
	type suspect struct {
		l     *engine.Life
		found *mvccpb.KeyValue
		rev   int64
	}
	handle := func(wr clientv3.WatchResponse) {
		// One look at the held lives per response, not per event: a
		// member starting 10k lives sees 10k events of its own writes.
		var sus []suspect
		s.mu.Lock()
		for _, ev := range wr.Events {
			l := s.eng.Running(registry.NameOf(k.Ages(), string(ev.Kv.Key)))
			if l == nil || !l.Suspect(ev.Kv.ModRevision) {
				continue
			}
			var found *mvccpb.KeyValue
			if ev.Type == mvccpb.PUT {
				found = ev.Kv
			}
			sus = append(sus, suspect{l: l, found: found, rev: ev.Kv.ModRevision})
		}
		s.mu.Unlock()
		for _, x := range sus {
			s.repairAge(gen, x.l, x.found, x.rev)
		}
	}
	s.watchGen(gen, k.Ages(), rev, handle, func() { s.verifyAges(gen.ctx) })
}

// keyRevs are the revisions of one key.
type keyRevs struct{ create, mod int64 }

// revisions returns the revisions of every key under prefix, by name; it
// reads keys only, at one revision.
func (s *Supervisor) revisions(ctx context.Context, prefix string) (map[string]keyRevs, error) {
	_, kvs, err := registry.RangeAll(ctx, s.cfg.Client, prefix, 0, clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	out := make(map[string]keyRevs, len(kvs))
	for _, kv := range kvs {
		out[registry.NameOf(prefix, string(kv.Key))] = keyRevs{create: kv.CreateRevision, mod: kv.ModRevision}
	}
	return out, nil
}

// repairAge writes l's running record over found, the age record someone
// other than l's holder wrote (nil: deleted) at revision rev, keeping
// foreign bytes in quarantine/<name>: they are never resumed and never
// silently overwritten (engine.PlanRepair). It runs in gen's lane, ordered
// with the heartbeats and the final records. A member past its safe
// deadline judges nothing: the write may be its successor's, and the loss
// of the session stops l anyway. What it found is said only once the
// fenced write is applied, which proves that l's holder still held the
// life when the write was made.
func (s *Supervisor) repairAge(gen *generation, l *engine.Life, found *mvccpb.KeyValue, rev int64) {
	gen.lane.do(func() {
		if !time.Now().Before(gen.sess.Deadline()) {
			return
		}
		s.mu.Lock()
		r := s.eng.PlanRepair(l, found, rev)
		s.mu.Unlock()
		if r == nil {
			return
		}
		ctx, cancel := context.WithTimeout(gen.ctx, s.batchTimeout())
		resp, err := s.cfg.Client.Txn(ctx).If(r.Cmps...).Then(r.Then...).Commit()
		cancel()
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.eng.Repaired(r, 0, false)
			return
		}
		s.eng.Repaired(r, resp.Header.Revision, resp.Succeeded)
	})
}
