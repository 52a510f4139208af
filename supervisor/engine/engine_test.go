package engine

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/immortald/immortald/registry"
)

// A life this member is preferred for: check, lead, first write, running,
// and its age ticks with the clock from the first write on.
func TestCampaignWinStartRun(t *testing.T) {
	r := newRig(t, "m1")
	adam := r.put("Adam", "")
	r.leads(r.mustTake(taskCheck), adam, nil)
	if p := r.phase("Adam"); p != Starting {
		t.Fatalf("phase %s after leading, want starting", p)
	}
	r.clock.advance(300 * time.Millisecond) // the start is sent later: the age counts from it
	b := r.mustTake(taskStart)
	r.answer(b, sub(true))
	r.checkInvariants("start")
	if p := r.phase("Adam"); p != Running {
		t.Fatalf("phase %s after the first write, want running", p)
	}
	r.clock.advance(1500 * time.Millisecond)
	if age := r.e.Held(r.clock.now())["Adam"]; age != 1500 {
		t.Fatalf("age %d ms, want 1500", age)
	}
	if len(r.fx.started) != 0 {
		t.Fatal("a life of the age kind was given a Run")
	}
}

// A first write that timed out but was applied: the retry finds the record
// of the first, and the life runs on from it, not from the retry's later
// clock (which would set the age shown back).
func TestStartThatTimedOutButWasApplied(t *testing.T) {
	r := newRig(t, "m1")
	adam := r.put("Adam", "")
	r.leads(r.mustTake(taskCheck), adam, nil)
	b := r.mustTake(taskStart)
	first := b.live[0].rec
	r.rev++
	applied := r.rev
	r.e.Answer(b, nil, context.DeadlineExceeded) // its answer is lost
	r.checkInvariants("lost answer")
	if p := r.phase("Adam"); p != Starting {
		t.Fatalf("phase %s after a lost answer, want starting", p)
	}
	if r.take() != nil {
		t.Fatal("the retry is sent without a backoff")
	}
	r.clock.advance(time.Second)
	b = r.mustTake(taskStart)
	if b.live[0].rec.ClockMS <= first.ClockMS {
		t.Fatal("the retry does not carry a later clock")
	}
	own := kv(r.own("Adam"), b.live[0].h.ownRev, b.live[0].h.ownRev, nil)
	req := kv(testKeys.Life("Adam"), adam.ID, adam.ID, nil)
	age := kv(testKeys.Age("Adam"), applied, applied, first.Marshal())
	r.answer(b, sub(false, own, req, age))
	r.checkInvariants("retry")
	if p := r.phase("Adam"); p != Running {
		t.Fatalf("phase %s, want running from the applied start", p)
	}
	if got := r.e.Held(r.clock.now())["Adam"]; got != 1000 {
		t.Fatalf("age %d ms, want 1000: the time since the applied start", got)
	}
	if h := r.e.held["Adam"]; h.lastRev != applied {
		t.Fatalf("last write at %d, want the applied start's %d", h.lastRev, applied)
	}
}

// runsOnM1PreferredM2 returns a life that m1 runs while it is the only
// member, and that m2 is preferred for once it joins; m2 has joined and
// the view has settled when it returns.
func runsOnM1PreferredM2(t *testing.T, kind string) (*rig, registry.Life, *Life) {
	t.Helper()
	r := newRig(t, "m1")
	name := ""
	for i := 0; name == ""; i++ {
		if n := fmt.Sprintf("life-%d", i); Candidates(n, []string{"m1", "m2"}, 2)[0] == "m2" {
			name = n
		}
	}
	l := r.put(name, kind)
	h := r.run(l)
	r.members("m1", "m2")
	r.clock.advance(minHold + viewSettle)
	return r, l, h
}

