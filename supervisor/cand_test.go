package supervisor

import (
	"testing"
	"time"
)

// queueSup is a supervisor with no generation and no etcd, to drive the
// queues alone.
func queueSup(t *testing.T) *Supervisor {
	t.Helper()
	return &Supervisor{cfg: Config{ID: "m1", Keys: testKeys}, cands: make(map[string]*cand)}
}

// A look asked for later while the cand is busy (a probe's answer asking to
// probe again) happens at that time once the operation ends, not at once;
// a look asked for now while busy wins over it.
func TestBusyCandKeepsItsDeferredLook(t *testing.T) {
	s := queueSup(t)
	c := s.candLocked("Adam")
	c.busy = true
	at := time.Now().Add(time.Hour)
	s.queueAtLocked(c, at)
	s.doneLocked(c)
	if len(s.q.ready) != 0 || len(s.q.first) != 0 {
		t.Fatal("the cand was queued at once")
	}
	if len(s.q.deferred) != 1 || !c.due.Equal(at) {
		t.Fatalf("deferred %d cands, due %v: want it deferred to %v", len(s.q.deferred), c.due, at)
	}
	if next := s.promoteLocked(time.Now()); !next.Equal(at) {
		t.Fatalf("next due %v, want %v", next, at)
	}

	// Busy again: an earlier time wins over a later one, and now over both.
	s.clearQueuesLocked()
	c.queued, c.index = false, -1
	c.busy = true
	s.queueAtLocked(c, at)
	s.queueAtLocked(c, at.Add(-time.Minute))
	s.queueAtLocked(c, at.Add(time.Minute))
	if want := at.Add(-time.Minute); !c.after.Equal(want) {
		t.Fatalf("after %v, want the earliest asked, %v", c.after, want)
	}
	s.queueLocked(c)
	s.doneLocked(c)
	if len(s.q.ready) != 1 || len(s.q.deferred) != 0 {
		t.Fatalf("ready %d, deferred %d: want it ready at once", len(s.q.ready), len(s.q.deferred))
	}
	if !c.after.IsZero() || c.again {
		t.Fatal("the operation's requests were not cleared")
	}
}
