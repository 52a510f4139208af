package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// A member checkpoints every life it runs with one write per interval: its
// heartbeat, heartbeats/<lease-hex>, holds the member's clock. A life's age
// record is written when the life starts (its age then, the lease it runs
// on and the member's clock then), and when it stops; in between its age is
// the record's age plus the time from the record's clock to the heartbeat's
// (registry.AgeRecord.At). So the load on etcd is one write per member per
// interval whatever the number of lives, and a crash loses at most the time
// since the last heartbeat, as it did with one write per life.

// clockMS is the member's heartbeat clock at t: monotonic milliseconds since
// the supervisor was created.
func (s *Supervisor) clockMS(t time.Time) int64 { return t.Sub(s.epoch).Milliseconds() }

// batchTimeout bounds one Txn of a heartbeat or an election batch: two
// intervals, at least TTL/2. A Txn stuck on an etcd member that died must
// not hold the next ones back for long.
func (s *Supervisor) batchTimeout() time.Duration {
	return max(2*s.cfg.CheckpointInterval, s.cfg.Lease.TTL/2)
}

// heartbeatLoop writes gen's heartbeat every CheckpointInterval while the
// member runs lives on gen's session. While heartbeats fail the member is
// not ready, counts each failure and says so every failingLogEvery; when
// none has been applied for a lease TTL it gives the session up (gen.fail)
// rather than run lives that a crash would set back by more than that.
func (s *Supervisor) heartbeatLoop(gen *generation) {
	t := time.NewTicker(s.cfg.CheckpointInterval)
	defer t.Stop()
	slow := false
	lastOK, lastLog := time.Now(), time.Time{}
	for {
		select {
		case <-gen.ctx.Done():
			return
		case <-t.C:
		}
		// A heartbeat carries every record still running on the lease, so
		// it must not fall between the stop of a life and the write of its
		// final record (a handoff or clean-up batch, which hold writeMu):
		// the final age would then be below the age the heartbeat showed.
		s.writeMu.Lock()
		clock, ok := s.beatClock()
		if !ok {
			s.writeMu.Unlock()
			continue // every life was taken away: nothing may grow older
		}
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(gen.ctx), s.batchTimeout())
		t0 := time.Now()
		err := s.beat(ctx, gen, clock)
		cancel()
		s.writeMu.Unlock()
		if gen.ctx.Err() != nil {
			return
		}
		now := time.Now()
		took := now.Sub(t0)
		s.m.HeartbeatSeconds.Set(took.Seconds())
		switch {
		case err == nil && !slow && took > s.cfg.CheckpointInterval:
			slow = true
			s.log.Warn("a heartbeat takes longer than the checkpoint interval: etcd is slow, and a crash can lose up to that long",
				"took", took.Round(time.Millisecond), "interval", s.cfg.CheckpointInterval)
		case slow && took <= s.cfg.CheckpointInterval:
			slow = false
			s.log.Info("heartbeats fit the checkpoint interval again", "took", took.Round(time.Millisecond))
		}
		if err == nil {
			if gen.beatFailing.Swap(false) {
				s.m.HeartbeatFailing.Set(0)
				s.log.Info("heartbeats are applied again", "unsaved_for", now.Sub(lastOK).Round(time.Millisecond))
			}
			lastOK = now
			continue
		}
		s.m.HeartbeatErrors.Inc()
		if errors.Is(err, errGiveUp) {
			gen.fail(err)
			return
		}
		gen.beatFailing.Store(true)
		s.m.HeartbeatFailing.Set(1)
		if unsaved := now.Sub(lastOK); unsaved >= s.cfg.Lease.TTL {
			gen.fail(fmt.Errorf("no heartbeat applied for %s, the lease TTL: a crash would lose that much of every life's age (last error: %w)",
				unsaved.Round(time.Millisecond), err))
			return
		}
		if now.Sub(lastLog) >= failingLogEvery {
			lastLog = now
			s.log.Warn("heartbeats are failing: the lives' ages are not checkpointed; the member is not ready, and gives its lives up if this lasts the lease TTL",
				"err", err, "unsaved_for", now.Sub(lastOK).Round(time.Millisecond), "ttl", s.cfg.Lease.TTL)
		}
	}
}

// failingLogEvery is how often a member says that its heartbeats fail.
const failingLogEvery = 5 * time.Second

// errGiveUp marks a heartbeat failure after which the session cannot go on
// (its member record belongs to another session, etcd went back in time):
// the member gives the session up at once.
var errGiveUp = errors.New("the session cannot go on")

// beatClock returns the clock for a heartbeat now; false when no life may
// run (the session is lost or ending): a heartbeat then would count time
// the lives did not run.
func (s *Supervisor) beatClock() (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.heldClosed {
		return 0, false
	}
	return s.clockMS(time.Now()), true
}

