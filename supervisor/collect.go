package supervisor

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// What no holder will delete is collected by the first live member in id
// order, at each sweep: the heartbeats of gone members once no age record
// needs them, and the age and state records of lives that are no longer
// wanted and that no live holder owns (orphans). A holder deletes the
// records of a life it runs when the life is deleted; the orphans are what
// is left when nobody ran it then: its holder crashed (perhaps before its
// first heartbeat, so no heartbeat names its lease), or it had stopped for
// good (an invalid request, a kind no member runs), or the record is of an
// earlier life of the name.

// collectBeats is the sweep's collection, a no-op on every member but the
// first live one by id. It deletes:
//
//   - every age record whose life is not the request's (no lives/<name>, or
//     CreateRevision(lives/<name>) != its life_id) and that no live holder
//     owns: it is stopped (lease 0), or running on a lease that is no live
//     member's and that etcd says has expired or was revoked. Its state
//     record goes with it, in the same Txn, when it is of the same life id;
//   - every state record whose life_id is not the request's, unless
//     ages/<name> is a record of the same life id running on a live lease
//     (its holder deletes both);
//   - with every state record it deletes, the life's child record
//     (children/<name>): the holder writes the two in one Txn, so the
//     guard on the state record's revision covers both; and every child
//     record without a state record whose life_id is not the request's;
//   - the heartbeat of every such gone lease that no record of a wanted life
//     runs on: every life it ran has moved or ended.
//
// Every delete is a Txn guarded by the key's ModRevision as read and, for
// records, by CreateRevision(lives/<name>) != life_id, so a life that is
// wanted by the time the Txn applies keeps its age and state, and any write
// of a holder since the read wins. Records that do not parse, and the
// quarantine keys, are left for the user.
//
// Its cost when there is nothing to collect is five keys-only ranges, read
// in pages (requests, heartbeats, ages, states, children): a record's value is read
// only when its key alone says it may be an orphan (no request, or a
// ModRevision before the request's creation: a holder's writes are fenced
// by the life id, so no record of another life is written after it), and
// every age record's value only while there is a gone member's heartbeat
// (to learn which leases the wanted lives still run on). A record of
// another life that someone other than a holder wrote after the request's
// creation is collected only at a sweep of the latter kind. Each sweep that deletes something logs one
// line with the counts and adds them to Metrics.Collected. A failed step
// is logged (sweepFailed) and the rest of the sweep is skipped; the next
// sweep starts over.
func (s *Supervisor) collectBeats(ctx context.Context) {
	s.mu.Lock()
	first, live := s.eng.FirstMember()
	s.mu.Unlock()
	if !first {
		return
	}
	c := &collection{s: s, live: live, gone: make(map[int64]bool)}
	c.run(ctx)
	c.report()
}

// collection is the state of one sweep's collectBeats.
type collection struct {
	s    *Supervisor
	live map[int64]bool // the live members' leases, as this member sees them
	// gone caches leaseGone for leases outside live, per sweep.
	gone map[int64]bool
	// lives are the requests' revisions by name, read keys-only.
	lives map[string]keyRevs
	// What this sweep deleted.
	ages, states, children, beats int
}

// run carries out the sweep's collection; a step that fails is logged and
// ends it.
func (c *collection) run(ctx context.Context) {
	s, k := c.s, c.s.cfg.Keys
	lives, err := s.revisions(ctx, k.Lives())
	if err != nil {
		s.sweepFailed(ctx, "cannot read the requests to collect orphaned records", err)
		return
	}
	c.lives = lives
	_, beats, err := registry.RangeAll(ctx, s.cfg.Client, k.Heartbeats(), 0, clientv3.WithKeysOnly())
	if err != nil {
		s.sweepFailed(ctx, "cannot read the heartbeats to collect those of gone members", err)
		return
	}
	dead := make(map[int64]*mvccpb.KeyValue)
	for _, kv := range beats {
		if l, ok := k.HeartbeatLease(string(kv.Key)); ok && c.leaseGone(ctx, l) {
			dead[l] = kv
		}
	}
	referenced, err := c.collectAges(ctx, len(dead) > 0)
	if err != nil {
		s.sweepFailed(ctx, "cannot read or clean the age records of ended lives", err)
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
		if err != nil {
			s.sweepFailed(ctx, "cannot delete the heartbeat of a gone member", err)
			return
		}
		if resp.Succeeded {
			c.beats++
		}
	}
	if err := c.collectStates(ctx); err != nil {
		s.sweepFailed(ctx, "cannot read or clean the state records of ended lives", err)
		return
	}
	if err := c.collectChildren(ctx); err != nil {
		s.sweepFailed(ctx, "cannot read or clean the child records of ended lives", err)
	}
}

