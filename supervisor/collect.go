package supervisor

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// The heartbeat of a member that is gone stays while an age record needs
// it; the first live member in id order deletes it afterwards (sweep).

// collectBeats deletes the heartbeats of dead members once no age record
// needs them: every life they ran has been taken over (each successor's
// first write replaces the record) or has ended. A running record of a
// dead member whose life has ended (its request deleted or replaced while
// nobody ran it) is deleted on the way, as its holder would have. One member
// does this, the first of the live members in id order; it reads every age
// record only while there is a dead member's heartbeat.
func (s *Supervisor) collectBeats(ctx context.Context) {
	s.mu.Lock()
	first, live := s.eng.FirstMember()
	s.mu.Unlock()
	if !first {
		return
	}
	k := s.cfg.Keys
	_, beats, err := registry.RangeAll(ctx, s.cfg.Client, k.Heartbeats(), 0)
	if err != nil {
		s.sweepFailed(ctx, "cannot read the heartbeats to collect those of gone members", err)
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
		s.sweepFailed(ctx, "cannot read or clean the age records of gone members", err)
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
		switch {
		case err != nil:
			s.sweepFailed(ctx, "cannot delete the heartbeat of a gone member", err)
		case resp.Succeeded:
			s.log.Info("deleted the heartbeat of a gone member: every life it ran has moved or ended", "lease", fmt.Sprintf("%x", l))
		}
	}
}

// sweepFailed logs a failed step of the sweep, which tries it again at the
// next sweep (sweepEvery); nothing when ctx ended (Run is returning).
func (s *Supervisor) sweepFailed(ctx context.Context, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	s.log.Warn(what+"; will retry at the next sweep", "err", err, "every", sweepEvery)
}

// sweepAges reads every age record and returns which of the dead leases
// running records are still on. A running record on a dead lease whose life
// has ended is deleted instead, with the life's state record when it is of
// the same life: guarded by their revisions and by the request key not
// being that life, so a life that is wanted keeps its age and state.
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
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision),
			clientv3.Compare(clientv3.CreateRevision(k.Life(name)), "!=", rec.LifeID)}
		then := []clientv3.Op{clientv3.OpDelete(string(kv.Key))}
		// The life's state record goes with it, if it is of the same life
		// and unchanged since read.
		st, err := s.cfg.Client.Get(ctx, k.State(name))
		if err != nil {
			return nil, err
		}
		if len(st.Kvs) > 0 {
			if srec, err := registry.ParseStateRecord(st.Kvs[0].Value); err == nil && srec.LifeID == rec.LifeID {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.State(name)), "=", st.Kvs[0].ModRevision))
				then = append(then, clientv3.OpDelete(k.State(name)))
			}
		}
		resp, err := s.cfg.Client.Txn(ctx).If(cmps...).Then(then...).Commit()
		if err != nil {
			return nil, err
		}
		if !resp.Succeeded {
			out[rec.Lease] = true // it changed meanwhile: look again next time
		}
	}
	return out, nil
}
