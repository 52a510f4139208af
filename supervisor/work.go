package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

// The work of a life: a life whose kind has a Runner (workload.Kind.New not
// nil) runs it while this member holds it, besides its age. A life of a
// kind without one (the built-in "age") has no work: nothing here touches
// it.
//
//   - Start. The first (fenced) write of a hold also reads states/<name>;
//     its data is restored when the record is of the same life id. A
//     record that does not parse is kept at quarantine-states/<name> (with
//     the hold's first state write) and the life starts with no state. The
//     Run starts, in its own goroutine, where the life is logged as
//     spawned; never before the previous Run of the same name in this
//     member returned.
//   - Graceful stop (a handoff, the shutdown, the life deleted, made invalid
//     or given another kind): Run's context is cancelled with
//     workload.ErrStopped, and the member keeps its election key and lease
//     until Run returns: the handoff Txn or the clean-up is written only
//     then. Past the kind's StopGrace plus one checkpoint round, Expired
//     closes (kill now), and the member waits again.
//   - Kill. At the session's safe deadline, when the session is lost, and
//     when the life is lost (its election key gone), Expired closes and the
//     context is cancelled with workload.ErrDeadline at once.
//   - Checkpoints. One state writer per session batches the state writes
//     of every life (up to stateBatch lives and stateBatchBytes bytes per
//     Txn), each in its own nested Txn fenced as the age records are. A
//     Checkpoint returns once its state (or a newer one of the same Run)
//     is applied. A failed fence fails the Checkpoint with
//     workload.ErrFenced and, when the election key is no longer this
//     holder's, loses the life.
//
// Lock order: writeMu, mu, then a stateWriter's mu; a stateWriter's mu is
// never held while taking another.

// Bounds of one state writer Txn: the nested Txns of etcd's --max-txn-ops
// with room to spare, and bytes well under its 1.5 MiB request limit (one
// record is at most registry.MaxStateRecordBytes, about 690 KiB).
const (
	stateBatch      = 100
	stateBatchBytes = 1 << 20
)

// holdWork is the work of one hold: its kind, its current Run and its state
// as stored. The state fields are guarded by w.mu; run by Supervisor.mu.
type holdWork struct {
	kind workload.Kind
	w    *stateWriter // of the hold's generation

	run *lifeRun // the current Run; nil before the first

	restoreKV *mvccpb.KeyValue // states/<name> as the first write read it
	read      bool             // restoreKV was looked at
	saved     []byte           // the state as stored (restored or last applied)
	stateRev  int64            // ModRevision of states/<name> as last read or written
	keep      []byte           // a record that did not parse, to quarantine with the next write
}

// lifeRun is one Run of a hold, and the workload.Handle it is given.
type lifeRun struct {
	s        *Supervisor
	h        *heldLife
	hw       *holdWork
	log      *slog.Logger
	restored []byte
	ctx      context.Context
	cancel   context.CancelCauseFunc
	done     chan struct{} // closed when Run returned
	expired  chan struct{}
	expOnce  sync.Once

	// Guarded by Supervisor.mu.
	stopping bool        // a graceful stop was asked
	returned bool        // Run returned
	timer    *time.Timer // closes Expired when the graceful stop takes too long
	stopBy   time.Time   // when it must have returned at the latest, expired or not

	// Guarded by hw.w.mu.
	data    []byte // the latest state asked for
	status  workload.ChildStatus
	seq     int64 // of the latest state or status asked for
	applied int64 // seq of the latest one applied
	failSeq int64 // seq of the latest one whose write failed with failErr
	failErr error
	queued  bool
	fenced  bool          // no write of this Run may be made any more
	changed chan struct{} // closed and replaced when any of these change
}

var _ workload.Handle = (*lifeRun)(nil)

// Name implements workload.Handle.
func (r *lifeRun) Name() string { return r.h.name }

