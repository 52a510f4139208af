package supervisor

import (
	"context"
	"errors"
	"fmt"
	"github.com/immortald/immortald/internal/backoff"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"

	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
)

// Supervisor runs the lives of one member. Create it with New and run it
// with Run; it implements registry.Handler.
type Supervisor struct {
	cfg     Config
	log     *slog.Logger
	m       *Metrics
	limiter *rate.Limiter
	started time.Time

	mu       sync.Mutex
	wanted   map[string]registry.Life // every request seen, valid or not
	invalid  map[string]int64         // invalid requests already logged, by ModRevision
	gen      *generation              // nil between sessions
	runners  map[string]*runner       // of gen, by life name
	members  []string                 // live members, sorted, as last seen under members/
	synced   bool                     // registry listed at least once
	stopping bool

	heldMu     sync.Mutex
	held       map[string]*heldLife
	heldClosed bool // no life may be added: the session is lost or ending

	// writeMu serialises age writes, so a member's writes for one life are
	// applied in the order their ages were taken.
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
		limiter: rate.NewLimiter(rate.Limit(cfg.CampaignsPerSecond), max(1, int(cfg.CampaignsPerSecond/10))),
		wanted:  make(map[string]registry.Life),
		invalid: make(map[string]int64),
		runners: make(map[string]*runner),
		held:    make(map[string]*heldLife),
	}, nil
}

// Ready reports whether the member holds a session, has read the wanted
// lives, and is not shutting down.
func (s *Supervisor) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen != nil && s.synced && !s.stopping
}

// Held returns the age in milliseconds of every life this member runs now.
func (s *Supervisor) Held() map[string]int64 {
	now := time.Now()
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	out := make(map[string]int64, len(s.held))
	for name, h := range s.held {
		out[name] = h.ageAt(now)
	}
	return out
}

// Run runs the member until ctx ends, then shuts down gracefully: it stops
// every life, writes the final checkpoints and revokes the lease, each step
// bounded by ShutdownTimeout. It returns nil after a graceful stop.
func (s *Supervisor) Run(ctx context.Context) error {
	s.started = time.Now()
	bg, stopBg := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(4)
	go func() {
		defer wg.Done()
		s.reconcile(bg)
	}()
	go func() {
		defer wg.Done()
		_ = registry.Watch(bg, s.cfg.Client, s.cfg.Keys, s, s.log)
	}()
	go func() {
		defer wg.Done()
		_ = registry.WatchMembers(bg, s.cfg.Client, s.cfg.Keys, s.setMembers, s.log)
	}()
	go func() {
		defer wg.Done()
		s.checkpointLoop(bg)
	}()
	defer func() {
		stopBg()
		wg.Wait()
	}()

	for {
		sess := s.openSession(ctx)
		if sess == nil {
			return nil // ctx ended before a session could be had
		}
		gen := s.startGeneration(sess)
		select {
		case <-ctx.Done():
			s.shutdown(gen)
			return nil
		case <-sess.Done():
			s.loseGeneration(gen)
		}
	}
}

// openSession grants a lease and registers the member on it, retrying until
// it succeeds or ctx ends (nil).
func (s *Supervisor) openSession(ctx context.Context) *lease.Session {
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
		if err := s.register(ctx, sess); err != nil {
			s.log.Warn("cannot register member; will retry", "id", s.cfg.ID, "err", err)
			closeCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
			_ = sess.Close(closeCtx)
			cancel()
			retry.Wait(ctx)
			continue
		}
		s.m.Sessions.Inc()
		s.log.Info("session opened", "id", s.cfg.ID, "lease", fmt.Sprintf("%x", int64(sess.Lease())), "ttl", s.cfg.Lease.TTL)
		return sess
	}
	return nil
}

// register writes members/<id> on the session's lease, unless a live
// member with the same id holds it: two members with one id would be
// indistinguishable in every record.
func (s *Supervisor) register(ctx context.Context, sess *lease.Session) error {
	key := s.cfg.Keys.Member(s.cfg.ID)
	resp, err := s.cfg.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(s.memberRecord(0).Marshal()), clientv3.WithLease(sess.Lease()))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		other := resp.Responses[0].GetResponseRange().Kvs
		if len(other) > 0 {
			return fmt.Errorf("member id %q is in use by a live member (lease %x); waiting for it to go", s.cfg.ID, other[0].Lease)
		}
		return fmt.Errorf("member id %q is in use", s.cfg.ID)
	}
	return nil
}

func (s *Supervisor) memberRecord(lives int) registry.MemberRecord {
	return registry.MemberRecord{ID: s.cfg.ID, Address: s.cfg.Address, Version: s.cfg.Version, Started: s.started, Lives: lives}
}

// startGeneration starts a runner for every valid wanted life.
func (s *Supervisor) startGeneration(sess *lease.Session) *generation {
	ctx, cancel := context.WithCancel(context.Background())
	gen := &generation{sess: sess, ctx: ctx, cancel: cancel}
	s.openHeld()
	s.mu.Lock()
	s.gen = gen
	s.reconcileLocked() // no runners yet: starts one per life this member is a candidate for
	s.mu.Unlock()
	gen.wg.Add(1)
	go func() {
		defer gen.wg.Done()
		s.publishMember(gen)
	}()
	return gen
}