// probe answers a probe of l with the keys of the election: m1's own and
// m2's candidacy behind it.
func (r *rig) probe(l registry.Life, h *Life) {
	r.t.Helper()
	b := r.mustTake(taskProbe)
	m2 := testKeys.Candidacy(l.Name, leaseOf("m2"))
	r.answer(b, subRanges(true, []*kvT{kv(h.ownKey, h.ownRev, h.ownRev, nil), kv(m2, h.ownRev+5, h.ownRev+5, nil)}))
}

// A handoff stops the life when its Txn is prepared, before it is sent:
// from then on no heartbeat carries it, and the Txn is an ordered one
// (the driver sends no heartbeat while it is in flight). Its record is the
// age at that moment.
func TestHandoffStopsTheLifeBeforeItsFinalRecord(t *testing.T) {
	r, l, h := runsOnM1PreferredM2(t, "")
	r.probe(l, h)
	r.checkInvariants("probe")
	r.e.NextDue()
	_, b := r.e.Take()
	if b == nil || !b.Ordered || b.tasks[0].kind != taskHandoff {
		t.Fatalf("no ordered handoff batch: %+v", b)
	}
	r.e.Prepare(b)
	r.checkInvariants("handoff prepared")
	if _, runs := r.e.Held(r.clock.now())[l.Name]; runs {
		t.Fatal("the life still runs while its final record is in flight")
	}
	if p := r.phase(l.Name); p != HandingOff {
		t.Fatalf("phase %s, want handing_off", p)
	}
	if rec := b.live[0].rec; rec.Running() || rec.AgeMS != h.AgeAt(r.clock.now()) {
		t.Fatalf("final record %+v, want the age now, not running", rec)
	}
	r.answer(b, sub(true))
	r.checkInvariants("handed off")
	if p := r.phase(l.Name); p != Campaigning {
		t.Fatalf("phase %s after the handoff, want campaigning", p)
	}
	if n := counter(r.e.m.Handoffs); n != 1 {
		t.Fatalf("%v handoffs counted, want 1", n)
	}
}

// A deleted life stops at once; its clean-up (records and candidacy) is
// an ordered write.
func TestDeleteStopsAtOnceAndCleansUpInOrder(t *testing.T) {
	r := newRig(t, "m1")
	adam := r.put("Adam", "")
	h := r.run(adam)
	r.e.Delete("Adam")
	r.checkInvariants("delete")
	if !h.stopped || r.e.HeldCount() != 0 {
		t.Fatal("the life runs after its request was deleted")
	}
	r.e.NextDue()
	p, o := r.e.Take()
	if p != nil || o == nil || o.tasks[0].kind != taskClean || !o.tasks[0].owe.dropAge {
		t.Fatalf("want one ordered clean-up that drops the records, got %+v / %+v", p, o)
	}
	r.e.Prepare(o)
	r.answer(o, sub(true))
	r.checkInvariants("cleaned")
	r.e.NextDue()
	if p, o := r.e.Take(); p != nil || o != nil {
		t.Fatal("steps left after the clean-up of a deleted life")
	}
	if _, ok := r.e.cands["Adam"]; ok {
		t.Fatal("the candidacy of a deleted life is kept")
	}
}

