package engine

import (
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

// Config configures an Engine.
type Config struct {
	// ID is this member's id: the value of its election keys and the
	// holder of its age records.
	ID string
	// Keys is the keyspace.
	Keys registry.Keys
	// Candidates is how many members campaign for each life (rendezvous
	// placement over the live members that run its kind). At least 1.
	Candidates int
	// Kinds are the kinds this member runs: for each, whether it has work
	// (a workload.Kind with a non-nil New). The age kind is always run.
	Kinds map[string]bool
	// Now is the engine's clock; default time.Now. Tests give their own.
	Now func() time.Time
	// Epoch is where the member's heartbeat clock counts from (see
	// ClockMS).
	Epoch time.Time
	// Logger receives life events; default slog.Default().
	Logger *slog.Logger
	// Metrics, if set, is updated as lives come and go.
	Metrics *Metrics
	// Effects carries out what the engine decides beyond etcd writes.
	// Required.
	Effects Effects
}

// Effects are what the engine asks its driver to do besides sending Txns.
// The engine calls them while its caller holds whatever guards the engine:
// they must not block, and must not call the engine.
type Effects interface {
	// Wake says that a step is ready (Take has something) or that the next
	// deferred step's time changed (NextDue).
	Wake()
	// StartWork starts a Run of l, which is running: l.Work is nil before
	// its first Run, and whatever the driver left there after.
	StartWork(l *Life)
	// StopWork asks l's Run to return (workload.ErrStopped); RunReturned
	// tells when it did.
	StopWork(l *Life)
	// ExpireWork tells l's Run to stop at once (workload.ErrDeadline).
	ExpireWork(l *Life, why string)
}

// Metrics are the collectors the engine updates. Every field must be set.
type Metrics struct {
	Held         prometheus.Gauge
	Wanted       prometheus.Gauge
	Invalid      prometheus.Gauge
	Started      prometheus.Counter
	Lost         *prometheus.CounterVec // by reason
	Quarantined  prometheus.Counter
	Handoffs     prometheus.Counter
	DirectStarts prometheus.Counter
}

// Engine is the election state of one member: the lives wanted, the member
// view, the candidacies of the current session and the lives held. It is
// plain data: every method must be called by one goroutine at a time (the
// supervisor holds one mutex around each call, never across I/O).
type Engine struct {
	cfg Config
	log *slog.Logger
	m   Metrics

	wanted  map[string]registry.Life // every request seen, valid or not
	invalid map[string]int64         // invalid requests already logged, by ModRevision
	synced  bool                     // the requests were listed at least once

	members []string            // live members, sorted, as last seen under members/
	leases  map[string]int64    // their session leases, by id
	kinds   map[string][]string // the kinds they run (beyond age), by id
	viewAt  time.Time           // when members last changed

	// The session; lease 0 between sessions.
	lease      int64
	session    uint64             // counts sessions: a Batch of another is void
	cands      map[string]*cand   // of this session, by life name
	q          queues             // cands that need a step
	electFails int                // election batches failed in a row
	beats      map[int64]seenBeat // the newest heartbeat seen of each lease, this session
	held       map[string]*Life   // the lives this member runs now
	heldClosed bool               // no life may run: the session is lost or ending
	stopping   bool               // the member shuts down: no new work starts
	runs       map[string]*Life   // lives whose Run has not returned, by name
}

// New returns an engine with no session.
func New(cfg Config) *Engine {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Epoch.IsZero() {
		cfg.Epoch = cfg.Now()
	}
	e := &Engine{
		cfg:        cfg,
		log:        cfg.Logger,
		wanted:     make(map[string]registry.Life),
		invalid:    make(map[string]int64),
		leases:     make(map[string]int64),
		kinds:      make(map[string][]string),
		cands:      make(map[string]*cand),
		beats:      make(map[int64]seenBeat),
		held:       make(map[string]*Life),
		runs:       make(map[string]*Life),
		heldClosed: true,
	}
	if cfg.Metrics != nil {
		e.m = *cfg.Metrics
	} else {
		e.m = unregisteredMetrics()
	}
	return e
}

// unregisteredMetrics are collectors nobody reads, for an engine given
// none.
func unregisteredMetrics() Metrics {
	g := func() prometheus.Gauge { return prometheus.NewGauge(prometheus.GaugeOpts{Name: "unused"}) }
	c := func() prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"}) }
	return Metrics{Held: g(), Wanted: g(), Invalid: g(), Started: c(),
		Lost:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "unused"}, []string{"reason"}),
		Quarantined: c(), Handoffs: c(), DirectStarts: c()}
}

func (e *Engine) now() time.Time { return e.cfg.Now() }

