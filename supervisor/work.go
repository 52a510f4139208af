package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/supervisor/engine"
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
//     Txn), each in its own nested Txn fenced as the age records are; the
//     nested Txn puts the state record and the child record (the Run's
//     status, SetStatus) together, so they always share a revision. A
//     Checkpoint returns once its state (or a newer one of the same Run)
//     is applied. A failed fence fails the Checkpoint with
//     workload.ErrFenced and, when the election key is no longer this
//     holder's, loses the life.
//
// The engine decides when a Run starts and stops (its Effects, below);
// this file runs it. Lock order: mu, then a stateWriter's mu; a
// stateWriter's mu is never held while taking another. The metrics' lock
// of the Runs running now (checkpointAges) is taken last, alone by a
// scrape.

// Bounds of one state writer Txn: the nested Txns of etcd's --max-txn-ops
// with room to spare, and bytes well under its 1.5 MiB request limit (one
// record is at most registry.MaxStateRecordBytes, about 690 KiB).
const (
	stateBatch      = 100
	stateBatchBytes = 1 << 20
)

// holdWork is the work of one hold: its kind, its current Run and its state
// as stored. It is the engine.Life's Work. The state fields are guarded by
// w.mu; run by Supervisor.mu.
type holdWork struct {
	kind workload.Kind
	w    *stateWriter // of the hold's generation

	run *lifeRun // the current Run; nil before the first

	saved []byte // the state as stored (restored or last applied)
	keep  []byte // a record that did not parse, to quarantine with the next write
}

