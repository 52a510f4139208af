package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// batchesInFlight bounds concurrent checkpoint Txns of one periodic round;
// final checkpoints, which a successor waits for, may use twice as many.
const batchesInFlight = 4

// checkpointLoop writes every held life's age each CheckpointInterval. When
// etcd cannot apply a round within the interval, rounds run back to back and
// a crash can lose up to a round's time: the round's duration is a metric, and
// the member says so in its log.
func (s *Supervisor) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CheckpointInterval)
	defer t.Stop()
	failing, slow := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lives := s.snapshotHeld()
		t0 := time.Now()
		_, err := s.writeAges(clientv3.WithRequireLeader(ctx), lives, t0, true)
		took := time.Since(t0)
		s.m.CheckpointRound.Set(took.Seconds())
		switch {
		case err == nil && !slow && took > s.cfg.CheckpointInterval:
			slow = true
			s.log.Warn("a checkpoint round takes longer than the interval: etcd cannot keep up, and a crash can lose up to a round",
				"lives", len(lives), "round", took.Round(time.Millisecond), "interval", s.cfg.CheckpointInterval)
		case slow && took <= s.cfg.CheckpointInterval:
			slow = false
			s.log.Info("checkpoint rounds fit the interval again", "lives", len(lives), "round", took.Round(time.Millisecond))
		}
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			failing = true
			s.log.Warn("checkpoints are failing; lives keep running until the lease's safe deadline", "err", err)
		case err == nil && failing:
			failing = false
			s.log.Info("checkpoints are applied again")
		}
	}
}

// batchTimeout bounds one checkpoint Txn: two intervals, at least TTL/2. A
// Txn stuck on an etcd member that died must not hold every checkpoint back
// for long; a write applied after its Txn gave up is recognised as our own
// at the next round.
func (s *Supervisor) batchTimeout() time.Duration {
	return max(2*s.cfg.CheckpointInterval, s.cfg.Lease.TTL/2)
}

// finalCheckpoints stops every held life and writes its last age. (Resigning
// each life in the same Txn lets successors start earlier but measured slower
// as a whole: their campaigns then compete with the final writes.)
func (s *Supervisor) finalCheckpoints(ctx context.Context) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	lives := s.takeAllHeld()
	now := time.Now()
	applied, err := s.writeAges(ctx, lives, now, false)
	for _, h := range lives {
		s.log.Info("life handed off: "+h.name, "name", h.name, "age", h.ageAt(now)/1000, "incarnation", h.incarnate)
	}
	s.m.Lost.WithLabelValues("shutdown").Add(float64(len(lives)))
	if err == nil && applied < len(lives) {
		err = fmt.Errorf("%d of %d final checkpoints failed their fence", len(lives)-applied, len(lives))
	}
	return len(lives), err
}

