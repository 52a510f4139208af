package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/backoff"
	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/supervisor/engine"
)

// Supervisor runs the lives of one member. Create it with New and run it
// with Run; it implements registry.Handler.
//
// It drives an engine.Engine, which decides every step of the elections:
// the supervisor feeds it what etcd and the watches say and carries out
// what it decides (Txns, Runs), as etcd's raft package is driven through
// its RawNode. One mutex, mu, guards the engine; it is held for engine
// calls only, never across a request to etcd.
type Supervisor struct {
	cfg     Config
	log     *slog.Logger
	m       *Metrics
	started time.Time
	epoch   time.Time // the heartbeat clock counts from here (monotonic)

	// mu guards eng and gen. Lock order: mu, then a stateWriter's
	// mu.
	mu  sync.Mutex
	eng *engine.Engine
	gen *generation // nil between sessions
	// lastDeadline is the safe deadline of the last session that ended,
	// for the Runs of it that have not returned (WorkDeadline).
	lastDeadline time.Time

	// stale are leases of lost sessions that could not be revoked (etcd was
	// unreachable). They are revoked once etcd answers again, so their
	// election keys do not block peers until they expire. Used by Run only.
	stale []clientv3.LeaseID

	// views carries the latest member view from setMembers to
	// watchExpiries (buffered 1; setMembers replaces a view not taken).
	views chan []registry.Member
}

// generation is everything tied to one session.
type generation struct {
	sess   *lease.Session
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // wakes electLoop; buffered, never blocks

	// lane runs the ordered writes (see lane.go).
	lane *lane

	// One heartbeat at a time: these are the lane's.
	beatRev   int64 // revision of the last heartbeat applied (0: none yet)
	beatClock int64 // its clock

	// beatFailing is set while heartbeats are not applied: the member is
	// not ready then (Ready), as a crash would lose more than an interval.
	beatFailing atomic.Bool

	// lost is closed by fail when the generation can no longer keep its
	// promises although its lease may still renew (its member record was
	// taken, etcd went back in time, no checkpoint for a TTL); Run then
	// treats it as a lost session. lostErr says why.
	lost     chan struct{}
	lostOnce sync.Once
	lostErr  error

	// states writes the state records of the lives' workloads (work.go).
	states *stateWriter
}

// fail ends gen as a lost session, for err; the first reason wins.
func (gen *generation) fail(err error) {
	gen.lostOnce.Do(func() {
		gen.lostErr = err
		close(gen.lost)
	})
}

var _ registry.Handler = (*Supervisor)(nil)

// New checks cfg and returns a supervisor.
func New(cfg Config) (*Supervisor, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	s := &Supervisor{
		cfg:   cfg,
		log:   cfg.Logger,
		m:     cfg.Metrics,
		epoch: time.Now(),
		stale: slices.Clone(cfg.Leftover),
		views: make(chan []registry.Member, 1),
	}
	kinds := make(map[string]bool, len(cfg.Kinds))
	var work []string
	for name, k := range cfg.Kinds {
		kinds[name] = k.New != nil
		if k.New != nil {
			work = append(work, name)
		}
	}
	m := cfg.Metrics
	m.initWork(work)
	s.eng = engine.New(engine.Config{
		ID: cfg.ID, Keys: cfg.Keys, Candidates: cfg.Candidates, Kinds: kinds,
		Epoch: s.epoch, Logger: cfg.Logger, Effects: effects{s},
		Metrics: &engine.Metrics{Held: m.Held, Wanted: m.Wanted, Invalid: m.Invalid, Started: m.Started, Lost: m.Lost,
			Quarantined: m.Quarantined, Handoffs: m.Handoffs, DirectStarts: m.DirectStarts},
	})
	return s, nil
}

// Ready reports whether the member holds a session, has read the wanted
// lives, checkpoints them (its last heartbeat was applied), and is not
// shutting down.
func (s *Supervisor) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == nil {
		return false
	}
	// A session lost or given up is not ready from that moment, not only
	// once its lives have stopped and its generation has ended.
	select {
	case <-s.gen.lost:
		return false
	case <-s.gen.sess.Done():
		return false
	default:
	}
	return s.eng.Ready() && !s.gen.beatFailing.Load()
}

