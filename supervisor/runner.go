package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/immortald/immortald/internal/backoff"
	"github.com/immortald/immortald/registry"
)

// runner campaigns for one life within one generation and runs it while it
// holds it.
type runner struct {
	s      *Supervisor
	gen    *generation
	life   registry.Life
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	after  <-chan struct{} // the previous runner of this name; wait for it
	placed chan struct{}   // the member set changed: look at placement again
	// stop says why the runner was stopped, when it was stopped for its
	// life's sake rather than because its generation ended.
	stop atomic.Int32
}

// Why a runner is stopped (runner.stop).
const (
	stopGeneration int32 = iota // the session ended: nothing to clean up, the lease takes it all
	stopEnded                   // the life was deleted or replaced: resign and delete its age record
	stopInvalid                 // the request became invalid: write the final age, resign, keep the record
)

// outcome is why a runner stopped holding a life.
type outcome int

const (
	outOK        outcome = iota // leadership verified; go on
	outStopped                  // the runner's context ended
	outGone                     // the request key is gone or is another life
	outFenced                   // a fenced write failed: someone else holds it
	outNotLeader                // Campaign returned but our key is not there
	outError                    // etcd could not be reached; try again
	outHandedOff                // given to the preferred member
)

// minHold is the least time a member runs a life before handing it to its
// preferred member.
const minHold = time.Second

// deferToPreferred is how long a candidate that is not the preferred member
// waits before its first campaign for a life.
const deferToPreferred = 250 * time.Millisecond

// errWithdrawn ends a campaign of a member that is no longer a candidate.
var errWithdrawn = errors.New("supervisor: no longer a candidate")

func (s *Supervisor) startRunnerLocked(l registry.Life, after <-chan struct{}) {
	ctx, cancel := context.WithCancel(s.gen.ctx)
	r := &runner{s: s, gen: s.gen, life: l, ctx: ctx, cancel: cancel, done: make(chan struct{}), after: after,
		placed: make(chan struct{}, 1)}
	s.runners[l.Name] = r
	s.gen.wg.Add(1)
	go r.run()
}

// stopRunnerLocked ends r for its life's sake (why is stopEnded or
// stopInvalid) and returns a channel closed when r has exited.
func (s *Supervisor) stopRunnerLocked(r *runner, why int32) <-chan struct{} {
	r.stop.Store(why)
	r.cancel()
	if s.runners[r.life.Name] == r {
		delete(s.runners, r.life.Name)
	}
	return r.done
}

// nudge tells r that placement may have changed; it never blocks.
func (r *runner) nudge() {
	select {
	case r.placed <- struct{}{}:
	default:
	}
}

func (r *runner) run() {
	defer r.gen.wg.Done()
	defer close(r.done)
	defer r.s.forgetRunner(r)
	if r.after != nil {
		select {
		case <-r.after:
		case <-r.ctx.Done():
			return
		}
	}
	s := r.s
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	if s.preferred(r.life.Name) != s.cfg.ID {
		// Let the preferred member campaign first, so a new life starts
		// where it belongs instead of moving there a moment later.
		select {
		case <-time.After(deferToPreferred):
		case <-r.ctx.Done():
			return
		}
	}
	for r.ctx.Err() == nil {
		if !s.isCandidate(r.life.Name) {
			return
		}
		if err := s.limiter.Wait(r.ctx); err != nil {
			return
		}
		el := concurrency.NewElection(r.gen.sess.Concurrency(), s.cfg.Keys.Election(r.life.Name))
		if err := r.campaign(el); err != nil {
			switch {
			case errors.Is(err, errWithdrawn):
				return
			case r.ctx.Err() != nil:
				return
			}
			s.log.Debug("campaign failed; will retry", "name", r.life.Name, "err", err)
			retry.Wait(r.ctx)
			continue
		}
		out, h := r.hold(el)
		switch out {
		case outStopped:
			switch r.stop.Load() {
			case stopEnded:
				r.resign(el, h)
			case stopInvalid:
				r.resign(el, nil)
			}
			return
		case outHandedOff:
			retry.Reset()
			continue // stay on as a waiting candidate, if still one
		case outGone:
			r.resign(el, nil)
			return
		case outFenced:
			s.log.Warn("lost the life: a fenced write failed", "name", r.life.Name)
			r.resign(el, nil)
		case outNotLeader:
			s.log.Warn("campaign returned without our election key (etcd #11051); not starting the life", "name", r.life.Name)
		case outError:
			r.resign(el, nil)
		}
		retry.Wait(r.ctx)
	}
}