// ClockMS is the member's heartbeat clock at t: monotonic milliseconds
// since Config.Epoch.
func (e *Engine) ClockMS(t time.Time) int64 { return t.Sub(e.cfg.Epoch).Milliseconds() }

// OpenSession starts the elections of a new session on lease: a
// candidacy for every valid wanted life this member is a candidate for.
func (e *Engine) OpenSession(lease int64) {
	e.lease = lease
	e.session++
	e.heldClosed = false
	e.electFails = 0
	clear(e.beats)
	e.reconcile()
}

// Lease is the current session's lease; 0 between sessions.
func (e *Engine) Lease() int64 { return e.lease }

// EndSession forgets the session's candidacies: its lives must have been
// taken away (TakeAllHeld). A Batch of it prepared or answered later is
// void.
func (e *Engine) EndSession() {
	e.lease = 0
	e.session++
	e.cands = make(map[string]*cand)
	e.q = queues{}
}

// TakeAllHeld stops every running life at once without writing anything,
// returns them, and lets no life run until the next session opens. Their
// work must be told to stop at once (ExpireAllWork) first; a Run started
// since (an answer the driver handled between the two calls) is told here,
// or it would run on after the session, and hold back every later hold of
// its name in this member.
func (e *Engine) TakeAllHeld() []*Life {
	e.heldClosed = true
	for _, l := range e.runs {
		e.expireWork(l, "the session was given up")
	}
	out := make([]*Life, 0, len(e.held))
	for _, l := range e.held {
		l.stopped = true
		out = append(out, l)
	}
	clear(e.held)
	e.setHeldGauge()
	return out
}

// Closed reports whether no life may run now: the session is lost or
// ending, or none is open. A heartbeat then would count time the lives
// did not run.
func (e *Engine) Closed() bool { return e.heldClosed }

// SetStopping marks the member as shutting down: no Run starts any more.
func (e *Engine) SetStopping() { e.stopping = true }

// Ready reports whether the member has a session, has listed the
// requests and is not shutting down (the heartbeats are the driver's).
func (e *Engine) Ready() bool { return e.lease != 0 && e.synced && !e.stopping }

// Held returns the age in milliseconds at t of every life running now.
func (e *Engine) Held(t time.Time) map[string]int64 {
	out := make(map[string]int64, len(e.held))
	for name, l := range e.held {
		out[name] = l.AgeAt(t)
	}
	return out
}

// HeldLives returns the lives running now.
func (e *Engine) HeldLives() []*Life {
	out := make([]*Life, 0, len(e.held))
	for _, l := range e.held {
		out = append(out, l)
	}
	return out
}

// Running returns the running life of name, or nil.
func (e *Engine) Running(name string) *Life { return e.held[name] }

// HeldCount is the number of lives running now.
func (e *Engine) HeldCount() int { return len(e.held) }

// Candidacies returns the names of the lives whose candidacy key this
// member holds (or may hold: its creation was sent) in this session.
func (e *Engine) Candidacies() []string {
	var out []string
	for _, c := range e.cands {
		if c.rev != 0 {
			out = append(out, c.name)
		}
	}
	return out
}

// FirstMember reports whether this member is the first live member in id
// order, and returns the leases of the live members (this one's too).
func (e *Engine) FirstMember() (bool, map[int64]bool) {
	live := make(map[int64]bool, len(e.leases)+1)
	for _, l := range e.leases {
		live[l] = true
	}
	if e.lease != 0 {
		live[e.lease] = true
	}
	return len(e.members) > 0 && e.members[0] == e.cfg.ID, live
}

// Listed notes that every request has been delivered at least once.
func (e *Engine) Listed() { e.synced = true }

// Wanted returns the names of every request seen.
func (e *Engine) Wanted() []string {
	out := make([]string, 0, len(e.wanted))
	for name := range e.wanted {
		out = append(out, name)
	}
	return out
}

// Put takes a request that was put: campaign for it where this member is
// a candidate; an invalid one stops the life (keeping its age), another
// life under the name ends the old one, and another kind stops what runs.
func (e *Engine) Put(l registry.Life) {
	e.wanted[l.Name] = l
	defer e.count()
	c := e.cands[l.Name]
	if !l.Valid() {
		if e.invalid[l.Name] != l.ModRevision {
			e.invalid[l.Name] = l.ModRevision
			e.log.Warn("invalid life request; not starting it", "name", l.Name, "err", l.Err)
		}
		if c != nil {
			c.want = false
			e.stop(c, stopInvalid) // keeps its age for when the request is fixed
			e.queue(c)
		}
		return
	}
	delete(e.invalid, l.Name)
	if e.lease == 0 {
		return // campaigned for with the next session
	}
	if c != nil && c.want && c.life.ID == l.ID {
		kindChanged := c.life.Options.KindName() != l.Options.KindName()
		c.life = l // same life; only options changed
		if kindChanged {
			// What runs changes: stop it (keeping its age), and campaign
			// again if this member runs the new kind, or withdraw.
			e.stop(c, stopKindChanged)
			e.queue(c)
		}
		return
	}
	if c != nil && c.h != nil {
		e.stop(c, stopEnded) // another life under the same name
	}
	if c == nil && !e.isCandidate(l.Name, l.Options.KindName()) {
		return
	}
	c = e.candOf(l.Name)
	c.life, c.want = l, true
	e.queueNew(c)
}

