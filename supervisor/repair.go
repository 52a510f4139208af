package supervisor

import (
	"context"
	"math"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
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
	lives := s.snapshotHeld()
	if len(lives) == 0 {
		return
	}
	revs, err := s.revisions(ctx, s.cfg.Keys.Ages())
	if err != nil {
		s.sweepFailed(ctx, "cannot read the age records to verify them", err)
		return // looked at again at the next sweep
	}
	for _, h := range lives {
		if rev, ok := revs[h.name]; ok && rev.mod <= h.lastRev.Load() {
			continue // ours, or older than our last write (which the range missed)
		}
		resp, err := s.cfg.Client.Get(ctx, s.cfg.Keys.Age(h.name))
		if err != nil {
			s.sweepFailed(ctx, "cannot read an age record to verify it", err)
			return
		}
		found, rev := (*mvccpb.KeyValue)(nil), int64(math.MaxInt64) // missing: deleted after our write
		if len(resp.Kvs) > 0 {
			found, rev = resp.Kvs[0], resp.Kvs[0].ModRevision
		}
		s.repairAge(ctx, h, found, rev)
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
	handle := func(wr clientv3.WatchResponse) {
		// One look at the held lives per response, not per event: a
		// member starting 10k lives sees 10k events of its own writes,
		// and mu is the election loop's lock.
		holders := make([]*heldLife, len(wr.Events))
		s.mu.Lock()
		for i, ev := range wr.Events {
			holders[i] = s.held[registry.NameOf(k.Ages(), string(ev.Kv.Key))]
		}
		s.mu.Unlock()
		for i, ev := range wr.Events {
			h := holders[i]
			if h == nil || ev.Kv.ModRevision <= h.lastRev.Load() {
				continue
			}
			var found *mvccpb.KeyValue
			if ev.Type == mvccpb.PUT {
				found = ev.Kv
			}
			s.repairAge(gen.ctx, h, found, ev.Kv.ModRevision)
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

// repairAge writes h's running record over found, the age record someone
// other than h's holder wrote (nil: deleted) at revision rev, keeping
// foreign bytes in quarantine/<name>: they are never resumed and never
// silently overwritten. A change no newer than h's last write is not one.
// A member past its safe deadline judges nothing: the write may be its
// successor's, and the loss of the session stops h anyway. It says what it
// found only once the fenced write is applied, which proves that h's holder
// still held the life when the write was made.
func (s *Supervisor) repairAge(ctx context.Context, h *heldLife, found *mvccpb.KeyValue, rev int64) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if h.stopped.Load() || rev <= h.lastRev.Load() || s.pastDeadline() {
		return
	}
	k := s.cfg.Keys
	if found != nil && h.isOwn(found) {
		h.adopt(found)
		return
	}
	var seen int64
	prevKeep := h.keep
	if found != nil {
		seen = found.ModRevision
		h.keep = found.Value
	}
	rec := h.runningRecord()
	prevRev := h.lastRev.Load()
	h.lastRev.Store(seen)
	cmps, then, _ := h.ageWrite(k, rec)
	wctx, cancel := context.WithTimeout(ctx, s.batchTimeout())
	defer cancel()
	resp, err := s.cfg.Client.Txn(wctx).If(cmps...).Then(then...).Commit()
	if err != nil || !resp.Succeeded {
		// Tried again at the next sweep; if the fence failed, the life is
		// stopped by the election watch or the next write.
		h.lastRev.Store(prevRev)
		h.keep = prevKeep
		return
	}
	h.wrote(resp.Header.Revision, rec.AgeMS)
	if found != nil {
		s.m.Quarantined.Inc()
		s.log.Error("age record was overwritten by someone other than its holder; kept those bytes in quarantine and wrote the life's own age",
			"name", h.name, "key", k.Age(h.name), "quarantine", k.Quarantine(h.name), "age", h.ageAt(time.Now())/1000)
	} else {
		s.log.Warn("age record was deleted by someone other than its holder; wrote it again", "name", h.name, "age", h.ageAt(time.Now())/1000)
	}
}

// pastDeadline reports whether the current session's safe deadline has
// passed: a successor may then hold its lives, and the loss of the session
// is about to stop them. (Between sessions no life is held.)
func (s *Supervisor) pastDeadline() bool {
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	return gen != nil && !time.Now().Before(gen.sess.Deadline())
}