// beat writes gen's heartbeat with clock. The Txn is guarded by the member
// record being on gen's lease, so a member whose lease expired cannot make
// its lives older, and by the heartbeat's last revision, so that an older
// beat applied late cannot replace a newer one.
//
// It repairs what someone else changed, in the same Txn: a deleted member
// record is written again on gen's lease (etcd refuses a put on a lease
// that has expired, so this cannot revive a dead session), and a deleted or
// foreign heartbeat is replaced. A member record on another lease (another
// member with this id registered after ours was deleted), or an etcd whose
// revision went back (restored from an older snapshot), cannot be repaired:
// the error wraps errGiveUp. The caller holds writeMu: one heartbeat at a
// time, ordered with the final records of stopped lives.
func (s *Supervisor) beat(ctx context.Context, gen *generation, clock int64, also ...clientv3.Op) error {
	if clock <= gen.beatClock {
		return nil // a later one is written already
	}
	k, lease := s.cfg.Keys, int64(gen.sess.Lease())
	key, member := k.Heartbeat(lease), k.Member(s.cfg.ID)
	val := string(registry.Heartbeat{Member: s.cfg.ID, ClockMS: clock, Time: time.Now().UTC().Round(0)}.Marshal())
	memberCmp := clientv3.Compare(clientv3.LeaseValue(member), "=", lease)
	var repair []clientv3.Op
	for range 3 {
		then := append(append([]clientv3.Op{clientv3.OpPut(key, val)}, repair...), also...)
		resp, err := s.cfg.Client.Txn(ctx).
			If(memberCmp, clientv3.Compare(clientv3.ModRevision(key), "=", gen.beatRev)).
			Then(then...).
			Else(clientv3.OpGet(member), clientv3.OpGet(key)).
			Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			if repair != nil {
				s.log.Warn("the member record was deleted by someone else; wrote it again", "key", member)
			}
			gen.beatRev, gen.beatClock = resp.Header.Revision, clock
			s.m.Heartbeats.Inc()
			return nil
		}
		if resp.Header.Revision < gen.beatRev {
			return fmt.Errorf("%w: etcd is at revision %d, before this member's last heartbeat at %d: was it restored from an older snapshot?",
				errGiveUp, resp.Header.Revision, gen.beatRev)
		}
		tr := (*etcdserverpb.TxnResponse)(resp)
		m, hb := firstKV(tr, 0), firstKV(tr, 1)
		switch {
		case m == nil:
			memberCmp = clientv3.Compare(clientv3.CreateRevision(member), "=", 0)
			repair = []clientv3.Op{clientv3.OpPut(member, string(s.memberRecord(s.heldCount()).Marshal()), clientv3.WithLease(gen.sess.Lease()))}
		case m.Lease != lease:
			return fmt.Errorf("%w: the member record %s is on lease %x, not this session's %x: another member with id %q registered",
				errGiveUp, member, m.Lease, lease, s.cfg.ID)
		}
		switch {
		case hb == nil:
			if gen.beatRev != 0 {
				s.log.Warn("this member's heartbeat was deleted by someone else; writing it again", "key", key)
			}
			gen.beatRev = 0
		case hb.ModRevision != gen.beatRev:
			gen.beatRev = hb.ModRevision
			b, err := registry.ParseHeartbeat(hb.Value)
			if err == nil && b.Member == s.cfg.ID && b.ClockMS > gen.beatClock && b.ClockMS < clock {
				gen.beatClock = b.ClockMS // our own earlier beat, applied although its answer was lost
				continue
			}
			s.log.Warn("this member's heartbeat was overwritten by someone else; writing its own again", "key", key)
		}
	}
	return errors.New("heartbeat: its keys kept changing under it")
}

// heldCount is the number of lives held now.
func (s *Supervisor) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// finalCheckpoints stops every held life and writes one last heartbeat at
// the moment they stopped: each life's age as a successor reads it is then
// its age when it stopped. The elections of gen end first; when the
// member's candidacies fit in the same Txn, it deletes them too, so peers
// take over without waiting for the revoke that follows.
// It returns the lives and when they stopped, for the log.
func (s *Supervisor) finalCheckpoints(ctx context.Context, gen *generation) ([]*heldLife, time.Time, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	lives := s.takeAllHeld()
	now := time.Now()
	gen.cancel()
	err := s.beat(ctx, gen, s.clockMS(now), s.resignOps(gen)...)
	s.m.Lost.WithLabelValues("shutdown").Add(float64(len(lives)))
	return lives, now, err
}