// Incarnation implements workload.Handle.
func (r *lifeRun) Incarnation() int64 { return r.h.incarnate }

// FencingToken implements workload.Handle: the CreateRevision of the
// holder's election key.
func (r *lifeRun) FencingToken() int64 { return r.h.ownRev }

// State implements workload.Handle.
func (r *lifeRun) State() []byte { return r.restored }

// Logger implements workload.Handle.
func (r *lifeRun) Logger() *slog.Logger { return r.log }

// Expired implements workload.Handle.
func (r *lifeRun) Expired() <-chan struct{} { return r.expired }

func (r *lifeRun) isExpired() bool {
	select {
	case <-r.expired:
		return true
	default:
		return false
	}
}

// Checkpoint implements workload.Handle.
func (r *lifeRun) Checkpoint(ctx context.Context, state []byte) error {
	if len(state) > workload.MaxStateBytes {
		return fmt.Errorf("%w: %d bytes", workload.ErrStateTooLarge, len(state))
	}
	w := r.hw.w
	w.mu.Lock()
	if r.fenced || w.closed || r.isExpired() {
		w.mu.Unlock()
		return workload.ErrFenced
	}
	r.data = bytes.Clone(state)
	r.seq++
	my := r.seq
	w.queueLocked(r)
	for {
		switch {
		case r.applied >= my:
			w.mu.Unlock()
			return nil
		case r.fenced || w.closed:
			w.mu.Unlock()
			return workload.ErrFenced
		case r.failSeq >= my:
			err := r.failErr
			w.mu.Unlock()
			return err
		}
		ch := r.changed
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.expired:
			return workload.ErrFenced
		case <-ch:
		}
		w.mu.Lock()
	}
}

// SetStatus implements workload.Handle: written with the next state write,
// or alone when none comes.
func (r *lifeRun) SetStatus(st workload.ChildStatus) {
	w := r.hw.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if r.fenced || w.closed || r.status == st {
		return
	}
	r.status = st
	r.seq++
	w.queueLocked(r)
}

// expire closes Expired and cancels the Run with workload.ErrDeadline, once.
func (r *lifeRun) expire() {
	r.expOnce.Do(func() {
		close(r.expired)
		r.cancel(workload.ErrDeadline)
	})
}

// stateWriter writes the state records of one generation's Runs.
type stateWriter struct {
	mu     sync.Mutex
	queue  []*lifeRun // Runs with a state or status not written yet
	closed bool       // the generation ended: no write any more
	kick   chan struct{}
}

func newStateWriter() *stateWriter { return &stateWriter{kick: make(chan struct{}, 1)} }