// WorkDeadline returns the time by which every Run of this member must
// have stopped, and false when no Run runs (none has started, each
// returned, or was given up): the safe deadline of its session, or of the
// session it lost, while Runs of it have not returned. A watchdog that
// finds the member alive past it (stopped by SIGSTOP, or hung) kills it, so
// that no work of it outlives its lease (package watchdog).
func (s *Supervisor) WorkDeadline() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.eng.RunsActive() == 0 {
		return time.Time{}, false
	}
	if s.gen != nil {
		return s.gen.sess.Deadline(), true
	}
	return s.lastDeadline, true
}

// Held returns the age in milliseconds of every life this member runs now.
func (s *Supervisor) Held() map[string]int64 {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.Held(now)
}

// Run runs the member until ctx ends, then shuts down gracefully: it stops
// every life, writes the final heartbeat and revokes the lease, each step
// bounded by ShutdownTimeout. It returns nil after a graceful stop.
func (s *Supervisor) Run(ctx context.Context) error {
	s.started = time.Now()
	bg, stopBg := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(4)
	go func() {
		defer wg.Done()
		s.sweep(bg)
	}()
	go func() {
		defer wg.Done()
		s.watchExpiries(bg, s.views)
	}()
	go func() {
		defer wg.Done()
		// Both watches log their own trouble and retry; they return
		// only bg's error, once Run ends.
		_ = registry.Watch(bg, s.cfg.Client, s.cfg.Keys, s, s.log)
	}()
	go func() {
		defer wg.Done()
		_ = registry.WatchMembers(bg, s.cfg.Client, s.cfg.Keys, s.setMembers, s.log)
	}()
	defer func() {
		stopBg()
		wg.Wait()
	}()

	for {
		sess, rev := s.openSession(ctx)
		if sess == nil {
			return nil // ctx ended before a session could be had
		}
		gen := s.startGeneration(sess, rev)
		select {
		case <-ctx.Done():
			s.shutdown(gen)
			return nil
		case <-sess.Done():
			s.loseGeneration(gen, nil)
		case <-gen.lost:
			s.loseGeneration(gen, gen.lostErr)
		}
	}
}

// openSession grants a lease and registers the member on it, retrying until
// it succeeds or ctx ends (nil). It returns the revision of the registration.
func (s *Supervisor) openSession(ctx context.Context) (*lease.Session, int64) {
	retry := backoff.New(200*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		s.revokeStale(ctx)
		sess, err := lease.Open(ctx, s.cfg.Client, s.cfg.Lease)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("cannot open a session with etcd; will retry", "err", err)
			}
			retry.Wait(ctx)
			continue
		}
		if s.cfg.OnSession != nil {
			s.cfg.OnSession(sess.Lease())
		}
		rev, err := s.register(ctx, sess)
		if err != nil {
			s.log.Warn("cannot register member; will retry", "id", s.cfg.ID, "err", err)
			closeCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
			_ = sess.Close(closeCtx)
			cancel()
			retry.Wait(ctx)
			continue
		}
		s.m.Sessions.Inc()
		s.log.Info("session opened", "id", s.cfg.ID, "lease", fmt.Sprintf("%x", int64(sess.Lease())), "ttl", s.cfg.Lease.TTL)
		return sess, rev
	}
	return nil, 0
}

// register writes members/<id> on the session's lease, unless a live
// member with the same id holds it: two members with one id would be
// indistinguishable in every record. It returns the revision of the write.
// It gives up at the session's safe deadline, past which the session is of
// no use.
func (s *Supervisor) register(ctx context.Context, sess *lease.Session) (int64, error) {
	key := s.cfg.Keys.Member(s.cfg.ID)
	ctx, cancel := context.WithDeadline(clientv3.WithRequireLeader(ctx), sess.Deadline())
	defer cancel()
	resp, err := s.cfg.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(s.memberRecord(0).Marshal()), clientv3.WithLease(sess.Lease()))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		other := resp.Responses[0].GetResponseRange().Kvs
		if len(other) > 0 {
			return 0, fmt.Errorf("member id %q is in use by a live member (lease %x); waiting for it to go", s.cfg.ID, other[0].Lease)
		}
		return 0, fmt.Errorf("member id %q is in use", s.cfg.ID)
	}
	return resp.Header.Revision, nil
}

func (s *Supervisor) memberRecord(lives int) registry.MemberRecord {
	return registry.MemberRecord{ID: s.cfg.ID, Address: s.cfg.Address, Version: s.cfg.Version, Started: s.started, Lives: lives, PID: os.Getpid(),
		Kinds: slices.Sorted(maps.Keys(s.cfg.Kinds))}
}