// resignOps returns the deletes of the member's candidacies in gen, or
// none when they do not fit in one Txn with a heartbeat (the revoke deletes
// them then).
func (s *Supervisor) resignOps(gen *generation) []clientv3.Op {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen {
		return nil
	}
	lease := int64(gen.sess.Lease())
	var ops []clientv3.Op
	for _, c := range s.cands {
		if c.rev == 0 {
			continue
		}
		if len(ops)+1 >= maxTxnOps {
			return nil
		}
		ops = append(ops, clientv3.OpDelete(s.cfg.Keys.Candidacy(c.name, lease)))
	}
	return ops
}

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
		return // looked at again at the next sweep
	}
	for _, h := range lives {
		if rev, ok := revs[h.name]; ok && rev.mod <= h.lastRev.Load() {
			continue // ours, or older than our last write (which the range missed)
		}
		resp, err := s.cfg.Client.Get(ctx, s.cfg.Keys.Age(h.name))
		if err != nil {
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
		for _, ev := range wr.Events {
			name := registry.NameOf(k.Ages(), string(ev.Kv.Key))
			s.mu.Lock()
			h := s.held[name]
			s.mu.Unlock()
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

// collectBeats deletes the heartbeats of dead members once no age record
// needs them: every life they ran has been taken over (each successor's
// first write replaces the record) or has ended. A running record of a
// dead member whose life has ended (its request deleted or replaced while
// nobody ran it) is deleted on the way, as its holder would have. One member
// does this, the first of the live members in id order; it reads every age
// record only while there is a dead member's heartbeat.
func (s *Supervisor) collectBeats(ctx context.Context) {
	s.mu.Lock()
	first := len(s.members) > 0 && s.members[0] == s.cfg.ID
	live := make(map[int64]bool, len(s.leases))
	for _, l := range s.leases {
		live[l] = true
	}
	if s.gen != nil {
		live[int64(s.gen.sess.Lease())] = true
	}
	s.mu.Unlock()
	if !first {
		return
	}
	k := s.cfg.Keys
	_, beats, err := registry.RangeAll(ctx, s.cfg.Client, k.Heartbeats(), 0)
	if err != nil {
		return
	}
	dead := make(map[int64]*mvccpb.KeyValue)
	for _, kv := range beats {
		l, ok := k.HeartbeatLease(string(kv.Key))
		if !ok || live[l] {
			continue
		}
		ttl, err := s.cfg.Client.TimeToLive(ctx, clientv3.LeaseID(l))
		if err != nil || ttl.TTL > 0 {
			continue // alive (a member not yet registered), or unknown
		}
		dead[l] = kv
	}
	if len(dead) == 0 {
		return
	}
	referenced, err := s.sweepAges(ctx, dead)
	if err != nil {
		return
	}
	for l, kv := range dead {
		if referenced[l] {
			continue // some of its lives have not been taken over yet
		}
		resp, err := s.cfg.Client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(string(kv.Key))).
			Commit()
		if err == nil && resp.Succeeded {
			s.log.Info("deleted the heartbeat of a gone member: every life it ran has moved or ended", "lease", fmt.Sprintf("%x", l))
		}
	}
}

// sweepAges reads every age record and returns which of the dead leases
// running records are still on. A running record on a dead lease whose life
// has ended is deleted instead: guarded by its revision and by the request
// key not being that life, so a life that is wanted keeps its age.
func (s *Supervisor) sweepAges(ctx context.Context, dead map[int64]*mvccpb.KeyValue) (map[int64]bool, error) {
	k := s.cfg.Keys
	_, kvs, err := registry.RangeAll(ctx, s.cfg.Client, k.Ages(), 0)
	if err != nil {
		return nil, err
	}
	lives, err := s.revisions(ctx, k.Lives())
	if err != nil {
		return nil, err
	}
	out := make(map[int64]bool)
	for _, kv := range kvs {
		rec, err := registry.ParseAgeRecord(kv.Value)
		if err != nil || !rec.Running() || dead[rec.Lease] == nil {
			continue
		}
		name := registry.NameOf(k.Ages(), string(kv.Key))
		if req, ok := lives[name]; ok && req.create == rec.LifeID {
			out[rec.Lease] = true // still wanted: its successor needs the heartbeat
			continue
		}
		resp, err := s.cfg.Client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision),
				clientv3.Compare(clientv3.CreateRevision(k.Life(name)), "!=", rec.LifeID)).
			Then(clientv3.OpDelete(string(kv.Key))).
			Commit()
		if err != nil {
			return nil, err
		}
		if !resp.Succeeded {
			out[rec.Lease] = true // it changed meanwhile: look again next time
		}
	}
	return out, nil
}

// firstKV is the first key of the i-th range response of a Txn, or nil.
func firstKV(t *etcdserverpb.TxnResponse, i int) *mvccpb.KeyValue {
	if i >= len(t.GetResponses()) {
		return nil
	}
	kvs := t.Responses[i].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil
	}
	return kvs[0]
}
