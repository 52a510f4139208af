package supervisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/supervisor/engine"
)

// A member checkpoints every life it runs with one write per interval: its
// heartbeat, heartbeats/<lease-hex>, holds the member's clock. A life's age
// record is written when the life starts (its age then, the lease it runs
// on and the member's clock then), and when it stops; in between its age is
// the record's age plus the time from the record's clock to the heartbeat's
// (registry.AgeRecord.At). So the load on etcd is one write per member per
// interval whatever the number of lives, and a crash loses at most the time
// since the last heartbeat, as it did with one write per life.

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
		// final record (a handoff or clean-up batch): the final age would
		// then be below the age the heartbeat showed. The lane orders it.
		var err error
		skipped := true
		var t0 time.Time
		gen.lane.do(func() {
			clock, ok := s.beatClock()
			if !ok {
				return // every life was taken away: nothing may grow older
			}
			skipped = false
			ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(gen.ctx), s.batchTimeout())
			t0 = time.Now()
			err = s.beat(ctx, gen, clock)
			cancel()
		})
		if skipped {
			continue
		}
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
	if s.eng.Closed() {
		return 0, false
	}
	return s.eng.ClockMS(time.Now()), true
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
// the error wraps errGiveUp. The caller runs in gen's lane: one heartbeat
// at a time, ordered with the final records of stopped lives.
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
		m, hb := engine.FirstKV(tr, 0), engine.FirstKV(tr, 1)
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
	return s.eng.HeldCount()
}

// finalCheckpoints stops every held life and writes one last heartbeat at
// the moment they stopped: each life's age as a successor reads it is then
// its age when it stopped. The elections of gen end first; when the
// member's candidacies fit in the same Txn, it deletes them too, so peers
// take over without waiting for the revoke that follows.
// It returns the lives and when they stopped, for the log.
func (s *Supervisor) finalCheckpoints(ctx context.Context, gen *generation) (lives []*engine.Life, now time.Time, err error) {
	ran := gen.lane.do(func() {
		s.expireRuns("shutdown: its stop took too long")
		lives = s.takeAllHeld()
		now = time.Now()
		gen.cancel()
		err = s.beat(ctx, gen, s.eng.ClockMS(now), s.resignOps(gen)...)
		s.m.Lost.WithLabelValues("shutdown").Add(float64(len(lives)))
	})
	if !ran {
		return nil, time.Now(), errors.New("the generation ended before its final checkpoint")
	}
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
	names := s.eng.Candidacies()
	if len(names)+1 >= engine.MaxTxnOps {
		return nil
	}
	lease := int64(gen.sess.Lease())
	ops := make([]clientv3.Op, 0, len(names))
	for _, name := range names {
		ops = append(ops, clientv3.OpDelete(s.cfg.Keys.Candidacy(name, lease)))
	}
	return ops
}