// startGeneration campaigns for every valid wanted life this member is a
// candidate for. rev is the revision the session was registered at: the
// election watch starts after it, before any candidacy of the generation.
func (s *Supervisor) startGeneration(sess *lease.Session, rev int64) *generation {
	ctx, cancel := context.WithCancel(context.Background())
	gen := &generation{sess: sess, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1), lost: make(chan struct{}),
		states: newStateWriter(), lane: newLane()}
	s.mu.Lock()
	s.gen = gen
	s.eng.OpenSession(int64(sess.Lease()))
	s.mu.Unlock()
	gen.wg.Add(8)
	go func() {
		defer gen.wg.Done()
		gen.lane.run()
	}()
	go func() {
		defer gen.wg.Done()
		s.writeStates(gen)
	}()
	go func() {
		defer gen.wg.Done()
		// The safe deadline wins over any graceful stop going on (a
		// shutdown waits for Runs outside Run's select).
		select {
		case <-sess.Done():
			s.expireRuns("the session's safe deadline passed or the session was lost")
		case <-ctx.Done():
		}
	}()
	go func() {
		defer gen.wg.Done()
		s.publishMember(gen)
	}()
	go func() {
		defer gen.wg.Done()
		s.heartbeatLoop(gen)
	}()
	go func() {
		defer gen.wg.Done()
		s.watchAges(gen, rev+1)
	}()
	go func() {
		defer gen.wg.Done()
		s.watchElections(gen, rev+1)
	}()
	go func() {
		defer gen.wg.Done()
		s.electLoop(gen)
	}()
	return gen
}

// loseGeneration handles a lost session: every life stops at once, before
// anything else; then the old lease is revoked in case it still lives.
// why is the reason when the supervisor gave the session up itself (nil:
// the lease was lost).
func (s *Supervisor) loseGeneration(gen *generation, why error) {
	gen.cancel()
	s.expireRuns("the session was lost")
	n := s.dropAllHeld("session_lost")
	s.m.SessionLosses.Inc()
	if why != nil {
		s.log.Error("giving the session up: stopped every life this member held", "lives", n, "lease", fmt.Sprintf("%x", int64(gen.sess.Lease())), "why", why)
	} else {
		s.log.Warn("session lost: stopped every life this member held", "lives", n, "lease", fmt.Sprintf("%x", int64(gen.sess.Lease())))
	}
	s.endGeneration(gen)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Lease.TTL)
	defer cancel()
	if err := gen.sess.Close(ctx); err != nil {
		s.stale = append(s.stale, gen.sess.Lease())
	}
}

// takeAllHeld stops every life at once, returns them, and refuses new ones
// until the next generation starts.
func (s *Supervisor) takeAllHeld() []*engine.Life {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.TakeAllHeld()
}

// dropAllHeld stops every life without writing anything. Their Runs must
// have been told to stop at once (expireRuns).
func (s *Supervisor) dropAllHeld(reason string) int {
	lives := s.takeAllHeld()
	s.m.Lost.WithLabelValues(reason).Add(float64(len(lives)))
	return len(lives)
}

// revokeStale revokes the leases of lost sessions that are still left.
func (s *Supervisor) revokeStale(ctx context.Context) {
	left := s.stale[:0]
	for _, id := range s.stale {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.Lease.TTL)
		_, err := s.cfg.Client.Revoke(rctx, id)
		cancel()
		switch {
		case err == nil:
			s.log.Info("revoked an old lease of this member (a lost session, or a dead process before this one)", "lease", fmt.Sprintf("%x", int64(id)))
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
		default:
			left = append(left, id)
		}
	}
	s.stale = left
}

