package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// batchesInFlight bounds concurrent checkpoint Txns of one round.
const batchesInFlight = 4

// checkpointLoop writes every held life's age each CheckpointInterval.
func (s *Supervisor) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CheckpointInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.writeMu.Lock()
		lives := s.snapshotHeld()
		wctx, cancel := context.WithTimeout(ctx, s.cfg.Lease.TTL)
		_, err := s.writeAges(wctx, lives, time.Now())
		cancel()
		s.writeMu.Unlock()
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

// finalCheckpoints stops every held life and writes its last age.
func (s *Supervisor) finalCheckpoints(ctx context.Context) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	lives := s.takeAllHeld()
	now := time.Now()
	applied, err := s.writeAges(ctx, lives, now)
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
// returns how many were applied. The caller holds writeMu.
func (s *Supervisor) writeAges(ctx context.Context, lives []*heldLife, now time.Time) (int, error) {
	var (
		mu      sync.Mutex
		applied int
		errs    []error
		wg      sync.WaitGroup
		sem     = make(chan struct{}, batchesInFlight)
	)
	for start := 0; start < len(lives); start += maxTxnOps {
		batch := lives[start:min(start+maxTxnOps, len(lives))]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			n, err := s.writeBatch(ctx, batch, now)
			mu.Lock()
			applied += n
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return applied, errors.Join(errs...)
}

func (s *Supervisor) writeBatch(ctx context.Context, batch []*heldLife, now time.Time) (int, error) {
	k := s.cfg.Keys
	ops := make([]clientv3.Op, len(batch))
	ages := make([]int64, len(batch))
	for i, h := range batch {
		rec := h.record(now)
		if rec.AgeMS < h.lastAge {
			rec.AgeMS = h.lastAge // never write a smaller age, whatever the clock did
		}
		ages[i] = rec.AgeMS
		ops[i] = clientv3.OpTxn(h.fence(k), []clientv3.Op{clientv3.OpPut(k.Age(h.name), string(rec.Marshal()))}, nil)
	}
	s.m.CheckpointTxns.Inc()
	resp, err := s.cfg.Client.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		s.m.CheckpointErrors.Inc()
		return 0, err
	}
	applied := 0
	for i, r := range resp.Responses {
		h := batch[i]
		if r.GetResponseTxn().GetSucceeded() {
			applied++
			h.lastRev.Store(resp.Header.Revision)
			h.lastAge = ages[i]
			continue
		}
		h.markLost()
	}
	s.m.Checkpoints.Add(float64(applied))
	return applied, nil
}