// writeAges writes the ages of lives, taken at now, in fenced batches: one
// outer Txn per batch with one nested, separately guarded Txn per life, so a
// life whose guard fails is stopped and the rest of the batch is applied. It
// returns how many were applied. Each Txn is bounded by batchTimeout; after
// one fails, no further batch of the round is sent. A periodic round
// (periodic) holds writeMu shared for each batch and skips lives stopped
// meanwhile; any other caller holds writeMu itself.
func (s *Supervisor) writeAges(ctx context.Context, lives []*heldLife, now time.Time, periodic bool) (int, error) {
	var (
		mu      sync.Mutex
		applied int
		errs    []error
		wg      sync.WaitGroup
		sem     = make(chan struct{}, batchesInFlight)
	)
	if !periodic {
		sem = make(chan struct{}, 2*batchesInFlight)
	}
	var failed atomic.Bool
	for start := 0; start < len(lives) && !failed.Load(); start += batchSize {
		batch := lives[start:min(start+batchSize, len(lives))]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if periodic {
				s.writeMu.RLock()
				defer s.writeMu.RUnlock()
				batch = slices.DeleteFunc(slices.Clone(batch), func(h *heldLife) bool { return h.stopped.Load() })
			}
			bctx, cancel := context.WithTimeout(ctx, s.batchTimeout())
			n, err := s.writeBatch(bctx, batch, now, false)
			cancel()
			mu.Lock()
			applied += n
			if err != nil {
				errs = append(errs, err)
				failed.Store(true) // etcd is in trouble: the rest waits for the next round
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return applied, errors.Join(errs...)
}

// writeBatch writes one batch. Lives whose own earlier write was applied
// unseen are written once more at once (retried reports that second pass).
func (s *Supervisor) writeBatch(ctx context.Context, batch []*heldLife, now time.Time, retried bool) (int, error) {
	if len(batch) == 0 {
		return 0, nil
	}
	k := s.cfg.Keys
	ops := make([]clientv3.Op, len(batch))
	recs := make([]registry.AgeRecord, len(batch))
	for i, h := range batch {
		recs[i] = h.nextRecord(now)
		ops[i] = clientv3.OpTxn(h.ageWrite(k, recs[i]))
	}
	s.m.CheckpointTxns.Inc()
	resp, err := s.cfg.Client.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		s.m.CheckpointErrors.Inc()
		return 0, err
	}
	applied := 0
	var again []*heldLife
	for i, r := range resp.Responses {
		h, sub := batch[i], r.GetResponseTxn()
		if sub.GetSucceeded() {
			applied++
			h.wrote(resp.Header.Revision, recs[i].AgeMS)
			continue
		}
		own, req, age := firstKV(sub, 0), firstKV(sub, 1), firstKV(sub, 2)
		if !h.fenceHolds(own, req) {
			s.lose(h, "a fenced write failed")
			continue
		}
		if h.isOwn(age) {
			// Our own earlier write, applied although its answer was lost
			// (a timeout): adopt its revision and write again.
			h.adopt(age)
			again = append(again, h)
			continue
		}
		// We still hold the life, but someone else wrote its age record.
		if s.repairAge(ctx, h, age, now) {
			applied++
		}
	}
	s.m.Checkpoints.Add(float64(applied))
	if len(again) > 0 && !retried {
		n, err := s.writeBatch(ctx, again, now, true)
		return applied + n, err
	}
	return applied, nil
}

// repairAge handles an age record that someone other than the holder wrote
// or deleted: the foreign bytes are kept in quarantine/<name>, never resumed
// and never silently overwritten, and the holder's own record is written
// again. It reports whether the record was written.
func (s *Supervisor) repairAge(ctx context.Context, h *heldLife, found *mvccpb.KeyValue, now time.Time) bool {
	k := s.cfg.Keys
	var (
		seen int64
		keep []byte
	)
	if found != nil {
		seen, keep = found.ModRevision, found.Value
		s.m.Quarantined.Inc()
		s.log.Error("age record was overwritten by someone other than its holder; keeping those bytes in quarantine and the life's own age",
			"name", h.name, "key", k.Age(h.name), "quarantine", k.Quarantine(h.name), "age", h.nextRecord(now).AgeMS/1000)
	} else {
		s.log.Warn("age record was deleted by someone other than its holder; writing it again", "name", h.name, "age", h.nextRecord(now).AgeMS/1000)
	}
	ok, err := s.writeOver(ctx, h, now, seen, keep)
	return err == nil && ok // if not, tried again at the next checkpoint
}

// writeOver writes h's record, with the age at t, over the age record that
// was last seen at revision seen (0: there was none). The Txn is fenced and
// also guarded by that revision, so nobody else's write in between is lost;
// keep, when not nil, is copied to quarantine/<name> in the same Txn. It
// reports whether the write was applied.
func (s *Supervisor) writeOver(ctx context.Context, h *heldLife, t time.Time, seen int64, keep []byte) (bool, error) {
	k := s.cfg.Keys
	rec := h.nextRecord(t)
	ops := []clientv3.Op{clientv3.OpPut(k.Age(h.name), string(rec.Marshal()))}
	if keep != nil {
		ops = append(ops, clientv3.OpPut(k.Quarantine(h.name), string(keep)))
	}
	resp, err := s.cfg.Client.Txn(ctx).
		If(append(h.fence(k), clientv3.Compare(clientv3.ModRevision(k.Age(h.name)), "=", seen))...).
		Then(ops...).
		Commit()
	if err != nil || !resp.Succeeded {
		return false, err
	}
	h.wrote(resp.Header.Revision, rec.AgeMS)
	return true, nil
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
