package engine

import (
	"errors"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/immortald/immortald/registry"
)

// The engine under random sequences of events: requests put and deleted,
// member views, time, watch deletions, Runs returning, sessions lost,
// repairs, and batches answered in any order with any answer etcd could
// give (or none), some of them long after they were sent. After every step
// the rules hold (rig.checkInvariants): every phase holds what it says,
// what runs is what a heartbeat may carry and nothing stopped is among it,
// no two Runs of one life run at once, and a lost session leaves nothing
// running.
func TestRandomEventsKeepTheRules(t *testing.T) {
	seeds, steps := 300, 400
	if testing.Short() {
		seeds = 50
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			randomRun(t, rand.New(rand.NewSource(int64(seed))), steps)
		})
	}
}

var randomNames = []string{"Adam", "Eve", "Cain", "Abel", "Seth"}

func randomRun(t *testing.T, rnd *rand.Rand, steps int) {
	r := newRig(t, "m1", "m2")
	var pending []*Batch // prepared, not answered yet
	var log []string     // the steps so far, for the failure message
	ending := false      // the session is being given up: its Runs were told to stop
	defer func() {
		if t.Failed() {
			t.Logf("steps:\n%v", log)
		}
	}()
	for i := range steps {
		step := ""
		switch n := rnd.Intn(100); {
		case n < 12:
			name := randomNames[rnd.Intn(len(randomNames))]
			kind := []string{"", "", "work", "other", "BAD KIND"}[rnd.Intn(5)]
			if rnd.Intn(3) == 0 && r.e.wanted[name].ID != 0 {
				// The same life, its options changed.
				l := r.e.wanted[name]
				r.rev++
				r.e.Put(registry.ParseLife(name, l.ID, r.rev, kindValue(kind)))
			} else {
				r.rev++
				r.e.Put(registry.ParseLife(name, r.rev, r.rev, kindValue(kind)))
			}
			step = fmt.Sprintf("put %s kind %q", name, kind)
		case n < 17:
			name := randomNames[rnd.Intn(len(randomNames))]
			r.e.Delete(name)
			step = "delete " + name
		case n < 22:
			ms := []string{"m1"}
			for _, id := range []string{"m2", "m3"} {
				if rnd.Intn(2) == 0 {
					ms = append(ms, id)
				}
			}
			r.members(ms...)
			step = fmt.Sprint("members ", ms)
		case n < 32:
			d := time.Duration(rnd.Intn(1500)) * time.Millisecond
			r.clock.advance(d)
			step = fmt.Sprint("advance ", d)
		case n < 55:
			r.e.NextDue()
			p, o := r.e.Take()
			for _, b := range []*Batch{p, o} {
				if b != nil && r.e.Prepare(b) != nil {
					pending = append(pending, b)
				}
			}
			step = fmt.Sprintf("take: %d batches in flight", len(pending))
		case n < 75:
			if len(pending) == 0 {
				continue
			}
			k := rnd.Intn(len(pending))
			b := pending[k]
			pending = append(pending[:k], pending[k+1:]...)
			step = r.randomAnswer(rnd, b)
		case n < 82:
			keys := r.randomElectionKeys(rnd)
			lead := r.e.ElectionKeysDeleted(keys)
			r.e.Lead(lead, nil)
			step = fmt.Sprintf("election keys deleted %v: leads %v", keys, lead)
		case n < 86:
			for name, l := range r.fx.active {
				r.fx.returned(r.e, l)
				step = "Run returned: " + name
				break
			}
		case n < 88:
			// The driver gives up a Run told to stop (past the stop grace it
			// is told to stop at once) that has not returned; it stays
			// active (it may run on).
			for name, l := range r.fx.active {
				if l.run.expired || l.run.stopAsked {
					r.e.RunAbandoned(l)
					step = "Run given up: " + name
					break
				}
			}
		case n < 90:
			// The driver gives a lost session up in two calls, each under
			// its mutex: any event may come between them.
			if !ending {
				r.e.ExpireAllWork()
				ending = true
				step = "session lost: every Run told to stop at once"
				break
			}
			ending = false
			r.e.TakeAllHeld()
			r.checkInvariants("session lost")
			for name, l := range r.e.runs {
				if !l.run.expired {
					t.Fatalf("the Run of %s was not told to stop at once when the session was lost", name)
				}
			}
			r.e.EndSession()
			r.lease++
			r.e.OpenSession(r.lease)
			step = "session lost: lives taken; new session"
		case n < 93:
			r.e.Sweep()
			step = "sweep"
		case n < 95:
			r.e.ElectionWatchBroke()
			step = "election watch broke"
		case n < 97:
			for _, l := range r.e.HeldLives() {
				if l.hasWork {
					r.e.WorkLost(l) // a state write found its election key gone
					step = "state write fenced: " + l.name
					break
				}
			}
		default:
			for _, l := range r.e.HeldLives() {
				found := kv(testKeys.Age(l.name), 1, r.rev+1, []byte("foreign"))
				r.rev++
				if rp := r.e.PlanRepair(l, found, r.rev); rp != nil {
					r.rev++
					r.e.Repaired(rp, r.rev, rnd.Intn(2) == 0)
				}
				step = "repair " + l.name
				break
			}
		}
		log = append(log, fmt.Sprintf("%d: %s", i, step))
		r.checkInvariants(step)
	}
}

