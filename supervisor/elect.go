package supervisor

import (
	"context"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/supervisor/engine"
)

// The election loop: it takes the steps the engine has ready, in batches
// (engine.Take), and sends them, as many as InFlight at once. An ordered
// batch (it writes the final age of a life that ran) goes through the
// generation's lane.

// electLoop sends election batches for gen until its context ends.
func (s *Supervisor) electLoop(gen *generation) {
	sem := make(chan struct{}, s.cfg.InFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		next := s.eng.NextDue()
		s.mu.Unlock()
		for {
			select {
			case sem <- struct{}{}:
			case <-gen.ctx.Done():
				return
			}
			var plain, ordered *engine.Batch
			s.mu.Lock()
			if s.gen == gen {
				plain, ordered = s.eng.Take()
			}
			s.mu.Unlock()
			var batches []*engine.Batch
			for _, b := range []*engine.Batch{plain, ordered} {
				if b != nil {
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
					if b.Ordered {
						gen.lane.do(func() { s.sendBatch(gen, b) })
					} else {
						s.sendBatch(gen, b)
					}
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

// sendBatch prepares, sends and answers one batch.
func (s *Supervisor) sendBatch(gen *generation, b *engine.Batch) {
	s.mu.Lock()
	ops := s.eng.Prepare(b)
	s.mu.Unlock()
	if ops == nil {
		return
	}
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(gen.ctx), s.batchTimeout())
	resp, err := s.cfg.Client.Txn(ctx).Then(ops...).Commit()
	cancel()
	s.m.ElectionTxns.Inc()
	if err != nil {
		s.m.ElectionErrors.Inc()
	}
	s.mu.Lock()
	first := s.eng.Answer(b, resp, err)
	s.mu.Unlock()
	if first && gen.ctx.Err() == nil {
		s.log.Warn("election batch failed; will retry", "lives", b.Len(), "err", err)
	}
}

// watchElections watches deletions under elections/ from rev for gen: a
// deleted key may make a waiting candidate the leader, and the deletion of
// a held life's own key means the life is lost (engine.ElectionKeysDeleted).
func (s *Supervisor) watchElections(gen *generation, rev int64) {
	k := s.cfg.Keys
	handle := func(wr clientv3.WatchResponse) {
		keys := make([]string, len(wr.Events))
		for i, ev := range wr.Events {
			keys[i] = string(ev.Kv.Key)
		}
		var lead []string
		s.mu.Lock()
		if s.gen == gen {
			lead = s.eng.ElectionKeysDeleted(keys)
		}
		s.mu.Unlock()
		if len(lead) == 0 {
			return
		}
		// The holder that left most likely wrote a last heartbeat first:
		// one read of the heartbeats, so that the direct starts carry the
		// ages forward to it.
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(gen.ctx), s.batchTimeout())
		resp, err := s.cfg.Client.Get(ctx, k.Heartbeats(), clientv3.WithPrefix())
		cancel()
		var beats []*mvccpb.KeyValue
		if err == nil {
			beats = resp.Kvs
		} else if gen.ctx.Err() == nil {
			// The starts go on: a heartbeat that moved fails their Txn,
			// which reads it then.
			s.log.Warn("cannot read the heartbeats before starting lives directly", "lives", len(lead), "err", err)
		}
		s.mu.Lock()
		if s.gen == gen {
			s.eng.Lead(lead, beats)
		}
		s.mu.Unlock()
	}
	// The watch broke (compaction, lost leader): look at every waiting
	// candidacy again.
	resync := func() {
		s.log.Warn("election watch ended; checking every candidacy again")
		s.mu.Lock()
		if s.gen == gen {
			s.eng.ElectionWatchBroke()
		}
		s.mu.Unlock()
	}
	s.watchGen(gen, k.Elections(), rev, handle, resync, clientv3.WithFilterPut())
}