// The answer to a batch of a session that has ended changes nothing: a
// candidate whose session expired does not start the life from it (its
// key was on the old lease). A start answered after every life was taken
// away (the session is ending) does not run.
func TestAnswerAfterTheSessionEndedIsVoid(t *testing.T) {
	r := newRig(t, "m1")
	adam := r.put("Adam", "")
	old := r.mustTake(taskCheck)
	r.e.ExpireAllWork()
	r.e.TakeAllHeld()
	r.e.EndSession()
	r.lease = 0x11
	r.e.OpenSession(r.lease)
	r.leads(old, adam, nil)
	r.checkInvariants("old answer")
	if p := r.phase("Adam"); p != Campaigning {
		t.Fatalf("phase %s in the new session after an answer of the old one, want campaigning", p)
	}

	// A batch taken before the session ended and prepared after it sends
	// nothing, and gives its cands back to no queue: they are gone.
	r.e.NextDue()
	stale, _ := r.e.Take()
	if stale == nil {
		t.Fatal("no check in the new session")
	}
	r.e.ElectionWatchBroke() // asks for a look while the check is busy
	r.e.ExpireAllWork()
	r.e.TakeAllHeld()
	r.e.EndSession()
	r.lease = 0x12
	r.e.OpenSession(r.lease)
	if r.e.Prepare(stale) != nil {
		t.Fatal("a batch of an ended session is sent")
	}
	if b := r.mustTake(taskCheck); len(b.live) != 1 {
		t.Fatal("the new session's check is not the only step")
	}
	r.checkInvariants("stale batch")
	r.e.NextDue()
	if p, o := r.e.Take(); p != nil || o != nil {
		t.Fatal("a cand of an ended session came back into the queue")
	}
	r.e.ExpireAllWork()
	r.e.TakeAllHeld()
	r.e.EndSession()
	r.lease = 0x13
	r.e.OpenSession(r.lease)

	// In the new session: it leads, and its start is in flight when the
	// session is given up.
	r.leads(r.mustTake(taskCheck), adam, nil)
	b := r.mustTake(taskStart)
	r.e.ExpireAllWork()
	r.e.TakeAllHeld()
	r.answer(b, sub(true))
	r.checkInvariants("start after the session was given up")
	if r.e.HeldCount() != 0 {
		t.Fatal("a life runs after the session was given up")
	}
}

// A handoff whose successor's candidacy vanished (it withdrew) does not
// happen: the life runs again at once and the holder probes again after
// probeAgain, not at once.
func TestHandoffWhoseTargetVanished(t *testing.T) {
	r, l, h := runsOnM1PreferredM2(t, "")
	r.probe(l, h)
	r.e.NextDue()
	_, b := r.e.Take()
	r.e.Prepare(b)
	own := kv(h.ownKey, h.ownRev, h.ownRev, nil)
	req := kv(testKeys.Life(l.Name), l.ID, l.ID, nil)
	age := kv(testKeys.Age(l.Name), h.lastRev, h.lastRev, nil)
	r.answer(b, sub(false, own, req, age, nil))
	r.checkInvariants("handoff failed")
	if p := r.phase(l.Name); p != Running || r.e.held[l.Name] != h {
		t.Fatalf("phase %s: want the life running again", p)
	}
	if r.take() != nil {
		t.Fatal("probes again at once")
	}
	if next := r.e.NextDue(); !next.Equal(r.clock.now().Add(probeAgain)) {
		t.Fatalf("next look at %v, want probeAgain after now (%v)", next, r.clock.now())
	}
}

// A life with work is handed off only once its Run returned: the Run is
// asked to stop first, and the handoff waits for it.
func TestHandoffWaitsForTheRun(t *testing.T) {
	r, l, h := runsOnM1PreferredM2(t, "work")
	if len(r.fx.started) != 1 || r.fx.started[0] != h {
		t.Fatalf("Runs started: %v, want the life's", r.fx.started)
	}
	r.probe(l, h)
	if b := r.take(); b != nil {
		t.Fatalf("a %v is sent while the Run runs", b.tasks[0].kind)
	}
	if len(r.fx.stops) != 1 {
		t.Fatal("the Run was not asked to stop")
	}
	if _, runs := r.e.Held(r.clock.now())[l.Name]; !runs {
		t.Fatal("the life stopped before its Run returned")
	}
	if !r.fx.returned(r.e, h) {
		t.Fatal("the Run is said to have returned on its own")
	}
	r.e.NextDue()
	_, b := r.e.Take()
	if b == nil || b.tasks[0].kind != taskHandoff {
		t.Fatal("no handoff once the Run returned")
	}
}

