package webui

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/immortald/immortald/internal/backoff"
	"github.com/immortald/immortald/registry"
)

// Timings of the watch.
const (
	// tick is how often the hub looks at what changes with time alone:
	// members' readiness, and ages whose estimate drifted.
	tick = time.Second
	// readTimeout bounds a read of the keyspace (the first, or after a
	// broken watch).
	readTimeout = 30 * time.Second
	// readyWithin is the least time since a member's last heartbeat after
	// which it is no longer shown ready; a member that beats less often
	// than every readyWithin/3 gets three of its intervals.
	readyWithin = 3 * time.Second
	// drift is how far the estimate a page ticks on may be off the age
	// etcd carries before the hub sends the life again.
	drift = 500 * time.Millisecond
	// initialLag bounds the age of a heartbeat found by the first read, as
	// its writer's clock and this member's tell it.
	initialLag = 2 * time.Second
	// logSize is how many log entries a snapshot carries.
	logSize = 200
)

// client is one stream: its queue of frames, closed when it is dropped or
// the server closes.
type client struct {
	ch chan []byte
}

// hub is the one watch of a Server and its clients.
type hub struct {
	cfg Config
	wg  sync.WaitGroup // every run's goroutine

	mu      sync.Mutex
	clients map[*client]struct{}
	users   int  // clients, and subscribers waiting for the first read
	run     *run // the watch, nil when it does not run
	linger  *time.Timer
	dropped int64
	closed  bool
}

// run is one watch from its first read until it stops; its state is
// guarded by hub.mu.
type run struct {
	cancel context.CancelFunc
	ready  chan struct{} // closed after the first read
	err    error         // why the first read failed, until it succeeds
	st     *state
}

func newHub(cfg Config) *hub {
	return &hub{cfg: cfg, clients: make(map[*client]struct{})}
}

// subscribe waits for the watch (starting it if need be) and returns its
// snapshot; with stream, a client registered in the same moment, so that
// it gets every change after the snapshot. Errors: ctx's, with the first
// read's error when there is one; errClosed.
func (h *hub) subscribe(ctx context.Context, stream bool) (*client, Snapshot, error) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, Snapshot{}, errClosed
	}
	h.users++
	if h.linger != nil {
		h.linger.Stop()
		h.linger = nil
	}
	if h.run == nil {
		h.start()
	}
	r := h.run
	h.mu.Unlock()

	select {
	case <-r.ready:
	case <-ctx.Done():
		h.mu.Lock()
		err := r.err
		h.leave()
		h.mu.Unlock()
		if err != nil {
			return nil, Snapshot{}, errors.Join(errors.New("cannot read etcd"), err)
		}
		return nil, Snapshot{}, ctx.Err()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.run != r { // closed meanwhile
		h.leave()
		return nil, Snapshot{}, errClosed
	}
	snap := r.st.snapshot(time.Now())
	snap.Member = h.cfg.Member
	if !stream {
		h.leave()
		return nil, snap, nil
	}
	c := &client{ch: make(chan []byte, h.cfg.ClientBuffer)}
	h.clients[c] = struct{}{}
	return c, snap, nil
}

// release ends c's stream (it may have been dropped already).
func (h *hub) release(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[c]; ok {
		delete(h.clients, c)
		h.leave()
	}
}

// drop disconnects c, whose queue is full. h.mu is held.
func (h *hub) drop(c *client) {
	delete(h.clients, c)
	close(c.ch)
	h.dropped++
	h.leave()
}

// leave counts one user less and, at none, stops the watch after Linger.
// h.mu is held.
func (h *hub) leave() {
	h.users--
	if h.users > 0 || h.run == nil || h.closed {
		return
	}
	r := h.run
	h.linger = time.AfterFunc(h.cfg.Linger, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.users == 0 && h.run == r {
			h.run = nil
			r.cancel()
		}
	})
}

// start starts a watch. h.mu is held.
func (h *hub) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{cancel: cancel, ready: make(chan struct{}), st: newState()}
	h.run = r
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.watch(ctx, r)
	}()
}

// close ends every stream and the watch, and waits for every watch's
// goroutine.
func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	if h.linger != nil {
		h.linger.Stop()
	}
	if h.run != nil {
		h.run.cancel()
		h.run = nil
	}
	for c := range h.clients {
		delete(h.clients, c)
		close(c.ch)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

func (h *hub) stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Stats{Clients: len(h.clients), Dropped: h.dropped, Watching: h.run != nil}
}