// Delete takes a request that was deleted: its life ends, its records go.
func (e *Engine) Delete(name string) {
	if _, ok := e.wanted[name]; !ok {
		return
	}
	delete(e.wanted, name)
	delete(e.invalid, name)
	if c := e.cands[name]; c != nil {
		c.want = false
		e.stop(c, stopEnded)
		e.queue(c)
	}
	e.count()
}

func (e *Engine) count() {
	e.m.Wanted.Set(float64(len(e.wanted) - len(e.invalid)))
	e.m.Invalid.Set(float64(len(e.invalid)))
}

// SetMembers takes a new view of the live members and moves lives to
// match it: this member campaigns where it became a candidate, withdraws
// where it no longer is one, and offers running lives to their preferred
// member.
func (e *Engine) SetMembers(ms []registry.Member) {
	ids := make([]string, len(ms))
	clear(e.leases)
	clear(e.kinds)
	for i, m := range ms {
		ids[i] = m.ID
		e.leases[m.ID] = m.Lease
		if len(m.Kinds) > 0 {
			e.kinds[m.ID] = m.Kinds
		}
	}
	if !slices.Equal(ids, e.members) {
		e.members, e.viewAt = ids, e.now()
	}
	e.reconcile()
}

// Sweep looks at every waiting candidacy again (a safety net under the
// election watch) and reconciles the elections with the requests.
func (e *Engine) Sweep() {
	for _, c := range e.cands {
		if c.phase == Campaigning && !c.queued {
			e.queue(c)
		}
	}
	e.reconcile()
}

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

// MinHold and ViewSettle are exported for tests of the timing they bound.
const (
	MinHold    = minHold
	ViewSettle = viewSettle
	ProbeAgain = probeAgain
)

// reconcile brings the elections in line with the wanted lives and the
// member view: a candidacy for every valid wanted life this member is a
// candidate for, a withdrawal where it is not, and a handoff look at every
// running life whose preferred member is another.
func (e *Engine) reconcile() {
	if e.lease == 0 {
		return
	}
	for name, l := range e.wanted {
		if !l.Valid() {
			continue
		}
		c := e.cands[name]
		kind := l.Options.KindName()
		switch {
		case c == nil:
			if e.isCandidate(name, kind) {
				c = e.candOf(name)
				c.life, c.want = l, true
				e.queueNew(c)
			}
		case c.phase == Running:
			if e.preferred(name, kind) != e.cfg.ID {
				e.queue(c)
			}
		case c.phase == Campaigning && !e.isCandidate(name, kind):
			e.queue(c)
		}
	}
}

// queueNew queues the first campaign of c: at once on the preferred
// member, a moment later on the others, so that a life starts where it
// belongs instead of moving there a moment later.
func (e *Engine) queueNew(c *cand) {
	if e.preferred(c.name, c.life.Options.KindName()) == e.cfg.ID {
		e.queue(c)
	} else {
		e.queueAt(c, e.now().Add(deferToPreferred))
	}
}

// placement returns the candidates of a life of kind, most preferred
// first: the top Candidates of the live members that run kind, counting
// this member as live when it runs kind. Every member runs the age kind.
func (e *Engine) placement(name, kind string) []string {
	pool := e.members
	_, self := e.cfg.Kinds[kind]
	if kind != workload.AgeKind {
		pool = make([]string, 0, len(e.members))
		for _, id := range e.members {
			if id != e.cfg.ID && slices.Contains(e.kinds[id], kind) {
				pool = append(pool, id)
			}
		}
	}
	if self && !slices.Contains(pool, e.cfg.ID) {
		pool = append(slices.Clip(pool), e.cfg.ID)
	}
	return Candidates(name, pool, e.cfg.Candidates)
}

func (e *Engine) isCandidate(name, kind string) bool {
	if _, ok := e.cfg.Kinds[kind]; !ok {
		return false
	}
	return slices.Contains(e.placement(name, kind), e.cfg.ID)
}

// preferred returns the member that should run a life of kind; "" when no
// live member runs kind.
func (e *Engine) preferred(name, kind string) string {
	if p := e.placement(name, kind); len(p) > 0 {
		return p[0]
	}
	return ""
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