// report logs and counts what the sweep deleted, if anything.
func (c *collection) report() {
	if c.ages+c.states+c.children+c.beats == 0 {
		return
	}
	m := c.s.m.Collected
	m.WithLabelValues("age").Add(float64(c.ages))
	m.WithLabelValues("state").Add(float64(c.states))
	m.WithLabelValues("child").Add(float64(c.children))
	m.WithLabelValues("heartbeat").Add(float64(c.beats))
	c.s.log.Info("collected the records of ended lives that no live holder owns, and the heartbeats of gone members",
		"ages", c.ages, "states", c.states, "children", c.children, "heartbeats", c.beats)
}

// leaseGone reports whether lease l is of no live member and etcd says it
// has expired or was revoked. A lease etcd still keeps (a member not yet
// registered), or one etcd could not be asked about, is not gone.
func (c *collection) leaseGone(ctx context.Context, l int64) bool {
	if c.live[l] {
		return false
	}
	if g, ok := c.gone[l]; ok {
		return g
	}
	ttl, err := c.s.cfg.Client.TimeToLive(ctx, clientv3.LeaseID(l))
	g := err == nil && ttl.TTL <= 0
	if err == nil {
		c.gone[l] = g // an error is asked again at the next record
	}
	return g
}

// mayBeOrphan reports whether the record kv of the life name may belong to
// a life that is not the request's, by its key alone: there is no request,
// or the record was last written before the request was created (a holder
// of the request's life writes only after that).
func (c *collection) mayBeOrphan(name string, kv *mvccpb.KeyValue) bool {
	req, ok := c.lives[name]
	return !ok || kv.ModRevision < req.create
}

// wanted reports whether lifeID is the life of the request for name.
func (c *collection) wanted(name string, lifeID int64) bool {
	req, ok := c.lives[name]
	return ok && req.create == lifeID
}

// collectAges deletes the orphaned age records (see collectBeats) and
// returns the leases that records of wanted lives still run on, or that
// records which changed since they were read ran on. all says to read
// every record's value (there is a gone member's heartbeat: which leases
// are referenced matters); otherwise only those of possible orphans.
func (c *collection) collectAges(ctx context.Context, all bool) (map[int64]bool, error) {
	s, k := c.s, c.s.cfg.Keys
	var kvs []*mvccpb.KeyValue
	if all {
		_, got, err := registry.RangeAll(ctx, s.cfg.Client, k.Ages(), 0)
		if err != nil {
			return nil, err
		}
		kvs = got
	} else {
		_, keys, err := registry.RangeAll(ctx, s.cfg.Client, k.Ages(), 0, clientv3.WithKeysOnly())
		if err != nil {
			return nil, err
		}
		for _, kv := range keys {
			if !c.mayBeOrphan(registry.NameOf(k.Ages(), string(kv.Key)), kv) {
				continue
			}
			resp, err := s.cfg.Client.Get(ctx, string(kv.Key))
			if err != nil {
				return nil, err
			}
			kvs = append(kvs, resp.Kvs...) // none: deleted since
		}
	}
	referenced := make(map[int64]bool)
	for _, kv := range kvs {
		rec, err := registry.ParseAgeRecord(kv.Value)
		if err != nil {
			continue // the holder's to quarantine, or the user's
		}
		name := registry.NameOf(k.Ages(), string(kv.Key))
		if c.wanted(name, rec.LifeID) {
			if rec.Running() {
				referenced[rec.Lease] = true // its successor needs the heartbeat
			}
			continue
		}
		if rec.Running() && !c.leaseGone(ctx, rec.Lease) {
			continue // its live holder deletes it when it sees the request go
		}
		ok, err := c.deleteAge(ctx, name, kv, rec)
		if err != nil {
			return nil, err
		}
		if !ok && rec.Running() {
			referenced[rec.Lease] = true // it changed meanwhile: look again next time
		}
	}
	return referenced, nil
}