func (w *stateWriter) queueLocked(r *lifeRun) {
	if !r.queued {
		r.queued = true
		w.queue = append(w.queue, r)
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func notifyLocked(r *lifeRun) {
	close(r.changed)
	r.changed = make(chan struct{})
}

// newWork returns the work of a hold of life, nil when its kind has none.
func (s *Supervisor) newWork(gen *generation, life registry.Life) *holdWork {
	k, ok := s.cfg.Kinds[life.Options.KindName()]
	if !ok || k.New == nil {
		return nil
	}
	return &holdWork{kind: k, w: gen.states}
}

// restoreFrom keeps the states/<name> read at index i of a start's nested
// Txn response, to restore from when the Run starts.
func (h *heldLife) restoreFrom(sub *etcdserverpb.TxnResponse, i int) {
	if h.work == nil || i < 0 {
		return
	}
	h.work.restoreKV = firstKV(sub, i)
}

// startWorkLocked starts a Run of h, which is held, unless its kind has
// none or the member is shutting down (a life won during the shutdown is
// held without its work until the revoke, and its next holder restores
// its last state).
func (s *Supervisor) startWorkLocked(h *heldLife) {
	hw := h.work
	if hw == nil || s.stopping || s.gen == nil {
		return
	}
	log := s.log.With("life", h.name, "incarnation", h.incarnate)
	hw.w.mu.Lock()
	if !hw.read {
		hw.read = true
		if kv := hw.restoreKV; kv != nil {
			hw.stateRev = kv.ModRevision
			rec, err := registry.ParseStateRecord(kv.Value)
			switch {
			case err != nil:
				hw.keep = kv.Value
				s.m.Quarantined.Inc()
				log.Error("state record does not parse; keeping its bytes in quarantine and starting the life with no state",
					"key", s.cfg.Keys.State(h.name), "quarantine", s.cfg.Keys.StateQuarantine(h.name), "err", err)
			case rec.LifeID == h.lifeID:
				hw.saved = rec.Data
			}
		}
		hw.restoreKV = nil
	}
	restored := hw.saved
	hw.w.mu.Unlock()

	ctx, cancel := context.WithCancelCause(context.Background())
	r := &lifeRun{
		s: s, h: h, hw: hw, log: log, restored: restored,
		ctx: ctx, cancel: cancel,
		done: make(chan struct{}), expired: make(chan struct{}), changed: make(chan struct{}),
		data: restored,
	}
	prev := s.runs[h.name]
	s.runs[h.name] = r
	hw.run = r
	go func() {
		if prev != nil {
			<-prev.done // one Run of a life at a time in this member
		}
		var err error
		if ctx.Err() == nil {
			err = r.call(hw.kind.New)
		}
		s.runReturned(r, err)
	}()
}

// call makes a Runner with newRunner and runs it, a panic of either being
// an error.
func (r *lifeRun) call(newRunner func() workload.Runner) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
			r.log.Error("the life's Run panicked", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	return newRunner().Run(r.ctx, r)
}

// runReturned ends r: no write of it any more, and the life's next step
// (a handoff, a clean-up) may go on.
func (s *Supervisor) runReturned(r *lifeRun, err error) {
	w := r.hw.w
	w.mu.Lock()
	r.fenced = true
	notifyLocked(r)
	w.mu.Unlock()
	r.cancel(workload.ErrStopped) // releases the context
	s.mu.Lock()
	r.returned = true
	if r.timer != nil {
		r.timer.Stop()
	}
	if s.runs[r.h.name] == r {
		delete(s.runs, r.h.name)
	}
	switch {
	case r.stopping || r.isExpired():
		r.log.Info("the life's work stopped", "err", err, "cause", context.Cause(r.ctx))
	default:
		r.log.Warn("the life's work returned before it was stopped; the life stays held, its work does not run again in this hold", "err", err)
	}
	if c := s.cands[r.h.name]; c != nil {
		s.queueLocked(c) // a handoff or a clean-up may wait for this
	}
	s.mu.Unlock()
	close(r.done)
}

// stopRound is how long a Run may take past its kind's stop grace: one
// checkpoint of its final state.
func (s *Supervisor) stopRound() time.Duration {
	return s.cfg.CheckpointInterval + s.batchTimeout()
}

// stopWorkLocked asks h's Run to stop gracefully, and reports whether no
// Run of h runs (there is none, or it returned).
func (s *Supervisor) stopWorkLocked(h *heldLife) bool {
	if h == nil || h.work == nil || h.work.run == nil {
		return true
	}
	r := h.work.run
	if r.returned {
		return true
	}
	if !r.stopping {
		r.stopping = true
		bound := h.work.kind.StopGrace + s.stopRound()
		r.stopBy = time.Now().Add(bound + s.cfg.ShutdownTimeout)
		r.cancel(workload.ErrStopped)
		r.timer = time.AfterFunc(bound, func() {
			if !r.isExpired() {
				r.log.Warn("the life's work did not stop within its stop grace and one checkpoint: telling it to stop at once", "bound", bound)
				r.expire()
			}
		})
	}
	return false
}

// workStoppedLocked reports whether no Run of h runs.
func (s *Supervisor) workStoppedLocked(h *heldLife) bool {
	return h == nil || h.work == nil || h.work.run == nil || h.work.run.returned
}

// resumeWorkLocked starts a new Run of c's life, which is held, when its
// last Run was stopped for a handoff that did not happen (or is off).
func (s *Supervisor) resumeWorkLocked(c *cand) {
	h := c.h
	if !c.held || h == nil || h.work == nil || h.work.run == nil {
		return
	}
	if r := h.work.run; r.stopping && r.returned {
		h.work.run.log.Info("the handoff did not happen: the life's work runs again")
		s.startWorkLocked(h)
	}
}

// expireWork tells h's Run, if any, to stop at once.
func (h *heldLife) expireWork(why string) {
	if h.work == nil {
		return
	}
	// run is guarded by mu, which the callers hold.
	if r := h.work.run; r != nil && !r.isExpired() {
		r.log.Warn("stopping the life's work at once: " + why)
		r.expire()
	}
}

// expireRuns tells every Run that has not returned to stop at once.
func (s *Supervisor) expireRuns(why string) {
	s.mu.Lock()
	runs := make([]*lifeRun, 0, len(s.runs))
	for _, r := range s.runs {
		if !r.isExpired() {
			runs = append(runs, r)
		}
	}
	s.mu.Unlock()
	if len(runs) == 0 {
		return
	}
	s.log.Warn("stopping the work of lives at once: "+why, "lives", len(runs))
	for _, r := range runs {
		r.expire()
	}
}

// stopRuns stops every Run gracefully, in parallel, and waits for them to
// return: each for its kind's stop grace and one checkpoint (then Expired
// closes), and ShutdownTimeout more. A Run that still has not returned is
// left, with an error logged: its member cannot stop it.
func (s *Supervisor) stopRuns(gen *generation) {
	s.mu.Lock()
	runs := make([]*lifeRun, 0, len(s.runs))
	for _, r := range s.runs {
		s.stopWorkLocked(r.h)
		if !r.returned {
			runs = append(runs, r)
		}
	}
	s.mu.Unlock()
	if len(runs) == 0 {
		return
	}
	t0 := time.Now()
	s.log.Info("stopping the work of every life", "lives", len(runs))
	for _, r := range runs {
		s.mu.Lock()
		by := r.stopBy
		s.mu.Unlock()
		t := time.NewTimer(time.Until(by))
		select {
		case <-r.done:
		case <-t.C:
			s.log.Error("the work of a life did not return after it was told to stop at once; leaving it", "life", r.h.name)
		}
		t.Stop()
	}
	s.log.Info("the work of every life stopped", "lives", len(runs), "took", time.Since(t0).Round(time.Millisecond))
}

// dropStateOp is the clean-up of the state record of h, whose life ended:
// deleted unless someone wrote it since h's holder last read or wrote it.
func (s *Supervisor) dropStateOp(h *heldLife) clientv3.Op {
	h.work.w.mu.Lock()
	rev := h.work.stateRev
	h.work.w.mu.Unlock()
	key := s.cfg.Keys.State(h.name)
	return clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}, []clientv3.Op{clientv3.OpDelete(key)}, nil)
}