// broadcast queues d for every client of r, dropping those whose queue is
// full. h.mu is held.
func (h *hub) broadcast(r *run, d *Delta) {
	if h.run != r || d.empty() {
		return
	}
	b, err := frame("delta", d)
	if err != nil {
		h.cfg.Logger.Error("web ui: cannot encode a change", "err", err)
		return
	}
	for c := range h.clients {
		select {
		case c.ch <- b:
		default:
			h.drop(c)
		}
	}
}

// watch runs r: the first read (again until it succeeds), then the watch,
// until ctx ends.
func (h *hub) watch(ctx context.Context, r *run) {
	retry := backoff.New(200*time.Millisecond, 5*time.Second)
	var w *registry.StatusWatch
	for {
		rctx, cancel := context.WithTimeout(ctx, readTimeout)
		var err error
		w, err = registry.WatchStatus(rctx, h.cfg.Client, h.cfg.Keys)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		h.mu.Lock()
		r.err = err
		h.mu.Unlock()
		h.cfg.Logger.Warn("web ui: cannot read the keyspace; will retry", "err", err)
		if !retry.Wait(ctx) {
			return
		}
	}
	defer w.Close()
	retry.Reset()
	now := time.Now()
	h.mu.Lock()
	r.st.load(w, w.List(), now)
	r.err = nil
	close(r.ready)
	h.mu.Unlock()

	wait, ticked := tick, now
	for {
		nctx, cancel := context.WithTimeout(ctx, wait)
		changes, err := w.Next(nctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		// Next returns its ctx's error itself when the wait ended; any
		// other error is a read after a broken watch that failed.
		failed := err != nil && err != context.DeadlineExceeded //nolint:errorlint // the sentinel itself, not a wrapped one
		now = time.Now()
		h.mu.Lock()
		d := r.st.apply(w, changes, now, err, failed)
		if now.Sub(ticked) >= tick {
			r.st.tick(w, d, now)
			ticked = now
		}
		h.broadcast(r, d)
		h.mu.Unlock()
		if failed {
			h.cfg.Logger.Warn("web ui: the watch broke and the keyspace cannot be read again; will retry", "err", err)
			wait = readTimeout // the read after a broken watch needs time
			if !retry.Wait(ctx) {
				return
			}
		} else {
			wait = tick
			retry.Reset()
		}
	}
}

// state is the cluster as one watch saw it.
type state struct {
	rev     int64
	lives   map[string]*life
	members map[string]*member
	log     []Entry // the latest entries, at most logSize
	fresh   []Entry // entries not sent yet
	seq     int64
	etcd    string // why the watch is behind, "" while it is current
	// membersChanged: a member's view changed since the pages last got
	// the members.
	membersChanged bool
}

// life is one life and what the page was told of its age.
type life struct {
	st     registry.Status
	detail registry.LifeDetail
	// est is the age estimated at estAt, as last sent to the pages.
	est   int64
	estAt time.Time
	// seenAt is when this member last saw its status change.
	seenAt time.Time
	// lastHolder is its holder when last seen running; stop how that run
	// ended.
	lastHolder string
	stop       stopKind
}

// member is one member and when this member saw its heartbeats.
type member struct {
	ms       registry.MemberStatus
	beatSeen time.Time     // when its latest heartbeat was seen (zero: none)
	interval time.Duration // between its last two heartbeats seen (0: unknown)
	ready    bool
	held     int
}

func newState() *state {
	return &state{lives: make(map[string]*life), members: make(map[string]*member)}
}

// load takes the first read.
func (s *state) load(w *registry.StatusWatch, all []registry.Status, now time.Time) {
	s.rev = w.Rev()
	s.syncMembers(w, now, false)
	for _, st := range all {
		l := &life{}
		s.lives[st.Name] = l
		s.refresh(w, l, st, now)
	}
	s.account(now)
	s.membersChanged = false // the snapshot carries them
}

// refresh takes st as l's status now, and estimates its age.
func (s *state) refresh(w *registry.StatusWatch, l *life, st registry.Status, now time.Time) {
	l.st, l.detail, l.seenAt = st, w.Detail(st.Name), now
	if st.State == registry.StateRunning {
		l.lastHolder, l.stop = st.Holder, stopUnseen
	}
	l.est, l.estAt = s.estimate(st, l.seenAt, now), now
}

// estimate is the age of st at now: its stored age, plus, while it runs,
// the time since this member saw the heartbeat that stored it (or, before
// any heartbeat carried it, since it saw the status change, at changed).
// Only this member's clock measures the time since: the holder's clock
// only tells which heartbeat stored the age.
func (s *state) estimate(st registry.Status, changed, now time.Time) int64 {
	if st.State != registry.StateRunning {
		return st.AgeMS
	}
	since := now.Sub(changed)
	if m := s.members[st.Holder]; m != nil && m.ms.Beat != nil && st.CheckpointTime != nil && m.ms.Beat.Time.Equal(*st.CheckpointTime) && !m.beatSeen.IsZero() {
		since = now.Sub(m.beatSeen)
	}
	return st.AgeMS + max(since, 0).Milliseconds()
}

// apply takes what one Next returned (changes, or err) and says what
// changed for the pages.
func (s *state) apply(w *registry.StatusWatch, changes []registry.StatusChange, now time.Time, err error, failed bool) *Delta {
	d := &Delta{}
	s.syncMembers(w, now, true)
	touched := map[string]bool{}
	for _, c := range changes {
		name := c.Status.Name
		l := s.lives[name]
		if c.Event == registry.EventRemoved {
			if l != nil {
				s.add(Entry{Time: now, Rev: c.Rev, Event: EventRemoved, Life: name, Member: l.st.Holder, Incarnation: l.st.Incarnation, AgeMS: l.st.AgeMS})
				delete(s.lives, name)
				delete(touched, name)
				d.Removed = append(d.Removed, name)
			}
			continue
		}
		if l == nil || c.Event == registry.EventAdded {
			l = &life{}
			s.lives[name] = l
			d.Removed = slices.DeleteFunc(d.Removed, func(n string) bool { return n == name })
		}
		quarantined := w.Detail(name).Quarantined
		ev, from, detail := word(l, c, quarantined)
		holder := c.Status.Holder
		if c.Event == registry.EventStopped {
			holder = l.st.Holder // the holder that stopped it
		}
		s.add(Entry{Time: now, Rev: c.Rev, Event: ev, Life: name, Member: holder, From: from,
			Incarnation: c.Status.Incarnation, AgeMS: c.Status.AgeMS, Detail: detail})
		if c.Event == registry.EventStopped {
			l.stop = stopLost
			if c.HolderLive {
				l.stop = stopLetGo
			}
		}
		l.st, l.detail.Quarantined = c.Status, quarantined
		if c.Status.State == registry.StateRunning {
			l.lastHolder, l.stop = c.Status.Holder, stopUnseen
		}
		touched[name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(touched)) {
		l := s.lives[name]
		if st, ok := w.Get(name); ok {
			s.refresh(w, l, st, now)
		}
		d.Lives = append(d.Lives, s.view(l, now))
	}
	switch {
	case failed && s.etcd != err.Error():
		s.etcd = err.Error()
		d.Etcd = &s.etcd
	case err == nil && s.etcd != "":
		s.etcd = ""
		d.Etcd = &s.etcd
	}
	s.rev = w.Rev()
	s.finish(d, now)
	return d
}

// tick sends again the lives whose age the pages estimate more than drift
// off the age etcd carries (a holder whose heartbeats stall, or the first
// read's guess of when a heartbeat was written), and notes the members
// whose readiness changed with time.
func (s *state) tick(w *registry.StatusWatch, d *Delta, now time.Time) {
	sent := map[string]bool{}
	for _, v := range d.Lives {
		sent[v.Name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(s.lives)) {
		l := s.lives[name]
		if sent[name] || l.st.State != registry.StateRunning {
			continue
		}
		st, ok := w.Get(name)
		if !ok || st.State != registry.StateRunning || st.Holder != l.st.Holder {
			continue // a change Next reports
		}
		est := s.estimate(st, l.seenAt, now)
		if off := est - s.ageNow(l, now); off <= drift.Milliseconds() && off >= -drift.Milliseconds() {
			continue
		}
		l.st, l.est, l.estAt = st, est, now
		d.Lives = append(d.Lives, s.view(l, now))
	}
	s.finish(d, now)
}

// finish adds the members, when any changed, and the new log entries.
func (s *state) finish(d *Delta, now time.Time) {
	if s.account(now) {
		s.membersChanged = true
	}
	if s.membersChanged {
		d.Members = s.memberViews()
		s.membersChanged = false
	}
	d.Log = append(d.Log, s.fresh...)
	s.fresh = nil
	d.Rev = s.rev
}

// syncMembers takes the members as the watch has them: who joined, who
// left, whose record changed, whose heartbeat was seen now. logged: log
// joins and leaves (not at the first read).
func (s *state) syncMembers(w *registry.StatusWatch, now time.Time, logged bool) {
	seen := map[string]bool{}
	for _, ms := range w.Members() {
		id := ms.Record.ID
		seen[id] = true
		m := s.members[id]
		if m == nil {
			m = &member{ms: ms}
			if ms.Beat != nil {
				m.beatSeen = now.Add(-min(max(now.Sub(ms.Beat.Time), 0), initialLag))
			}
			s.members[id] = m
			s.membersChanged = true
			if logged {
				s.add(Entry{Time: now, Rev: w.Rev(), Event: EventJoined, Member: id, Detail: ms.Record.Address})
			}
			continue
		}
		if ms.BeatRev != m.ms.BeatRev && ms.Beat != nil {
			if m.ms.BeatRev != 0 && ms.Lease == m.ms.Lease {
				m.interval = now.Sub(m.beatSeen)
			}
			m.beatSeen = now
		}
		if !sameMember(m.ms, ms) {
			s.membersChanged = true
		}
		m.ms = ms
	}
	for id := range s.members {
		if !seen[id] {
			delete(s.members, id)
			s.membersChanged = true
			if logged {
				s.add(Entry{Time: now, Rev: w.Rev(), Event: EventLeft, Member: id, Detail: "its record is gone with its lease"})
			}
		}
	}
}

// sameMember reports whether a and b show the same on the page (the
// record's count of lives is not shown: it lags).
func sameMember(a, b registry.MemberStatus) bool {
	ra, rb := a.Record, b.Record
	return ra.ID == rb.ID && ra.Address == rb.Address && ra.Version == rb.Version && ra.Started.Equal(rb.Started) &&
		ra.PID == rb.PID && slices.Equal(ra.Kinds, rb.Kinds) && a.Corrupt == b.Corrupt && a.Lease == b.Lease
}

// account counts the lives each member holds and decides its readiness;
// it reports whether any member's changed.
func (s *state) account(now time.Time) bool {
	held := map[string]int{}
	for _, l := range s.lives {
		if l.st.State == registry.StateRunning {
			held[l.st.Holder]++
		}
	}
	changed := false
	for id, m := range s.members {
		within := max(readyWithin, 3*m.interval)
		ready := m.ms.Corrupt == "" && !m.beatSeen.IsZero() && now.Sub(m.beatSeen) <= within
		if ready != m.ready || held[id] != m.held {
			m.ready, m.held = ready, held[id]
			changed = true
		}
	}
	return changed
}

// add logs e.
func (s *state) add(e Entry) {
	s.seq++
	e.Seq = s.seq
	s.log = append(s.log, e)
	if len(s.log) > logSize {
		s.log = slices.Delete(s.log, 0, len(s.log)-logSize)
	}
	s.fresh = append(s.fresh, e)
}

// ageNow is l's age as the pages estimate it at now.
func (s *state) ageNow(l *life, now time.Time) int64 {
	if l.st.State != registry.StateRunning {
		return l.est
	}
	return l.est + max(now.Sub(l.estAt), 0).Milliseconds()
}

func (s *state) view(l *life, now time.Time) LifeView {
	st := l.st
	return LifeView{
		Name: st.Name, Kind: st.Kind, State: st.State, Holder: st.Holder, Incarnation: st.Incarnation, LifeID: st.LifeID,
		FencingToken: l.detail.FencingToken, AgeMS: st.AgeMS, AgeNowMS: s.ageNow(l, now), Ticking: st.State == registry.StateRunning,
		CheckpointTime: st.CheckpointTime, Labels: st.Labels, Child: st.Child, Error: st.Error, Quarantined: l.detail.Quarantined,
	}
}

func (s *state) memberViews() []MemberView {
	out := make([]MemberView, 0, len(s.members))
	for _, id := range slices.Sorted(maps.Keys(s.members)) {
		m := s.members[id]
		r := m.ms.Record
		out = append(out, MemberView{ID: id, Address: r.Address, Version: r.Version, Started: r.Started, PID: r.PID,
			Kinds: kindsOf(r), Ready: m.ready, LivesHeld: m.held, Corrupt: m.ms.Corrupt})
	}
	return out
}

// snapshot is the whole state at now.
func (s *state) snapshot(now time.Time) Snapshot {
	snap := Snapshot{Rev: s.rev, Lives: make([]LifeView, 0, len(s.lives)), Members: s.memberViews(), Log: append([]Entry{}, s.log...), Etcd: s.etcd}
	for _, name := range slices.Sorted(maps.Keys(s.lives)) {
		snap.Lives = append(snap.Lives, s.view(s.lives[name], now))
	}
	return snap
}
