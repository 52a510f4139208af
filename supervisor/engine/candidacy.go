package engine

import (
	"container/heap"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/immortald/immortald/registry"
)

// Phase is where a candidacy is in its life cycle; see the package doc for
// the diagram. A phase changes only in the transition functions below
// (win, unwin, run, beginHandoff, rehold, handedOff, lose, stop, withdraw,
// cleaned), one function per arrow.
type Phase int

const (
	// Campaigning: the member wants the life (or withdraws from it): it
	// creates its candidacy key, or waits behind the keys in front of it.
	Campaigning Phase = iota
	// Starting: the member leads the election; the life's first, fenced
	// write (its running record) is to be sent or in flight.
	Starting
	// Running: the member holds the life: it ages, its work runs, and a
	// heartbeat carries its record forward.
	Running
	// HandingOff: the life stopped for a handoff whose Txn (its final
	// record and the resignation) is in flight.
	HandingOff
	// CleaningUp: the life stopped, or the member withdrew: the final
	// record, the deletion of its records, and the deletion of the
	// candidacy key are owed.
	CleaningUp
)

func (p Phase) String() string {
	switch p {
	case Campaigning:
		return "campaigning"
	case Starting:
		return "starting"
	case Running:
		return "running"
	case HandingOff:
		return "handing_off"
	case CleaningUp:
		return "cleaning_up"
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// cand is this member's part in one life's election within one session:
// its phase, its candidacy key, the life while it starts or runs, and what
// it still owes etcd. At most one step per cand is in flight (busy), so the
// steps of one life are applied in the order they were decided.
type cand struct {
	name  string
	phase Phase
	life  registry.Life // the life campaigned for
	want  bool          // life is requested and valid: campaign while a candidate
	rev   int64         // create revision of the own election key; 0 when there is none
	h     *Life         // Starting, Running, HandingOff: the life
	owe   *cleanup      // CleaningUp: what is owed
	plan  *handPlan     // Running: what the last probe found for handing h off

	// While Campaigning: the candidacies in front of ours and the age
	// record, as the last check read them (ahead nil: not known in full).
	// When the deletion watch has seen every key in front go, the member
	// leads (no key can be created in front of an existing one), and it
	// starts the life without another check (direct).
	ahead  []revKey // every key in front at the last check
	left   int      // how many of them the watch has not yet seen go
	seen   *mvccpb.KeyValue
	direct bool

	busy   bool      // a step is in flight
	again  bool      // something happened while busy: look again when it ends
	after  time.Time // asked while busy to be looked at then (zero: not): defer when it ends
	queued bool      // in a ready queue or the deferred heap
	due    time.Time // when deferred: not before
	index  int       // position in the deferred heap; -1 when not in it
}

// cleanup is what a stopped or withdrawn candidacy leaves to undo: its
// election key (when rev is not 0) and, for a life that ran, either its
// final age (final) or its records (dropAge).
type cleanup struct {
	rev     int64
	h       *Life
	final   bool // the request became invalid or changed kind: write the last age, keep the record
	dropAge bool // the life ended: delete its records, unless someone wrote them since
}

// why a life stops, for stop.
type stopReason int

const (
	stopEnded       stopReason = iota // deleted or replaced by another life of the same name
	stopInvalid                       // the request became invalid
	stopKindChanged                   // the request names another kind: what runs changes
	stopAbandoned                     // its Run ignored its stop: the member gives the life up
)

// String is the reason as the stopped-lives metric and the log name it.
func (r stopReason) String() string {
	switch r {
	case stopInvalid:
		return "invalid"
	case stopKindChanged:
		return "kind_changed"
	case stopAbandoned:
		return "abandoned"
	}
	return "ended"
}

// candOf returns the cand of name, creating it (Campaigning).
func (e *Engine) candOf(name string) *cand {
	c := e.cands[name]
	if c == nil {
		c = &cand{name: name, index: -1}
		e.cands[name] = c
	}
	return c
}

// The transitions. Each is the one place its arrow of the diagram is
// taken; each checks the phase it leaves.

// win: Campaigning -> Starting. The member leads; h is the life to start.
func (e *Engine) win(c *cand, h *Life) {
	e.must(c, "win", Campaigning)
	c.phase, c.h = Starting, h
	c.ahead, c.left, c.seen, c.direct = nil, 0, nil, false
}

// unwin: Starting -> Campaigning, when the first write shows that the
// member must look again (dropKey: its candidacy is gone too).
func (e *Engine) unwin(c *cand, dropKey bool) {
	e.must(c, "unwin", Starting)
	c.phase, c.h = Campaigning, nil
	if dropKey {
		c.rev = 0
	}
}

// run: Starting -> Running, once the first write was applied; false (and
// back to Campaigning, its key kept for the final heartbeat to delete)
// when no life may run: the session is ending.
func (e *Engine) run(c *cand) bool {
	e.must(c, "run", Starting)
	if !e.addHeld(c.h) {
		c.phase, c.h = Campaigning, nil
		return false
	}
	c.phase = Running
	return true
}

// beginHandoff: Running -> HandingOff, as the handoff Txn is sent: the life
// stops; false when it was taken already.
func (e *Engine) beginHandoff(c *cand) bool {
	e.must(c, "beginHandoff", Running)
	if !e.removeHeld(c.h) {
		return false
	}
	c.phase = HandingOff
	return true
}

// rehold: HandingOff -> Running, after a handoff that did not happen; to
// Campaigning when no life may run any more (the session is ending).
func (e *Engine) rehold(c *cand) {
	e.must(c, "rehold", HandingOff)
	if !e.restoreHeld(c.h) {
		c.phase, c.h, c.rev = Campaigning, nil, 0
		return
	}
	c.phase = Running
	e.resumeWork(c)
}

// handedOff: HandingOff -> Campaigning, after the handoff was applied: the
// member is a waiting candidate again, if it still is one.
func (e *Engine) handedOff(c *cand) {
	e.must(c, "handedOff", HandingOff)
	c.phase, c.h, c.rev, c.plan = Campaigning, nil, 0, nil
}

// lose: Starting, Running or HandingOff -> Campaigning, when the member
// finds it does not hold the life (its election key was deleted, a fenced
// write failed): it stops at once, and the member campaigns again (a check
// finds out who holds the life now).
func (e *Engine) lose(c *cand, why string) {
	e.must(c, "lose", Starting, Running, HandingOff)
	h := c.h
	if c.phase == Running && e.removeHeld(h) {
		e.m.Lost.WithLabelValues("fenced").Inc()
		e.log.Warn("lost the life: "+why, "name", h.name)
	}
	e.expireWork(h, "the life was lost: "+why)
	c.phase, c.h, c.rev, c.plan = Campaigning, nil, 0, nil
	e.queue(c)
}

// stop: Starting, Running or HandingOff -> CleaningUp: the life stops at
// once (its work gracefully: the clean-up waits for its Run), and the
// clean-up its reason asks for is owed. Other phases: nothing to stop.
func (e *Engine) stop(c *cand, why stopReason) {
	if c.phase != Starting && c.phase != Running && c.phase != HandingOff {
		return
	}
	h := c.h
	if c.phase == Running && e.removeHeld(h) {
		reason := why.String()
		e.m.Lost.WithLabelValues(reason).Inc()
		e.log.Info("life stopped: "+h.name, "name", h.name, "age", h.AgeAt(e.now())/1000, "reason", reason)
	}
	e.stopWork(h)
	c.owe = &cleanup{rev: c.rev, h: h, final: why != stopEnded, dropAge: why == stopEnded}
	c.phase, c.h, c.rev, c.plan = CleaningUp, nil, 0, nil
	e.queue(c)
}

// withdraw: Campaigning -> CleaningUp: the member is no longer a
// candidate; its candidacy key is owed.
func (e *Engine) withdraw(c *cand) {
	e.must(c, "withdraw", Campaigning)
	c.owe = &cleanup{rev: c.rev}
	c.phase, c.rev = CleaningUp, 0
	c.ahead, c.left, c.seen, c.direct = nil, 0, nil, false
}

// cleaned: CleaningUp -> Campaigning, once the clean-up o was sent and
// answered.
func (e *Engine) cleaned(c *cand, o *cleanup) {
	if c.phase != CleaningUp || c.owe != o {
		return // stopped again meanwhile: another clean-up is owed
	}
	c.phase, c.owe = Campaigning, nil
}

// must panics unless c is in one of the phases: a transition from another
// phase is a bug in the engine, not a state to carry on from.
func (e *Engine) must(c *cand, step string, from ...Phase) {
	for _, p := range from {
		if c.phase == p {
			return
		}
	}
	panic(fmt.Sprintf("engine: %s of %q in phase %s", step, c.name, c.phase))
}

// queues holds the cands that need a step: ready ones in order, and
// deferred ones by due time. Lives just won (first write pending) go to
// first, ahead of every campaign: a member that sees 10k lives fall to it
// starts the first of them before it has checked the last.
type queues struct {
	first    []*cand
	ready    []*cand
	deferred deferHeap
}

// wake tells the driver that a step may be ready.
func (e *Engine) wake() {
	if e.lease != 0 {
		e.cfg.Effects.Wake()
	}
}

// queue asks for c to be looked at now.
func (e *Engine) queue(c *cand) {
	if c.busy {
		c.again = true
		return
	}
	if c.queued && c.index < 0 {
		return // already ready
	}
	if c.index >= 0 {
		heap.Remove(&e.q.deferred, c.index)
	}
	c.queued = true
	if c.phase == Starting {
		e.q.first = append(e.q.first, c)
	} else {
		e.q.ready = append(e.q.ready, c)
	}
	e.wake()
}

// queueAt asks for c to be looked at once at is reached, unless it is
// queued for earlier already.
func (e *Engine) queueAt(c *cand, at time.Time) {
	if !at.After(e.now()) {
		e.queue(c)
		return
	}
	if c.busy {
		// Looked at once the step ends, not before at: a probe that finds
		// the successor not campaigning yet waits, it does not probe again
		// at once.
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
		heap.Fix(&e.q.deferred, c.index)
	default:
		c.queued, c.due = true, at
		heap.Push(&e.q.deferred, c)
	}
	e.wake()
}

// NextDue moves every deferred step that is due to the ready queue and
// returns when the next one falls due (zero: none is deferred).
func (e *Engine) NextDue() time.Time {
	now := e.now()
	for len(e.q.deferred) > 0 {
		c := e.q.deferred[0]
		if c.due.After(now) {
			return c.due
		}
		heap.Pop(&e.q.deferred)
		e.q.ready = append(e.q.ready, c)
	}
	return time.Time{}
}

// popReady takes the next ready cand, lives just won first; nil when none
// is ready.
func (e *Engine) popReady() *cand {
	for _, q := range []*[]*cand{&e.q.first, &e.q.ready} {
		if len(*q) == 0 {
			continue
		}
		c := (*q)[0]
		(*q)[0] = nil
		*q = (*q)[1:]
		if len(*q) == 0 {
			*q = nil // let the backing array go
		}
		return c
	}
	return nil
}

// done ends c's step and looks at c again if something happened meanwhile,
// or if its step left more to do (a start, a clean-up, or the end of a
// candidacy no longer wanted).
func (e *Engine) done(c *cand) {
	c.busy = false
	after := c.after
	c.after = time.Time{}
	switch {
	case c.again || c.phase == CleaningUp || c.phase == Starting || (c.phase == Campaigning && !c.want):
		c.again = false
		e.queue(c)
	case !after.IsZero():
		e.queueAt(c, after)
	}
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