// loseGeneration handles a lost session: every life stops at once, before
// anything else; then the old lease is revoked in case it still lives.
func (s *Supervisor) loseGeneration(gen *generation) {
	gen.cancel()
	n := s.dropAllHeld("session lost")
	s.m.SessionLosses.Inc()
	s.log.Warn("session lost: stopped every life this member held", "lives", n, "lease", fmt.Sprintf("%x", int64(gen.sess.Lease())))
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
			s.log.Info("revoked the lease of a lost session", "lease", fmt.Sprintf("%x", int64(id)))
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
		default:
			left = append(left, id)
		}
	}
	s.stale = left
}

// shutdown is the graceful stop: readiness off, final checkpoints, revoke.
func (s *Supervisor) shutdown(gen *generation) {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	t0 := time.Now()

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	n, err := s.finalCheckpoints(ctx)
	cancel()
	if err != nil {
		s.log.Error("final checkpoints failed; peers resume from the previous ones", "err", err)
	}
	s.endGeneration(gen)

	ctx, cancel = context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := gen.sess.Close(ctx); err != nil {
		s.log.Error("cannot revoke the lease; peers take over when it expires", "err", err)
	}
	s.log.Info("shut down: lives handed off", "lives", n, "took", time.Since(t0).Round(time.Millisecond))
}

// endGeneration stops every runner of gen and waits for them a bounded time:
// a runner blocked on an unreachable etcd finishes on its own later.
func (s *Supervisor) endGeneration(gen *generation) {
	s.mu.Lock()
	gen.cancel()
	clear(s.runners)
	if s.gen == gen {
		s.gen = nil
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
		s.log.Warn("some campaigns are still waiting on etcd; leaving them to finish on their own")
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
		s.heldMu.Lock()
		n := len(s.held)
		s.heldMu.Unlock()
		if n == last {
			continue
		}
		ctx, cancel := context.WithTimeout(gen.ctx, s.cfg.Lease.TTL)
		_, err := s.cfg.Client.Txn(ctx).
			If(clientv3.Compare(clientv3.LeaseValue(key), "=", gen.sess.Lease())).
			Then(clientv3.OpPut(key, string(s.memberRecord(n).Marshal()), clientv3.WithLease(gen.sess.Lease()))).
			Commit()
		cancel()
		if err == nil {
			last = n
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
	old, had := s.wanted[l.Name]
	s.wanted[l.Name] = l
	defer s.countLocked()
	if !l.Valid() {
		if s.invalid[l.Name] != l.ModRevision {
			s.invalid[l.Name] = l.ModRevision
			s.log.Warn("invalid life request; not starting it", "name", l.Name, "err", l.Err)
		}
		if r := s.runners[l.Name]; r != nil {
			s.stopRunnerLocked(r, stopInvalid) // keeps its age for when the request is fixed
		}
		return
	}
	delete(s.invalid, l.Name)
	if had && old.Valid() && old.ID == l.ID {
		return // same life; only options changed
	}
	if s.gen == nil {
		return // started with the next session
	}
	var after <-chan struct{}
	if r := s.runners[l.Name]; r != nil {
		after = s.stopRunnerLocked(r, stopEnded) // another life under the same name
	}
	if s.isCandidateLocked(l.Name) {
		s.startRunnerLocked(l, after)
	}
}

// setMembers takes a new view of the live members and moves lives to
// match it: runners start where this member became a candidate, and every
// runner is told to look again (a holder hands a life to its preferred
// member once that member campaigns; a waiting runner that is no longer a
// candidate withdraws).
func (s *Supervisor) setMembers(ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members = ids
	s.reconcileLocked()
}

// reconcile runs reconcileLocked every few seconds, for whatever a runner
// that ended on its own (its life was replaced, it withdrew) left undone.
func (s *Supervisor) reconcile(ctx context.Context) {
	t := time.NewTicker(reconcileEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		s.reconcileLocked()
		s.mu.Unlock()
	}
}

// reconcileEvery is the period of reconcile.
const reconcileEvery = 5 * time.Second

// reconcileLocked starts a runner for every valid wanted life this member
// is a candidate for and has none, and nudges every other runner.
func (s *Supervisor) reconcileLocked() {
	if s.gen == nil {
		return
	}
	for name, l := range s.wanted {
		if !l.Valid() {
			continue
		}
		if r := s.runners[name]; r != nil {
			r.nudge()
		} else if s.isCandidateLocked(name) {
			s.startRunnerLocked(l, nil)
		}
	}
}

// placementLocked returns the candidates of a life, most preferred first:
// the top Candidates of the live members, counting this member as live.
func (s *Supervisor) placementLocked(name string) []string {
	pool := s.members
	if !slices.Contains(pool, s.cfg.ID) {
		pool = append(slices.Clip(pool), s.cfg.ID)
	}
	return candidates(name, pool, s.cfg.Candidates)
}

func (s *Supervisor) isCandidateLocked(name string) bool {
	return slices.Contains(s.placementLocked(name), s.cfg.ID)
}

func (s *Supervisor) isCandidate(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isCandidateLocked(name)
}

// preferred returns the member that should run a life.
func (s *Supervisor) preferred(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.placementLocked(name)[0]
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
	if r := s.runners[name]; r != nil {
		s.stopRunnerLocked(r, stopEnded)
	}
	s.countLocked()
}

func (s *Supervisor) countLocked() {
	s.m.Wanted.Set(float64(len(s.wanted) - len(s.invalid)))
	s.m.Invalid.Set(float64(len(s.invalid)))
}