func kindValue(kind string) []byte {
	if kind == "" {
		return nil
	}
	return []byte(`{"kind":"` + kind + `"}`)
}

// randomElectionKeys returns deletions the election watch could see: own
// keys of this member, and keys of the other members.
func (r *rig) randomElectionKeys(rnd *rand.Rand) []string {
	var keys []string
	for range 1 + rnd.Intn(3) {
		name := randomNames[rnd.Intn(len(randomNames))]
		switch rnd.Intn(3) {
		case 0:
			keys = append(keys, r.own(name))
		default:
			keys = append(keys, testKeys.Candidacy(name, leaseOf([]string{"m2", "m3"}[rnd.Intn(2)])))
		}
	}
	return keys
}

// randomAnswer answers b as etcd could: not at all (an error, the outcome
// unknown), or each step applied or not, with the reads a failure gives.
func (r *rig) randomAnswer(rnd *rand.Rand, b *Batch) string {
	if rnd.Intn(6) == 0 {
		r.e.Answer(b, nil, errors.New("etcdserver: request timed out"))
		return fmt.Sprintf("batch of %d: no answer", len(b.live))
	}
	subs := make([]*etcdserverpb.TxnResponse, len(b.live))
	what := ""
	for i, t := range b.live {
		subs[i] = r.randomSub(rnd, t)
		what += fmt.Sprintf(" %s:%v(%v)", t.c.name, t.kind, subs[i].Succeeded)
	}
	r.answer(b, subs...)
	return "answered" + what
}

func (r *rig) randomSub(rnd *rand.Rand, t *task) *etcdserverpb.TxnResponse {
	name := t.c.name
	reqID := t.c.life.ID
	if rnd.Intn(5) == 0 {
		reqID = r.rev + 1000 // replaced
	}
	req := kv(testKeys.Life(name), reqID, reqID, nil)
	if rnd.Intn(8) == 0 {
		req = nil // deleted
	}
	other := kv(testKeys.Candidacy(name, leaseOf("m2")), 5, 5, nil)
	switch t.kind {
	case taskCheck:
		mine := t.rev
		created := t.rev == 0 && rnd.Intn(4) != 0
		if created {
			mine = r.rev + 1
		}
		own := kv(r.own(name), mine, mine, nil)
		if mine == 0 || rnd.Intn(6) == 0 {
			own = nil
		}
		leader := []*kvT{own}
		if rnd.Intn(2) == 0 || own == nil {
			leader = []*kvT{other, own}
		}
		var age *kvT
		switch rnd.Intn(4) {
		case 1:
			age = kv(testKeys.Age(name), 3, 7, []byte("garbage"))
		case 2:
			rec := registry.AgeRecord{LifeID: t.life.ID, AgeMS: 5000, Incarnation: 2, Holder: "m2", HolderRev: 5, Lease: leaseOf("m2"), ClockMS: 100}
			age = kv(testKeys.Age(name), 3, 8, rec.Marshal())
		}
		return subRanges(created, []*kvT{own}, leader, []*kvT{req}, []*kvT{age})
	case taskStart, taskHandoff:
		if rnd.Intn(2) == 0 {
			return sub(true)
		}
		h := t.h
		own := kv(h.ownKey, h.ownRev, h.ownRev, nil)
		if rnd.Intn(4) == 0 {
			own = nil
		}
		var age *kvT
		switch rnd.Intn(4) {
		case 1:
			age = kv(testKeys.Age(name), 3, h.lastRev, nil)
		case 2:
			age = kv(testKeys.Age(name), 3, r.rev+1, t.rec.Marshal()) // its own, applied
		case 3:
			age = kv(testKeys.Age(name), 3, r.rev+1, []byte("foreign"))
		}
		if t.kind == taskStart {
			return sub(false, own, req, age, nil, nil)
		}
		var target *kvT
		if rnd.Intn(2) == 0 {
			target = kv(t.toK, t.plan.toRev+int64(rnd.Intn(2)), 9, nil)
		}
		return sub(false, own, req, age, target)
	case taskProbe:
		keys := []*kvT{kv(t.h.ownKey, t.h.ownRev, t.h.ownRev, nil)}
		if rnd.Intn(2) == 0 {
			keys = append(keys, kv(t.toK, t.h.ownRev+3, t.h.ownRev+3, nil))
		}
		return subRanges(true, keys)
	default:
		return sub(rnd.Intn(3) != 0)
	}
}