// shutdown is the graceful stop: readiness off, every life stopped and one
// last heartbeat (the final checkpoint of them all), revoke.
func (s *Supervisor) shutdown(gen *generation) {
	s.mu.Lock()
	s.eng.SetStopping()
	s.mu.Unlock()
	t0 := time.Now()
	// Every Run stops first, in parallel, while the member still holds
	// its lives: their final checkpoints are fenced writes of a holder.
	s.stopRuns(gen)

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	lives, stoppedAt, err := s.finalCheckpoints(ctx, gen)
	cancel()
	if err != nil {
		s.log.Error("the final heartbeat failed; peers resume from the previous one", "err", err)
	}
	s.endGeneration(gen)

	ctx, cancel = context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := gen.sess.Close(ctx); err != nil {
		s.log.Error("cannot revoke the lease; peers take over when it expires", "err", err)
	}
	took := time.Since(t0)
	// After the revoke, since a line per life is milliseconds per thousand
	// lives that peers need not wait for; but each line carries the time
	// its life stopped, before any peer could start it, so logs merged by
	// time read in the order things happened.
	for _, l := range lives {
		engine.LogAt(s.log, stoppedAt, "life handed off: "+l.Name(), "name", l.Name(), "age", l.AgeAt(stoppedAt)/1000, "incarnation", l.Incarnation())
	}
	s.log.Info("shut down: lives handed off", "lives", len(lives), "stopped_at", stoppedAt.UTC(), "took", took.Round(time.Millisecond))
}

// endGeneration stops the elections of gen and waits for its goroutines a
// bounded time: a Txn stuck on an unreachable etcd finishes on its own later.
func (s *Supervisor) endGeneration(gen *generation) {
	s.mu.Lock()
	gen.cancel()
	if s.gen == gen {
		s.gen = nil
		s.lastDeadline = gen.sess.Deadline()
		s.eng.EndSession()
	}
	s.mu.Unlock()
	gen.lane.stop()
	done := make(chan struct{})
	go func() {
		gen.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(s.cfg.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("some election batches are still waiting on etcd; leaving them to finish on their own")
	}
}

// publishMember keeps the member record's life count current.
func (s *Supervisor) publishMember(gen *generation) {
	t := time.NewTicker(max(s.cfg.Lease.TTL, 2*time.Second))
	defer t.Stop()
	last := 0
	key := s.cfg.Keys.Member(s.cfg.ID)
	for {
		select {
		case <-gen.ctx.Done():
			return
		case <-t.C:
		}
		n := s.heldCount()
		if n == last {
			continue
		}
		ctx, cancel := context.WithTimeout(gen.ctx, s.cfg.Lease.TTL)
		_, err := s.cfg.Client.Txn(ctx).
			If(clientv3.Compare(clientv3.LeaseValue(key), "=", gen.sess.Lease())).
			Then(clientv3.OpPut(key, string(s.memberRecord(n).Marshal()), clientv3.WithLease(gen.sess.Lease()))).
			Commit()
		cancel()
		switch {
		case err == nil:
			last = n
		case gen.ctx.Err() == nil:
			// Tried again at the next tick; the count is informational.
			s.log.Warn("cannot update the member record's count of lives; will retry", "lives", n, "err", err)
		}
	}
}

// Sync implements registry.Handler.
func (s *Supervisor) Sync(_ int64, lives []registry.Life) {
	seen := make(map[string]bool, len(lives))
	for _, l := range lives {
		seen[l.Name] = true
		s.Put(l)
	}
	s.mu.Lock()
	var gone []string
	for _, name := range s.eng.Wanted() {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	s.eng.Listed()
	s.mu.Unlock()
	for _, name := range gone {
		s.Delete(name, 0)
	}
}

// Put implements registry.Handler.
func (s *Supervisor) Put(l registry.Life) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eng.Put(l)
}

// Delete implements registry.Handler.
func (s *Supervisor) Delete(name string, _ int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eng.Delete(name)
}

// setMembers takes a new view of the live members (engine.SetMembers).
// It is called by one goroutine (WatchMembers's), so the view it hands to
// watchExpiries never blocks it.
func (s *Supervisor) setMembers(ms []registry.Member) {
	s.mu.Lock()
	s.eng.SetMembers(ms)
	s.mu.Unlock()
	select {
	case <-s.views:
	default:
	}
	s.views <- ms
}

// sweep looks at every waiting candidacy again every sweepEvery: a safety
// net under the election watch, which already wakes a candidate when a key
// before it goes. It also checks the age records of held lives
// (verifyAges) and, on the first live member by id, deletes what no holder
// will: the heartbeats no record needs and the age and state records of
// lives no longer wanted that no live holder owns (collectBeats).
func (s *Supervisor) sweep(ctx context.Context) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		s.eng.Sweep()
		s.mu.Unlock()
		s.verifyAges(ctx)
		s.collectBeats(ctx)
	}
}

// sweepEvery is the period of sweep.
const sweepEvery = 30 * time.Second