// The deletion of a running life's own election key (someone deleted it,
// or its lease expired) loses the life at once and its Run is killed; the
// member campaigns again.
func TestDeletedOwnKeyLosesTheLife(t *testing.T) {
	r := newRig(t, "m1")
	l := r.put("Adam", "work")
	h := r.run(l)
	if lead := r.e.ElectionKeysDeleted([]string{h.ownKey}); len(lead) != 0 {
		t.Fatalf("leads %v after losing its own key", lead)
	}
	r.checkInvariants("own key deleted")
	if p := r.phase("Adam"); p != Campaigning {
		t.Fatalf("phase %s, want campaigning", p)
	}
	if len(r.fx.expired) != 1 || r.fx.expired[0] != h {
		t.Fatal("the Run was not told to stop at once")
	}
	// No new hold before the Run of the lost one returned.
	if b := r.take(); b != nil {
		t.Fatalf("a %v is sent before the lost hold's Run returned", b.tasks[0].kind)
	}
	r.fx.returned(r.e, h)
	if b := r.take(); b == nil || b.tasks[0].kind != taskCheck {
		t.Fatal("no check once the lost hold's Run returned")
	}
}

// A waiting candidate whose every key in front was seen deleted leads: it
// starts without another check, guarded by those keys being gone.
func TestDirectStartOnceTheKeysInFrontWent(t *testing.T) {
	r := newRig(t, "m1", "m2")
	adam := r.put("Adam", "")
	r.clock.advance(deferToPreferred)
	b := r.mustTake(taskCheck)
	mine := r.rev + 1
	other := kv(testKeys.Candidacy("Adam", leaseOf("m2")), mine-10, mine-10, nil)
	r.answer(b, subRanges(true, nil, []*kvT{other, kv(r.own("Adam"), mine, mine, nil)}, []*kvT{kv(testKeys.Life("Adam"), adam.ID, adam.ID, nil)}, nil))
	r.checkInvariants("waiting")
	if p := r.phase("Adam"); p != Campaigning || r.take() != nil {
		t.Fatalf("phase %s, or a step ready: want waiting", p)
	}
	lead := r.e.ElectionKeysDeleted([]string{string(other.Key)})
	if len(lead) != 1 || lead[0] != "Adam" {
		t.Fatalf("leads %v, want Adam", lead)
	}
	r.e.Lead(lead, nil)
	b = r.mustTake(taskStart)
	if !b.live[0].direct || len(b.live[0].ahead) != 1 {
		t.Fatal("the start is not a direct one guarded by the key that went")
	}
	r.answer(b, sub(true))
	r.checkInvariants("direct start")
	if n := counter(r.e.m.DirectStarts); n != 1 || r.phase("Adam") != Running {
		t.Fatalf("%v direct starts, phase %s", n, r.phase("Adam"))
	}
}

// A write of the holder applied although its answer was lost is the
// holder's own: it is adopted, not quarantined; a foreign one is repaired
// with its bytes kept in quarantine.
func TestRepairAdoptsOwnWriteAndQuarantinesForeign(t *testing.T) {
	r := newRig(t, "m1")
	h := r.run(r.put("Adam", ""))
	mine := h.runningRecord()
	if rp := r.e.PlanRepair(h, kv(testKeys.Age("Adam"), 1, h.lastRev+5, mine.Marshal()), h.lastRev+5); rp != nil {
		t.Fatal("the holder repairs its own write")
	}
	if want := r.rev + 5; h.lastRev != want {
		t.Fatalf("last write at %d, want %d adopted", h.lastRev, want)
	}
	foreign := kv(testKeys.Age("Adam"), 1, h.lastRev+1, []byte("garbage"))
	rp := r.e.PlanRepair(h, foreign, h.lastRev+1)
	if rp == nil || len(rp.Then) != 2 {
		t.Fatalf("repair %+v: want the record and the quarantine written", rp)
	}
	r.e.Repaired(rp, h.lastRev+2, true)
	if n := counter(r.e.m.Quarantined); n != 1 {
		t.Fatalf("%v quarantined, want 1", n)
	}
	if r.e.PlanRepair(h, foreign, foreign.ModRevision) != nil {
		t.Fatal("a change older than the repair is repaired again")
	}

	// Foreign bytes waiting for the next write (a failed handoff found
	// them) go to quarantine with a repair of the record deleted since.
	h.keep = []byte("waiting")
	rp = r.e.PlanRepair(h, nil, h.lastRev+3)
	if rp == nil || len(rp.Then) != 2 {
		t.Fatalf("repair %+v: want the bytes waiting kept in quarantine", rp)
	}
}