// stateWrite is one life's write in a state batch.
type stateWrite struct {
	r    *lifeRun
	seq  int64
	data []byte
	keep []byte
}

// writeStates writes the states and statuses of gen's Runs until gen ends,
// in batches; then every Checkpoint of them fails with ErrFenced.
func (s *Supervisor) writeStates(gen *generation) {
	w := gen.states
	defer func() {
		w.mu.Lock()
		w.closed = true
		for _, r := range w.queue {
			r.queued = false
			notifyLocked(r)
		}
		w.queue = nil
		w.mu.Unlock()
	}()
	for {
		select {
		case <-gen.ctx.Done():
			return
		case <-w.kick:
		}
		for gen.ctx.Err() == nil {
			batch, ops := s.takeStates(w)
			if len(batch) == 0 {
				break
			}
			ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(gen.ctx), s.batchTimeout())
			resp, err := s.cfg.Client.Txn(ctx).Then(ops...).Commit()
			cancel()
			s.statesWritten(w, batch, resp, err)
			if err != nil {
				if gen.ctx.Err() == nil {
					s.log.Warn("state writes failed; will retry", "lives", len(batch), "err", err)
				}
				select {
				case <-gen.ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}
}

// takeStates takes the next batch of state writes off w's queue.
func (s *Supervisor) takeStates(w *stateWriter) ([]stateWrite, []clientv3.Op) {
	k := s.cfg.Keys
	now := time.Now().UTC().Round(0)
	w.mu.Lock()
	defer w.mu.Unlock()
	var batch []stateWrite
	var ops []clientv3.Op
	size := 0
	for len(w.queue) > 0 && len(batch) < stateBatch {
		r := w.queue[0]
		if r.fenced || r.isExpired() {
			w.queue = w.queue[1:]
			r.queued = false
			continue
		}
		h := r.h
		rec := registry.StateRecord{LifeID: h.lifeID, Holder: s.cfg.ID, HolderRev: h.ownRev, Incarnation: h.incarnate,
			Time: now, Data: r.data, Child: r.status}
		b, err := rec.Marshal()
		if err != nil { // the size was checked by Checkpoint
			w.queue = w.queue[1:]
			r.queued = false
			r.log.Error("cannot encode the state record", "err", err)
			continue
		}
		keep := r.hw.keep
		if len(batch) > 0 && size+len(b)+len(keep) > stateBatchBytes {
			break
		}
		w.queue = w.queue[1:]
		r.queued = false
		size += len(b) + len(keep)
		then := []clientv3.Op{clientv3.OpPut(k.State(h.name), string(b))}
		if keep != nil {
			then = append(then, clientv3.OpPut(k.StateQuarantine(h.name), string(keep)))
		}
		ops = append(ops, clientv3.OpTxn(h.fence(k), then, []clientv3.Op{clientv3.OpGet(h.ownKey)}))
		batch = append(batch, stateWrite{r: r, seq: r.seq, data: r.data, keep: keep})
	}
	if len(w.queue) == 0 {
		w.queue = nil
	}
	return batch, ops
}

// statesWritten handles the answer to a state batch: the writes applied
// return to their callers; a failed fence fails them with ErrFenced, and
// loses the life when its election key is no longer this holder's; an
// error of etcd fails them with it and writes them again.
func (s *Supervisor) statesWritten(w *stateWriter, batch []stateWrite, resp *clientv3.TxnResponse, err error) {
	var lost []*lifeRun
	w.mu.Lock()
	for i, e := range batch {
		r := e.r
		if err != nil {
			r.failSeq, r.failErr = e.seq, err
			if !r.fenced {
				w.queueLocked(r)
			}
			notifyLocked(r)
			continue
		}
		sub := resp.Responses[i].GetResponseTxn()
		if sub.GetSucceeded() {
			r.applied = max(r.applied, e.seq)
			r.hw.saved, r.hw.stateRev = e.data, resp.Header.Revision
			if e.keep != nil && bytes.Equal(r.hw.keep, e.keep) {
				r.hw.keep = nil
			}
			notifyLocked(r)
			continue
		}
		r.fenced = true
		notifyLocked(r)
		if own := firstKV(sub, 0); own == nil || own.CreateRevision != r.h.ownRev {
			lost = append(lost, r)
		}
	}
	w.mu.Unlock()
	if len(lost) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range lost {
		if c := s.cands[r.h.name]; c != nil && c.held && c.h == r.h {
			s.loseLocked(c, "a fenced state write failed")
		} else {
			r.h.expireWork("a fenced state write failed")
		}
	}
}