// deleteAge deletes the orphaned age record kv of name, and the life's
// state record when it is of the same life id, in one Txn guarded by their
// revisions and by the request not being that life. It reports whether the
// Txn applied.
func (c *collection) deleteAge(ctx context.Context, name string, kv *mvccpb.KeyValue, rec registry.AgeRecord) (bool, error) {
	s, k := c.s, c.s.cfg.Keys
	cmps := c.orphanGuard(name, kv, rec.LifeID)
	then := []clientv3.Op{clientv3.OpDelete(string(kv.Key))}
	st, err := s.cfg.Client.Get(ctx, k.State(name))
	if err != nil {
		return false, err
	}
	withState := false
	if len(st.Kvs) > 0 {
		if srec, err := registry.ParseStateRecord(st.Kvs[0].Value); err == nil && srec.LifeID == rec.LifeID {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.State(name)), "=", st.Kvs[0].ModRevision))
			then = append(then, clientv3.OpDelete(k.State(name)), clientv3.OpDelete(k.Child(name)))
			withState = true
		}
	}
	resp, err := s.cfg.Client.Txn(ctx).If(cmps...).Then(then...).Commit()
	if err != nil {
		return false, err
	}
	if resp.Succeeded {
		c.ages++
		if withState {
			c.states++
		}
	}
	return resp.Succeeded, nil
}

// collectStates deletes the orphaned state records (see collectBeats). It
// lists states/ keys-only and reads, for each possible orphan, the record
// and ages/<name> in one snapshot.
func (c *collection) collectStates(ctx context.Context) error {
	s, k := c.s, c.s.cfg.Keys
	_, keys, err := registry.RangeAll(ctx, s.cfg.Client, k.States(), 0, clientv3.WithKeysOnly())
	if err != nil {
		return err
	}
	for _, key := range keys {
		name := registry.NameOf(k.States(), string(key.Key))
		if !c.mayBeOrphan(name, key) {
			continue
		}
		resp, err := s.cfg.Client.Txn(ctx).Then(clientv3.OpGet(k.State(name)), clientv3.OpGet(k.Age(name))).Commit()
		if err != nil {
			return err
		}
		sts, ages := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
		if len(sts) == 0 {
			continue // deleted since
		}
		kv := sts[0]
		srec, err := registry.ParseStateRecord(kv.Value)
		if err != nil || c.wanted(name, srec.LifeID) {
			continue // corrupt (the holder's to quarantine), or wanted
		}
		if len(ages) > 0 {
			if rec, err := registry.ParseAgeRecord(ages[0].Value); err == nil && rec.LifeID == srec.LifeID &&
				rec.Running() && !c.leaseGone(ctx, rec.Lease) {
				continue // its live holder deletes both when it sees the request go
			}
		}
		tr, err := s.cfg.Client.Txn(ctx).If(c.orphanGuard(name, kv, srec.LifeID)...).Then(clientv3.OpDelete(string(kv.Key)), clientv3.OpDelete(k.Child(name))).Commit()
		if err != nil {
			return err
		}
		if tr.Succeeded {
			c.states++
		}
	}
	return nil
}

// collectChildren deletes the child records left without their state
// record (a holder writes and deletes the two together, so only a member
// of a version before child records, or a hand, leaves one) whose life_id
// is not the request's. It lists children/ keys-only; a record is read
// only when its key says it may be an orphan, and deleted only while
// states/<name> does not exist. A record that does not parse is left.
func (c *collection) collectChildren(ctx context.Context) error {
	s, k := c.s, c.s.cfg.Keys
	_, keys, err := registry.RangeAll(ctx, s.cfg.Client, k.Children(), 0, clientv3.WithKeysOnly())
	if err != nil {
		return err
	}
	for _, key := range keys {
		name := registry.NameOf(k.Children(), string(key.Key))
		if !c.mayBeOrphan(name, key) {
			continue
		}
		resp, err := s.cfg.Client.Txn(ctx).Then(clientv3.OpGet(k.Child(name)), clientv3.OpGet(k.State(name), clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return err
		}
		chs, sts := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
		if len(chs) == 0 || len(sts) > 0 {
			continue // deleted since, or goes with its state record
		}
		rec, err := registry.ParseChildRecord(chs[0].Value)
		if err != nil || c.wanted(name, rec.LifeID) {
			continue
		}
		guard := append(c.orphanGuard(name, chs[0], rec.LifeID), clientv3.Compare(clientv3.CreateRevision(k.State(name)), "=", 0))
		tr, err := s.cfg.Client.Txn(ctx).If(guard...).Then(clientv3.OpDelete(k.Child(name))).Commit()
		if err != nil {
			return err
		}
		if tr.Succeeded {
			c.children++
		}
	}
	return nil
}

// orphanGuard is the guard of an orphan's delete: the record kv unchanged
// since read, and lives/<name> not of lifeID (missing, or another life).
func (c *collection) orphanGuard(name string, kv *mvccpb.KeyValue, lifeID int64) []clientv3.Cmp {
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision),
		clientv3.Compare(clientv3.CreateRevision(c.s.cfg.Keys.Life(name)), "!=", lifeID),
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