// A look asked for later while the cand is busy (a probe's answer asking to
// probe again) happens at that time once the step ends, not at once; a
// look asked for now while busy wins over it.
func TestBusyCandKeepsItsDeferredLook(t *testing.T) {
	r := newRig(t, "m1")
	e := r.e
	c := e.candOf("Adam")
	c.want, c.busy = true, true
	at := r.clock.now().Add(time.Hour)
	e.queueAt(c, at)
	e.done(c)
	if len(e.q.ready) != 0 || len(e.q.first) != 0 {
		t.Fatal("the cand was queued at once")
	}
	if len(e.q.deferred) != 1 || !c.due.Equal(at) {
		t.Fatalf("deferred %d cands, due %v: want it deferred to %v", len(e.q.deferred), c.due, at)
	}
	if next := e.NextDue(); !next.Equal(at) {
		t.Fatalf("next due %v, want %v", next, at)
	}

	// Busy again: an earlier time wins over a later one, and now over both.
	e.q = queues{}
	c.queued, c.index = false, -1
	c.busy = true
	e.queueAt(c, at)
	e.queueAt(c, at.Add(-time.Minute))
	e.queueAt(c, at.Add(time.Minute))
	if want := at.Add(-time.Minute); !c.after.Equal(want) {
		t.Fatalf("after %v, want the earliest asked, %v", c.after, want)
	}
	e.queue(c)
	e.done(c)
	if len(e.q.ready) != 1 || len(e.q.deferred) != 0 {
		t.Fatalf("ready %d, deferred %d: want it ready at once", len(e.q.ready), len(e.q.deferred))
	}
	if !c.after.IsZero() || c.again {
		t.Fatal("the step's requests were not cleared")
	}
}

// The driver gives a lost session up in two calls, each under its mutex:
// every Run is told to stop at once (ExpireAllWork), then the lives are
// taken (TakeAllHeld). A start answered between the two runs its life and
// starts its Run; taking the lives tells that Run to stop at once too, or
// it would run on after the session, and no later hold of the name would
// ever start in this member (none starts while a Run of the name has not
// returned).
func TestStartAnsweredWhileTheSessionIsGivenUp(t *testing.T) {
	r := newRig(t, "m1")
	l := r.put("job", "work")
	r.leads(r.mustTake(taskCheck), l, nil)
	b := r.mustTake(taskStart)
	r.e.ExpireAllWork() // the session is lost: expireRuns
	r.answer(b, sub(true))
	h := r.e.held[l.Name]
	if h == nil || len(r.fx.started) != 1 {
		t.Fatal("the start answered before the lives were taken did not run")
	}
	r.e.TakeAllHeld() // dropAllHeld
	r.checkInvariants("lives taken")
	if !slices.Contains(r.fx.expired, h) {
		t.Fatal("the Run started between ExpireAllWork and TakeAllHeld was not told to stop at once")
	}
	r.e.EndSession()
	r.lease++
	r.e.OpenSession(r.lease)
	r.fx.returned(r.e, h)
	if h2 := r.run(l); len(r.fx.started) != 2 || r.fx.started[1] != h2 {
		t.Fatal("the next hold in the new session did not start its Run")
	}
}
