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
	"github.com/immortald/immortald/workload"
)

// Supervisor runs the lives of one member. Create it with New and run it
// with Run; it implements registry.Handler.
type Supervisor struct {
	cfg     Config
	log     *slog.Logger
	m       *Metrics
	started time.Time
	epoch   time.Time // the heartbeat clock counts from here (monotonic)

	// mu guards the wanted lives, the member view, the elections of the
	// current generation and the lives held. Lock order: writeMu, then mu.
	mu         sync.Mutex
	wanted     map[string]registry.Life // every request seen, valid or not
	invalid    map[string]int64         // invalid requests already logged, by ModRevision
	gen        *generation              // nil between sessions
	cands      map[string]*cand         // of gen, by life name
	q          queues                   // cands of gen that need an election step
	electFails int                      // election batches failed in a row
	members    []string                 // live members, sorted, as last seen under members/
	leases     map[string]int64         // their session leases, by id
	kinds      map[string][]string      // the kinds they run (beyond age), by id
	runs       map[string]*lifeRun      // the Runs that have not returned, by life name
	beats      map[int64]seenBeat       // the newest heartbeat seen of each lease, this generation
	viewAt     time.Time                // when members last changed
	synced     bool                     // registry listed at least once
	stopping   bool
	held       map[string]*heldLife // the lives this member runs now
	heldClosed bool                 // no life may be added: the session is lost or ending

	// writeMu orders the age writes of a life that runs (a handoff, the
	// clean-up of a stopped life, a repair) and the heartbeats, so a
	// member's writes for one life are applied in the order their ages were
	// taken, and no heartbeat carries a life that has stopped but whose
	// final record is not written yet.
	writeMu sync.Mutex

	// stale are leases of lost sessions that could not be revoked (etcd was
	// unreachable). They are revoked once etcd answers again, so their
	// election keys do not block peers until they expire. Used by Run only.
	stale []clientv3.LeaseID
}

// generation is everything tied to one session.
type generation struct {
	sess   *lease.Session
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // wakes electLoop; buffered, never blocks

	// One heartbeat at a time: these are guarded by Supervisor.writeMu.
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
	return &Supervisor{
		cfg:     cfg,
		log:     cfg.Logger,
		m:       cfg.Metrics,
		wanted:  make(map[string]registry.Life),
		invalid: make(map[string]int64),
		cands:   make(map[string]*cand),
		leases:  make(map[string]int64),
		kinds:   make(map[string][]string),
		runs:    make(map[string]*lifeRun),
		beats:   make(map[int64]seenBeat),
		held:    make(map[string]*heldLife),
		epoch:   time.Now(),
		stale:   slices.Clone(cfg.Leftover),
	}, nil
}

// Ready reports whether the member holds a session, has read the wanted
// lives, checkpoints them (its last heartbeat was applied), and is not
// shutting down.
func (s *Supervisor) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen != nil && s.synced && !s.stopping && !s.gen.beatFailing.Load()
}

// Held returns the age in milliseconds of every life this member runs now.
func (s *Supervisor) Held() map[string]int64 {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.held))
	for name, h := range s.held {
		out[name] = h.ageAt(now)
	}
	return out
}

// Run runs the member until ctx ends, then shuts down gracefully: it stops
// every life, writes the final heartbeat and revokes the lease, each step
// bounded by ShutdownTimeout. It returns nil after a graceful stop.
func (s *Supervisor) Run(ctx context.Context) error {
	s.started = time.Now()
	bg, stopBg := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		s.sweep(bg)
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
	gen := &generation{sess: sess, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1), lost: make(chan struct{}), states: newStateWriter()}
	s.mu.Lock()
	s.heldClosed = false // lives may be added again
	s.gen = gen
	s.electFails = 0
	clear(s.beats)
	s.reconcileLocked()
	s.mu.Unlock()
	gen.wg.Add(7)
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
	s.stopping = true
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
	for _, h := range lives {
		s.logAt(stoppedAt, "life handed off: "+h.name, "name", h.name, "age", h.ageAt(stoppedAt)/1000, "incarnation", h.incarnate)
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
		s.cands = make(map[string]*cand)
		s.clearQueuesLocked()
	}
	s.mu.Unlock()
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
	for name := range s.wanted {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	s.synced = true
	s.mu.Unlock()
	for _, name := range gone {
		s.Delete(name, 0)
	}
}

// Put implements registry.Handler.
func (s *Supervisor) Put(l registry.Life) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wanted[l.Name] = l
	defer s.countLocked()
	c := s.cands[l.Name]
	if !l.Valid() {
		if s.invalid[l.Name] != l.ModRevision {
			s.invalid[l.Name] = l.ModRevision
			s.log.Warn("invalid life request; not starting it", "name", l.Name, "err", l.Err)
		}
		if c != nil {
			c.want = false
			s.stopLocked(c, stopInvalid) // keeps its age for when the request is fixed
			s.queueLocked(c)
		}
		return
	}
	delete(s.invalid, l.Name)
	if s.gen == nil {
		return // campaigned for with the next session
	}
	if c != nil && c.want && c.life.ID == l.ID {
		kindChanged := c.life.Options.KindName() != l.Options.KindName()
		c.life = l // same life; only options changed
		if kindChanged {
			// What runs changes: stop it (keeping its age), and campaign
			// again if this member runs the new kind, or withdraw.
			s.stopLocked(c, stopKindChanged)
			s.queueLocked(c)
		}
		return
	}
	if c != nil && c.h != nil {
		s.stopLocked(c, stopEnded) // another life under the same name
	}
	if c == nil && !s.isCandidateLocked(l.Name, l.Options.KindName()) {
		return
	}
	c = s.candLocked(l.Name)
	c.life, c.want = l, true
	s.queueNewLocked(c)
}