// lifeRun is one Run of a hold, and the workload.Handle it is given.
type lifeRun struct {
	s        *Supervisor
	h        *engine.Life
	hw       *holdWork
	kind     string // the label of its metrics
	log      *slog.Logger
	restored []byte
	ctx      context.Context
	cancel   context.CancelCauseFunc
	done     chan struct{} // closed when Run returned
	expired  chan struct{}
	expOnce  sync.Once

	// abandonT gives the Run up AbandonAfter after Expired closed.
	abandonT atomic.Pointer[time.Timer]
	// lastApplied is when its last state write was applied (unix
	// nanoseconds; 0: none yet), for immortald_checkpoint_age_seconds.
	lastApplied atomic.Int64

	// Guarded by Supervisor.mu.
	timer     *time.Timer // closes Expired when the graceful stop takes too long
	stopBy    time.Time   // when it must have returned at the latest, expired or not
	abandoned bool        // given up (abandon) before it returned

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
func (r *lifeRun) Name() string { return r.h.Name() }

// Incarnation implements workload.Handle.
func (r *lifeRun) Incarnation() int64 { return r.h.Incarnation() }

// FencingToken implements workload.Handle: the CreateRevision of the
// holder's election key.
func (r *lifeRun) FencingToken() int64 { return r.h.FencingToken() }

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

// expire closes Expired and cancels the Run with workload.ErrDeadline, once;
// a Run that has not returned AbandonAfter later is given up (abandon).
func (r *lifeRun) expire() {
	r.expOnce.Do(func() {
		close(r.expired)
		r.cancel(workload.ErrDeadline)
		r.abandonT.Store(time.AfterFunc(r.s.cfg.AbandonAfter, func() { r.s.abandon(r) }))
	})
}

// abandon gives r up if it has still not returned: no write of it any
// more, and the engine stops its life here (RunAbandoned), so that a peer
// can run it; this member runs the life again only once r returns. A Go
// Run cannot be killed: one that ignores both its context and Expired
// goes on in this process, with every write fenced.
func (s *Supervisor) abandon(r *lifeRun) {
	r.fence() // before the engine lets anyone else hold the life
	s.mu.Lock()
	newly := s.eng.RunAbandoned(r.h)
	if newly {
		r.abandoned = true
		s.m.RunsAbandoned.Inc()
		s.m.RunsUnreturned.Inc()
		s.runEnded(r, causeAbandoned)
	}
	s.mu.Unlock()
	if newly {
		r.log.Error("the life's work did not return after it was told to stop at once: giving the life up in this member (a peer may run it; this Run's writes are fenced); this member runs it again once the Run returns",
			"abandon_after", s.cfg.AbandonAfter)
	}
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

// fence makes every later write of r fail with ErrFenced, and wakes the
// Checkpoints waiting on it.
func (r *lifeRun) fence() {
	w := r.hw.w
	w.mu.Lock()
	defer w.mu.Unlock()
	r.fenced = true
	notifyLocked(r)
}

func notifyLocked(r *lifeRun) {
	close(r.changed)
	r.changed = make(chan struct{})
}

// effects carries out the engine's decisions (engine.Effects). Its methods
// are called with mu held.
type effects struct{ s *Supervisor }

// Wake implements engine.Effects: it wakes the election loop.
func (f effects) Wake() {
	if gen := f.s.gen; gen != nil {
		select {
		case gen.kick <- struct{}{}:
		default:
		}
	}
}

// StartWork implements engine.Effects: a Run of l starts, in its own
// goroutine (the engine starts none while an earlier Run of the name in
// this member has not returned). The first Run of a hold restores the
// state its first write read.
func (f effects) StartWork(l *engine.Life) {
	s := f.s
	log := s.log.With("life", l.Name(), "incarnation", l.Incarnation())
	hw, _ := l.Work.(*holdWork)
	if hw == nil {
		hw = &holdWork{kind: s.cfg.Kinds[l.Kind()], w: s.gen.states}
		l.Work = hw
	}
	hw.w.mu.Lock()
	if kv := l.StateRead(); kv != nil {
		rec, err := registry.ParseStateRecord(kv.Value)
		switch {
		case err != nil:
			hw.keep = kv.Value
			s.m.Quarantined.Inc()
			log.Error("state record does not parse; keeping its bytes in quarantine and starting the life with no state",
				"key", s.cfg.Keys.State(l.Name()), "quarantine", s.cfg.Keys.StateQuarantine(l.Name()), "err", err)
		case rec.LifeID == l.LifeID():
			hw.saved = rec.Data
		}
	}
	restored := hw.saved
	hw.w.mu.Unlock()

	ctx, cancel := context.WithCancelCause(context.Background())
	r := &lifeRun{
		s: s, h: l, hw: hw, kind: l.Kind(), log: log, restored: restored,
		ctx: ctx, cancel: cancel,
		done: make(chan struct{}), expired: make(chan struct{}), changed: make(chan struct{}),
		data: restored,
	}
	hw.run = r
	s.m.RunsStarted.WithLabelValues(r.kind).Inc()
	s.m.Runs.WithLabelValues(r.kind).Inc()
	s.m.checkpointAges.add(r)
	go func() {
		var err error
		if ctx.Err() == nil {
			err = r.call(hw.kind.New)
		}
		s.runReturned(r, err)
	}()
}

// StopWork implements engine.Effects: l's Run is cancelled with
// workload.ErrStopped; past its kind's stop grace and one checkpoint round,
// Expired closes.
func (f effects) StopWork(l *engine.Life) {
	s := f.s
	r := runOf(l)
	if r == nil {
		return
	}
	bound := r.hw.kind.StopGrace + s.stopRound()
	r.stopBy = time.Now().Add(bound + s.cfg.ShutdownTimeout)
	r.cancel(workload.ErrStopped)
	r.timer = time.AfterFunc(bound, func() {
		if !r.isExpired() {
			r.log.Warn("the life's work did not stop within its stop grace and one checkpoint: telling it to stop at once", "bound", bound)
			r.expire()
		}
	})
}

// ExpireWork implements engine.Effects: l's Run is told to stop at once
// (a why of "" is logged by the caller, once for many lives).
func (f effects) ExpireWork(l *engine.Life, why string) {
	r := runOf(l)
	if r == nil || r.isExpired() {
		return
	}
	if why != "" {
		r.log.Warn("stopping the life's work at once: " + why)
	}
	r.expire()
}

// runOf is the current Run of l, or nil.
func runOf(l *engine.Life) *lifeRun {
	if hw, _ := l.Work.(*holdWork); hw != nil {
		return hw.run
	}
	return nil
}

// panicError is the error of a Run that panicked.
type panicError struct{ v any }

func (e panicError) Error() string { return fmt.Sprintf("panic: %v", e.v) }

// call makes a Runner with newRunner and runs it, a panic of either being
// an error (a panicError).
func (r *lifeRun) call(newRunner func() workload.Runner) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = panicError{p}
			r.log.Error("the life's Run panicked", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	return newRunner().Run(r.ctx, r)
}

// runReturned ends r: no write of it any more, and the life's next step
// (a handoff, a clean-up) may go on.
func (s *Supervisor) runReturned(r *lifeRun, err error) {
	r.fence()
	r.cancel(workload.ErrStopped) // releases the context
	if t := r.abandonT.Load(); t != nil {
		t.Stop()
	}
	s.mu.Lock()
	if r.timer != nil {
		r.timer.Stop()
	}
	asked := s.eng.RunReturned(r.h)
	abandoned := r.abandoned
	if abandoned {
		s.m.RunsUnreturned.Dec() // it ended, for the metrics, when given up
	} else {
		s.runEnded(r, runCause(asked, r.isExpired(), err))
	}
	s.mu.Unlock()
	switch {
	case abandoned:
		r.log.Warn("the life's work returned after it was given up; this member may run the life again", "err", err)
	case asked:
		r.log.Info("the life's work stopped", "err", err, "cause", context.Cause(r.ctx))
	default:
		r.log.Warn("the life's work returned before it was stopped; the life stays held, its work does not run again in this hold", "err", err)
	}
	close(r.done)
}

// runCause is why a Run that returned (and was not given up: that is
// causeAbandoned, counted by abandon) ended: asked is the engine's answer
// (RunReturned), expired whether it had been told to stop at once (a stop
// at the deadline, or a graceful stop past its bound: context.Cause stays
// ErrStopped then), err what it returned. It is the one place that decides
// the cause of immortald_runs_stopped_total.
func runCause(asked, expired bool, err error) string {
	switch {
	case errors.As(err, new(panicError)):
		return causePanic
	case !asked:
		return causeReturned
	case expired:
		return causeDeadline
	default:
		return causeStopped
	}
}

// runEnded counts r's end, by cause: it no longer runs for the metrics,
// and its checkpoint age is no longer shown. Called once per Run, with mu
// held, when it returned or was given up.
func (s *Supervisor) runEnded(r *lifeRun, cause string) {
	s.m.RunsStopped.WithLabelValues(r.kind, cause).Inc()
	s.m.Runs.WithLabelValues(r.kind).Dec()
	s.m.checkpointAges.remove(r)
}

// stopRound is how long a Run may take past its kind's stop grace: one
// checkpoint of its final state.
func (s *Supervisor) stopRound() time.Duration {
	return s.cfg.CheckpointInterval + s.batchTimeout()
}

// expireRuns tells every Run that has not returned to stop at once.
func (s *Supervisor) expireRuns(why string) {
	s.mu.Lock()
	n := s.eng.ExpireAllWork()
	s.mu.Unlock()
	if n > 0 {
		s.log.Warn("stopped the work of lives at once: "+why, "lives", n)
	}
}

// stopRuns stops every Run gracefully, in parallel, and waits for them to
// return: each for its kind's stop grace and one checkpoint (then Expired
// closes), and ShutdownTimeout more. A Run that still has not returned is
// left, with an error logged: its member cannot stop it.
func (s *Supervisor) stopRuns(gen *generation) {
	s.mu.Lock()
	var runs []*lifeRun
	for _, l := range s.eng.StopAllWork() {
		if r := runOf(l); r != nil {
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
			s.log.Error("the work of a life did not return after it was told to stop at once; leaving it", "life", r.h.Name())
		}
		t.Stop()
	}
	s.log.Info("the work of every life stopped", "lives", len(runs), "took", time.Since(t0).Round(time.Millisecond))
}

// stateWrite is one life's write in a state batch.
type stateWrite struct {
	r    *lifeRun
	seq  int64
	data []byte
	keep []byte
	size int // bytes put: the record, and the quarantined one
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
			t0 := time.Now()
			resp, err := s.cfg.Client.Txn(ctx).Then(ops...).Commit()
			s.m.StateWriteSeconds.Observe(time.Since(t0).Seconds())
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
		rec := registry.StateRecord{LifeID: h.LifeID(), Holder: s.cfg.ID, HolderRev: h.FencingToken(), Incarnation: h.Incarnation(),
			Time: now, Data: r.data}
		b, err := rec.Marshal()
		child := registry.ChildRecord{LifeID: rec.LifeID, Holder: rec.Holder, HolderRev: rec.HolderRev, Incarnation: rec.Incarnation,
			Time: now, Child: r.status}.Marshal()
		if err != nil { // the size was checked by Checkpoint
			w.queue = w.queue[1:]
			r.queued = false
			r.log.Error("cannot encode the state record", "err", err)
			continue
		}
		keep := r.hw.keep
		n := len(b) + len(child) + len(keep)
		if len(batch) > 0 && size+n > stateBatchBytes {
			break
		}
		w.queue = w.queue[1:]
		r.queued = false
		size += n
		// The state and the child record, always together: a guard on
		// the state's revision (a clean-up's) covers both.
		then := []clientv3.Op{clientv3.OpPut(k.State(h.Name()), string(b)), clientv3.OpPut(k.Child(h.Name()), string(child))}
		if keep != nil {
			then = append(then, clientv3.OpPut(k.StateQuarantine(h.Name()), string(keep)))
		}
		ops = append(ops, clientv3.OpTxn(h.Fence(k), then, []clientv3.Op{clientv3.OpGet(h.Key())}))
		batch = append(batch, stateWrite{r: r, seq: r.seq, data: r.data, keep: keep, size: n})
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
//
// mu is held throughout, so the engine knows the state record's revision
// before a Checkpoint returns (and with it, perhaps, the Run): a clean-up
// that deletes the record is guarded by that revision.
func (s *Supervisor) statesWritten(w *stateWriter, batch []stateWrite, resp *clientv3.TxnResponse, err error) {
	var applied, lost []*lifeRun
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	w.mu.Lock()
	for i, e := range batch {
		r := e.r
		if err != nil {
			s.m.StateWrites.WithLabelValues(r.kind, writeError).Inc()
			r.failSeq, r.failErr = e.seq, err
			if !r.fenced {
				w.queueLocked(r)
			}
			notifyLocked(r)
			continue
		}
		sub := resp.Responses[i].GetResponseTxn()
		if sub.GetSucceeded() {
			s.m.StateWrites.WithLabelValues(r.kind, writeApplied).Inc()
			s.m.StateWriteBytes.WithLabelValues(r.kind).Add(float64(e.size))
			r.lastApplied.Store(now.UnixNano())
			r.applied = max(r.applied, e.seq)
			r.hw.saved = e.data
			if e.keep != nil && bytes.Equal(r.hw.keep, e.keep) {
				r.hw.keep = nil
			}
			notifyLocked(r)
			applied = append(applied, r)
			continue
		}
		s.m.StateWrites.WithLabelValues(r.kind, writeFenced).Inc()
		r.fenced = true
		notifyLocked(r)
		if own := engine.FirstKV(sub, 0); own == nil || own.CreateRevision != r.h.FencingToken() {
			lost = append(lost, r)
		}
	}
	w.mu.Unlock()
	if err != nil {
		return
	}
	for _, r := range applied {
		s.eng.StateApplied(r.h, resp.Header.Revision)
	}
	for _, r := range lost {
		s.eng.WorkLost(r.h)
	}
}