// campaign runs Campaign until it wins, fails, the runner ends, or this
// member stops being a candidate. Campaign runs in its own goroutine: when
// etcd is unreachable, its clean-up (a Resign on the client's context) can
// block until etcd is back, and a runner whose generation ended must not
// wait for that. A runner that withdraws, or whose life ended, waits (a
// bounded time) and removes its candidacy, so that the next runner of the
// same name starts clean.
func (r *runner) campaign(el *concurrency.Election) error {
	cctx, cancel := context.WithCancel(clientv3.WithRequireLeader(r.ctx))
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- el.Campaign(cctx, r.s.cfg.ID) }()
	for {
		var why error
		select {
		case err := <-res:
			return err
		case <-r.placed:
			if r.s.isCandidate(r.life.Name) {
				continue
			}
			why = errWithdrawn
		case <-r.ctx.Done():
			why = r.ctx.Err()
		}
		cancel()
		if why == errWithdrawn || r.stop.Load() != stopGeneration {
			t := time.NewTimer(r.s.cfg.ShutdownTimeout)
			select {
			case <-res:
			case <-t.C:
			}
			t.Stop()
			r.dropCandidacy()
			return why
		}
		go func() {
			if err := <-res; err == nil {
				r.dropCandidacy()
			}
		}()
		return why
	}
}

// dropCandidacy deletes this member's key in the life's election. The key
// is named by the member's lease, so it can only be this runner's own.
func (r *runner) dropCandidacy() {
	key := fmt.Sprintf("%s/%x", r.s.cfg.Keys.Election(r.life.Name), int64(r.gen.sess.Lease()))
	ctx, cancel := context.WithTimeout(context.Background(), r.s.cfg.ShutdownTimeout)
	defer cancel()
	_, _ = r.s.cfg.Client.Delete(ctx, key)
}

// resign gives the candidacy up with a fresh context (a cancelled one would
// make Resign forget the key and leave it in etcd, etcd #22123). When h is
// given, the life was ended by the user: its age record goes too, unless
// someone wrote it after h did.
func (r *runner) resign(el *concurrency.Election, h *heldLife) {
	ctx, cancel := context.WithTimeout(context.Background(), r.s.cfg.ShutdownTimeout)
	defer cancel()
	if err := el.Resign(ctx); err != nil {
		r.s.log.Debug("resign failed; the key goes with the lease", "name", r.life.Name, "err", err)
	}
	if h != nil && h.lastRev.Load() > 0 {
		key := r.s.cfg.Keys.Age(r.life.Name)
		_, _ = r.s.cfg.Client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", h.lastRev.Load())).
			Then(clientv3.OpDelete(key)).
			Commit()
	}
}

// readStart reads, in one snapshot, what starting a life needs: that el's
// key is still ours (Campaign can return after its session expired, etcd
// #11051), that the request key is still this life, and the age record.
func readStart(ctx context.Context, cli *clientv3.Client, k registry.Keys, el *concurrency.Election, life registry.Life) (*mvccpb.KeyValue, outcome, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(el.Key()),
		clientv3.OpGet(k.Life(life.Name)),
		clientv3.OpGet(k.Age(life.Name)),
	).Commit()
	if err != nil {
		return nil, outError, err
	}
	own, req, age := firstKV((*etcdserverpb.TxnResponse)(resp), 0), firstKV((*etcdserverpb.TxnResponse)(resp), 1), firstKV((*etcdserverpb.TxnResponse)(resp), 2)
	if own == nil || own.CreateRevision != el.Rev() {
		return nil, outNotLeader, nil
	}
	if req == nil || req.CreateRevision != life.ID {
		return nil, outGone, nil
	}
	return age, outOK, nil
}

