package supervisor

import (
	"container/heap"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/immortald/immortald/registry"
)

// cand is this member's part in one life's election within one generation:
// its candidacy key, the life while it starts or runs, and what it still
// owes etcd. Every field is guarded by Supervisor.mu. At most one operation
// per cand is in flight (busy), so the operations of one life are applied
// in the order they were decided.
type cand struct {
	name string
	life registry.Life // the life campaigned for
	want bool          // life is requested and valid: campaign while a candidate
	rev  int64         // create revision of the own election key; 0 when there is none
	h    *heldLife     // the life while it starts (first write pending) and while it runs
	held bool          // h runs: it is in Supervisor.held
	owe  *cleanup      // clean-up due before anything else
	plan *handPlan     // what the last probe found for handing h off

	// While waiting: the candidacies in front of ours and the age record,
	// as the last check read them (ahead nil: not known in full). When the
	// deletion watch has seen every key in front go, the member leads
	// (no key can be created in front of an existing one), and it starts
	// the life without another check (direct).
	ahead  []revKey // every key in front at the last check
	left   int      // how many of them the watch has not yet seen go
	seen   *mvccpb.KeyValue
	direct bool

	busy   bool      // an operation is in flight
	again  bool      // something happened while busy: look again when it ends
	after  time.Time // asked while busy to be looked at then (zero: not): defer when it ends
	queued bool      // in the ready queue or the deferred heap
	due    time.Time // when deferred: not before
	index  int       // position in the deferred heap; -1 when not in it
}

// cleanup is what a stopped or withdrawn candidacy leaves to undo: its
// election key (when rev is not 0) and, for a life that ran, either its
// final age (final) or its age record (dropAge).
type cleanup struct {
	rev     int64
	h       *heldLife
	final   bool // the request became invalid: write the last age, keep the record
	dropAge bool // the life ended: delete its record, unless someone wrote it since
}

// why a life stops, for stopLocked.
type stopReason int

const (
	stopEnded       stopReason = iota // deleted or replaced by another life of the same name
	stopInvalid                       // the request became invalid
	stopKindChanged                   // the request names another kind: what runs changes
)

// String is the reason as the stopped-lives metric and the log name it.
func (r stopReason) String() string {
	switch r {
	case stopInvalid:
		return "invalid"
	case stopKindChanged:
		return "kind_changed"
	}
	return "ended"
}

// queues holds the cands that need an operation: ready ones in order, and
// deferred ones by due time. Lives just won (first write pending) go to
// first, ahead of every campaign: a member that sees 10k lives fall to it
// starts the first of them before it has checked the last.
type queues struct {
	first    []*cand
	ready    []*cand
	deferred deferHeap
}

// wakeLocked wakes the election loop of the current generation.
func (s *Supervisor) wakeLocked() {
	if s.gen == nil {
		return
	}
	select {
	case s.gen.kick <- struct{}{}:
	default:
	}
}

// queueLocked asks for c to be looked at now.
func (s *Supervisor) queueLocked(c *cand) {
	if c.busy {
		c.again = true
		return
	}
	if c.queued && c.index < 0 {
		return // already ready
	}
	if c.index >= 0 {
		heap.Remove(&s.q.deferred, c.index)
	}
	c.queued = true
	if c.h != nil && !c.held {
		s.q.first = append(s.q.first, c)
	} else {
		s.q.ready = append(s.q.ready, c)
	}
	s.wakeLocked()
}

// queueAtLocked asks for c to be looked at once at is reached, unless it is
// queued for earlier already.
func (s *Supervisor) queueAtLocked(c *cand, at time.Time) {
	if !at.After(time.Now()) {
		s.queueLocked(c)
		return
	}
	if c.busy {
		// Looked at once the operation ends, not before at: a probe that
		// finds the successor not campaigning yet waits, it does not probe
		// again at once.
		if c.after.IsZero() || at.Before(c.after) {
			c.after = at
		}
		return
	}
	switch {
	case c.queued && c.index < 0:
		return // ready now
	case c.queued:
		if !at.Before(c.due) {
			return
		}
		c.due = at
		heap.Fix(&s.q.deferred, c.index)
	default:
		c.queued, c.due = true, at
		heap.Push(&s.q.deferred, c)
	}
	s.wakeLocked()
}

// promoteLocked moves every deferred cand that is due to the ready queue
// and returns when the next one falls due (zero: none is deferred).
func (s *Supervisor) promoteLocked(now time.Time) time.Time {
	for len(s.q.deferred) > 0 {
		c := s.q.deferred[0]
		if c.due.After(now) {
			return c.due
		}
		heap.Pop(&s.q.deferred)
		s.q.ready = append(s.q.ready, c)
	}
	return time.Time{}
}

// clearQueuesLocked forgets every queued cand (the generation ended).
func (s *Supervisor) clearQueuesLocked() { s.q = queues{} }

// candLocked returns the cand of name, creating it.
func (s *Supervisor) candLocked(name string) *cand {
	c := s.cands[name]
	if c == nil {
		c = &cand{name: name, index: -1}
		s.cands[name] = c
	}
	return c
}

// stopLocked stops the life c runs or is starting, at once, and owes the
// clean-up its reason asks for.
func (s *Supervisor) stopLocked(c *cand, why stopReason) {
	h := c.h
	if h == nil {
		return
	}
	if c.held && s.removeHeldLocked(h) {
		reason := why.String()
		s.m.Lost.WithLabelValues(reason).Inc()
		s.log.Info("life stopped: "+h.name, "name", h.name, "age", h.ageAt(time.Now())/1000, "reason", reason)
	}
	// Its work stops gracefully; the clean-up (and with it the election
	// key) waits for its Run to return.
	s.stopWorkLocked(h)
	c.owe = &cleanup{rev: c.rev, h: h, final: why != stopEnded, dropAge: why == stopEnded}
	c.h, c.held, c.rev = nil, false, 0
	s.queueLocked(c)
}

// loseLocked handles a held life whose election key was deleted under it:
// it stops at once, and the member campaigns again (a check finds out who
// holds the life now).
func (s *Supervisor) loseLocked(c *cand, why string) {
	h := c.h
	if c.held && s.removeHeldLocked(h) {
		s.m.Lost.WithLabelValues("fenced").Inc()
		s.log.Warn("lost the life: "+why, "name", h.name)
	}
	if h != nil {
		h.expireWork("the life was lost: " + why)
	}
	c.h, c.held, c.rev = nil, false, 0
	s.queueLocked(c)
}

// deferHeap orders deferred cands by due time.
type deferHeap []*cand

func (d deferHeap) Len() int           { return len(d) }
func (d deferHeap) Less(i, j int) bool { return d[i].due.Before(d[j].due) }
func (d deferHeap) Swap(i, j int) {
	d[i], d[j] = d[j], d[i]
	d[i].index, d[j].index = i, j
}
func (d *deferHeap) Push(x any) {
	c := x.(*cand)
	c.index = len(*d)
	*d = append(*d, c)
}
func (d *deferHeap) Pop() any {
	old := *d
	c := old[len(old)-1]
	old[len(old)-1] = nil
	c.index = -1
	*d = old[:len(old)-1]
	return c
}