// queueNewLocked queues the first campaign of c: at once on the preferred
// member, a moment later on the others, so that a life starts where it
// belongs instead of moving there a moment later.
func (s *Supervisor) queueNewLocked(c *cand) {
	if s.preferredLocked(c.name, c.life.Options.KindName()) == s.cfg.ID {
		s.queueLocked(c)
	} else {
		s.queueAtLocked(c, time.Now().Add(deferToPreferred))
	}
}

// setMembers takes a new view of the live members and moves lives to
// match it: this member campaigns where it became a candidate, withdraws
// where it no longer is one, and offers held lives to their preferred
// member.
func (s *Supervisor) setMembers(ms []registry.Member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, len(ms))
	clear(s.leases)
	clear(s.kinds)
	for i, m := range ms {
		ids[i] = m.ID
		s.leases[m.ID] = m.Lease
		if len(m.Kinds) > 0 {
			s.kinds[m.ID] = m.Kinds
		}
	}
	if !slices.Equal(ids, s.members) {
		s.members, s.viewAt = ids, time.Now()
	}
	s.reconcileLocked()
}

// sweep looks at every waiting candidacy again every sweepEvery: a safety
// net under the election watch, which already wakes a candidate when a key
// before it goes. It also checks the age records of held lives
// (verifyAges) and deletes the heartbeats no record needs (collectBeats).
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
		for _, c := range s.cands {
			if c.h == nil && !c.queued {
				s.queueLocked(c)
			}
		}
		s.reconcileLocked()
		s.mu.Unlock()
		s.verifyAges(ctx)
		s.collectBeats(ctx)
	}
}

// sweepEvery is the period of sweep.
const sweepEvery = 30 * time.Second

// minHold is the least time a member runs a life before handing it to its
// preferred member.
const minHold = time.Second

// viewSettle is how long the member set must stay the same before a holder
// hands a life to its preferred member: members that join one after the
// other (a scale-out, a rolling update) move each life once, to where it
// belongs in the end, not once per member.
const viewSettle = time.Second

// deferToPreferred is how long a candidate that is not the preferred member
// waits before its first campaign for a life.
const deferToPreferred = 250 * time.Millisecond

// reconcileLocked brings the elections in line with the wanted lives and
// the member view: a candidacy for every valid wanted life this member is a
// candidate for, a withdrawal where it is not, and a handoff look at every
// held life whose preferred member is another.
func (s *Supervisor) reconcileLocked() {
	if s.gen == nil {
		return
	}
	for name, l := range s.wanted {
		if !l.Valid() {
			continue
		}
		c := s.cands[name]
		kind := l.Options.KindName()
		switch {
		case c == nil:
			if s.isCandidateLocked(name, kind) {
				c = s.candLocked(name)
				c.life, c.want = l, true
				s.queueNewLocked(c)
			}
		case c.held:
			if s.preferredLocked(name, kind) != s.cfg.ID {
				s.queueLocked(c)
			}
		case c.h == nil && !s.isCandidateLocked(name, kind):
			s.queueLocked(c)
		}
	}
}

// placementLocked returns the candidates of a life of kind, most preferred
// first: the top Candidates of the live members that run kind, counting
// this member as live when it runs kind. Every member runs the age kind.
func (s *Supervisor) placementLocked(name, kind string) []string {
	pool := s.members
	self := s.runsKind(kind)
	if kind != workload.AgeKind {
		pool = make([]string, 0, len(s.members))
		for _, id := range s.members {
			if id != s.cfg.ID && slices.Contains(s.kinds[id], kind) {
				pool = append(pool, id)
			}
		}
	}
	if self && !slices.Contains(pool, s.cfg.ID) {
		pool = append(slices.Clip(pool), s.cfg.ID)
	}
	return candidates(name, pool, s.cfg.Candidates)
}

// runsKind reports whether this member runs lives of kind.
func (s *Supervisor) runsKind(kind string) bool {
	_, ok := s.cfg.Kinds[kind]
	return ok
}

func (s *Supervisor) isCandidateLocked(name, kind string) bool {
	return s.runsKind(kind) && slices.Contains(s.placementLocked(name, kind), s.cfg.ID)
}

// preferredLocked returns the member that should run a life of kind; ""
// when no live member runs kind.
func (s *Supervisor) preferredLocked(name, kind string) string {
	if p := s.placementLocked(name, kind); len(p) > 0 {
		return p[0]
	}
	return ""
}

// Delete implements registry.Handler.
func (s *Supervisor) Delete(name string, _ int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.wanted[name]; !ok {
		return
	}
	delete(s.wanted, name)
	delete(s.invalid, name)
	if c := s.cands[name]; c != nil {
		c.want = false
		s.stopLocked(c, stopEnded)
		s.queueLocked(c)
	}
	s.countLocked()
}

func (s *Supervisor) countLocked() {
	s.m.Wanted.Set(float64(len(s.wanted) - len(s.invalid)))
	s.m.Invalid.Set(float64(len(s.invalid)))
}

// logAt logs msg at info level with the time at, when the thing it tells of
// happened, rather than the time of the call: a line written after a
// revoke, say, about a life that stopped before it.
func (s *Supervisor) logAt(at time.Time, msg string, args ...any) {
	if !s.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(at, slog.LevelInfo, msg, 0)
	r.Add(args...)
	_ = s.log.Handler().Handle(context.Background(), r)
}