// hold verifies leadership, loads the age record, starts the life and runs
// it until it must stop or is handed to its preferred member.
func (r *runner) hold(el *concurrency.Election) (outcome, *heldLife) {
	s, k, name := r.s, r.s.cfg.Keys, r.life.Name
	old, out, err := readStart(r.ctx, s.cfg.Client, k, el, r.life)
	switch {
	case err != nil && r.ctx.Err() != nil:
		return outStopped, nil
	case out != outOK:
		return out, nil
	}

	h := &heldLife{
		name:      name,
		lifeID:    r.life.ID,
		ownKey:    el.Key(),
		ownRev:    el.Rev(),
		holder:    s.cfg.ID,
		incarnate: 1,
		lost:      make(chan struct{}),
	}
	var (
		seen int64
		keep []byte
	)
	if old != nil {
		seen = old.ModRevision
		rec, err := registry.ParseAgeRecord(old.Value)
		switch {
		case err != nil:
			// Never resume, never silently overwrite: keep the bytes.
			s.log.Error("age record does not parse; keeping its bytes in quarantine and starting the life at age 0",
				"name", name, "key", k.Age(name), "quarantine", k.Quarantine(name), "err", err)
			keep = old.Value
			s.m.Quarantined.Inc()
		case rec.LifeID == r.life.ID:
			h.base, h.incarnate = rec.AgeMS, rec.Incarnation+1
		}
	}
	h.started = time.Now()
	ok, err := s.writeOver(r.ctx, h, h.started, seen, keep)
	switch {
	case err != nil && r.ctx.Err() != nil:
		return outStopped, nil
	case err != nil:
		return outError, nil
	case !ok:
		return outFenced, nil
	}
	age := h.lastAge

	if !s.addHeld(r.ctx, h) {
		return outStopped, nil
	}
	s.log.Info(fmt.Sprintf("New life spawned: %s (age %d, incarnation %d)", name, age/1000, h.incarnate),
		"name", name, "age", age/1000, "incarnation", h.incarnate, "life_id", h.lifeID)

	var recheck <-chan time.Time
	if s.preferred(name) != s.cfg.ID {
		r.nudge()
	}
	for {
		select {
		case <-r.ctx.Done():
			if !s.removeHeld(h) {
				return outStopped, h // taken away already: session lost or shutdown
			}
			reason := "stopped"
			switch r.stop.Load() {
			case stopEnded:
				reason = "ended"
			case stopInvalid:
				reason = "invalid"
				s.finalCheckpoint(h)
			}
			s.m.Lost.WithLabelValues(reason).Inc()
			s.log.Info("life stopped: "+name, "name", name, "age", h.ageAt(time.Now())/1000, "reason", reason)
			return outStopped, h
		case <-h.lost:
			s.removeHeld(h)
			s.m.Lost.WithLabelValues("fenced").Inc()
			return outFenced, nil
		case <-r.placed:
		case <-recheck:
		}
		recheck = nil
		if held := time.Since(h.started); held < minHold {
			// Give views of the member set time to agree before moving
			// a life that just arrived: no flapping between two members.
			recheck = time.After(minHold - held)
			continue
		}
		to, ready := r.handoffTarget()
		switch {
		case to == "":
			continue // this member is the preferred one
		case !ready:
			recheck = time.After(time.Second) // it has not campaigned yet
			continue
		}
		if r.handoff(el, h, to) {
			return outHandedOff, nil
		}
	}
}

// handoffTarget returns the preferred member of the life if it is not this
// one, and whether it is ready: it has a candidacy in the life's election,
// so it takes the life the moment this member lets go.
func (r *runner) handoffTarget() (string, bool) {
	to := r.s.preferred(r.life.Name)
	if to == r.s.cfg.ID {
		return "", false
	}
	if err := r.s.limiter.Wait(r.ctx); err != nil {
		return to, false
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.s.cfg.Lease.TTL)
	defer cancel()
	resp, err := r.s.cfg.Client.Get(ctx, r.s.cfg.Keys.Election(r.life.Name)+"/", clientv3.WithPrefix())
	if err != nil {
		return to, false
	}
	for _, kv := range resp.Kvs {
		if string(kv.Value) == to {
			return to, true
		}
	}
	return to, false
}

// handoff stops h, writes its final checkpoint (fenced) and resigns, so the
// waiting preferred member resumes at exactly this age. It reports false
// when h was already stopped.
func (r *runner) handoff(el *concurrency.Election, h *heldLife, to string) bool {
	s := r.s
	if !s.removeHeld(h) {
		return false
	}
	now := s.finalCheckpoint(h)
	r.resign(el, nil)
	s.m.Handoffs.Inc()
	s.m.Lost.WithLabelValues("handoff").Inc()
	s.log.Info(fmt.Sprintf("life handed off: %s to %s (age %d)", h.name, to, h.ageAt(now)/1000), "name", h.name, "to", to)
	return true
}

// finalCheckpoint writes the age of a life that was just stopped, fenced,
// and returns the moment the age was taken.
func (s *Supervisor) finalCheckpoint(h *heldLife) time.Time {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	// The deadline starts once the lock is ours: a checkpoint round of many
	// lives may hold it for a while, and that must not use up this write's time.
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	now := time.Now()
	if n, err := s.writeAges(ctx, []*heldLife{h}, now); err != nil || n != 1 {
		s.log.Warn("final checkpoint failed; the next holder resumes from the previous one", "name", h.name, "err", err)
	}
	return now
}

// forgetRunner removes r from the runners map if it is still there.
func (s *Supervisor) forgetRunner(r *runner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runners[r.life.Name] == r {
		delete(s.runners, r.life.Name)
	}
}
