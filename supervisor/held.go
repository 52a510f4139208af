package supervisor

import (
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// heldLife is a life this member runs. Its age is base plus the time since
// started: it ticks in memory. Its age record is written when it starts
// (running on the member's lease from the member's clock at started) and
// when it stops; in between, the member's heartbeat carries it forward.
type heldLife struct {
	name      string
	lifeID    int64
	ownKey    string
	ownRev    int64
	holder    string
	lease     int64 // the session lease it runs on
	incarnate int64
	base      int64     // age in ms when started
	started   time.Time // monotonic
	clockMS   int64     // the member's heartbeat clock at started

	// prev is the record it resumes from, as read when the election was
	// won; beat is the heartbeat of prev's holder read with it, and
	// beatRev that heartbeat's revision (0: none), which the first write
	// requires unchanged.
	prev    *registry.AgeRecord
	beat    *registry.Heartbeat
	beatRev int64

	lastRev atomic.Int64 // revision of the last applied write (before the first: of the record read)
	lastAge int64        // age of the last write; guarded by Supervisor.writeMu
	keep    []byte       // bytes to quarantine with the next write; nil: none
	stopped atomic.Bool  // taken out of Supervisor.held

	// work is what runs besides the age, for a life of a kind with a
	// Runner; nil for a life of its age alone (see work.go).
	work *holdWork
}

func (h *heldLife) ageAt(t time.Time) int64 { return h.base + t.Sub(h.started).Milliseconds() }

// resumeAge is the age the life resumes at: the record it was won with,
// carried forward to its old holder's last heartbeat.
func (h *heldLife) resumeAge() int64 {
	if h.prev == nil {
		return 0
	}
	return h.prev.At(h.beat).AgeMS
}

// runningRecord is the record written when the life starts: its age at
// started, running on h.lease from clockMS.
func (h *heldLife) runningRecord() registry.AgeRecord {
	return registry.AgeRecord{
		LifeID:      h.lifeID,
		AgeMS:       h.base,
		Incarnation: h.incarnate,
		Holder:      h.holder,
		HolderRev:   h.ownRev,
		Time:        h.started.UTC().Round(0),
		Lease:       h.lease,
		ClockMS:     h.clockMS,
	}
}

// finalRecord is the record of the life stopped at t: its age then, which
// no heartbeat changes any more. It never holds a smaller age than the last
// write, whatever the clock did.
func (h *heldLife) finalRecord(t time.Time) registry.AgeRecord {
	rec := h.runningRecord()
	rec.AgeMS = max(h.ageAt(t), h.lastAge)
	rec.Time = t.UTC().Round(0)
	rec.Lease, rec.ClockMS = 0, 0
	return rec
}

// wrote records an applied write at revision rev. The caller holds writeMu
// or owns h alone.
func (h *heldLife) wrote(rev, age int64) {
	h.lastRev.Store(rev)
	h.lastAge = age
	h.keep = nil
}

// fenceHolds reports whether own and req, read from etcd, show that the
// guard of h still holds.
func (h *heldLife) fenceHolds(own, req *mvccpb.KeyValue) bool {
	return own != nil && own.CreateRevision == h.ownRev && req != nil && req.CreateRevision == h.lifeID
}

// isOwn reports whether kv is an age record this holder wrote: same life,
// same holder, same election key.
func (h *heldLife) isOwn(kv *mvccpb.KeyValue) bool {
	if kv == nil {
		return false
	}
	rec, err := registry.ParseAgeRecord(kv.Value)
	return err == nil && rec.LifeID == h.lifeID && rec.Holder == h.holder && rec.HolderRev == h.ownRev
}

// ageWrite is the fenced write of rec over the record h last wrote (or
// read): the fence, the record's revision, the put (and the quarantine of
// foreign bytes found in its place), and on failure the reads that say why
// (own election key, request, age record, in that order).
func (h *heldLife) ageWrite(k registry.Keys, rec registry.AgeRecord) (cmps []clientv3.Cmp, then, orElse []clientv3.Op) {
	age := k.Age(h.name)
	cmps = append(h.fence(k), clientv3.Compare(clientv3.ModRevision(age), "=", h.lastRev.Load()))
	then = []clientv3.Op{clientv3.OpPut(age, string(rec.Marshal()))}
	if h.keep != nil {
		then = append(then, clientv3.OpPut(k.Quarantine(h.name), string(h.keep)))
	}
	orElse = []clientv3.Op{clientv3.OpGet(h.ownKey), clientv3.OpGet(k.Life(h.name)), clientv3.OpGet(age)}
	return cmps, then, orElse
}

// adopt takes kv, a record isOwn says h wrote although the answer was lost
// (a timeout), as h's last write.
func (h *heldLife) adopt(kv *mvccpb.KeyValue) {
	rec, _ := registry.ParseAgeRecord(kv.Value)
	h.wrote(kv.ModRevision, max(h.lastAge, rec.AgeMS))
}

// fence is the guard of every write: we still hold the election key we won,
// and the request key is still this life.
func (h *heldLife) fence(k registry.Keys) []clientv3.Cmp {
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(h.ownKey), "=", h.ownRev),
		clientv3.Compare(clientv3.CreateRevision(k.Life(h.name)), "=", h.lifeID),
	}
}

// addHeldLocked starts running h, unless every life was just taken away
// (session lost, shutdown): then it reports false.
func (s *Supervisor) addHeldLocked(h *heldLife) bool {
	if !s.restoreHeldLocked(h) {
		return false
	}
	s.m.Started.Inc()
	return true
}

// restoreHeldLocked runs h (again), unless every life was just taken away.
func (s *Supervisor) restoreHeldLocked(h *heldLife) bool {
	if s.heldClosed {
		return false
	}
	s.held[h.name] = h
	h.stopped.Store(false)
	s.m.Held.Set(float64(len(s.held)))
	return true
}

// removeHeldLocked stops h; false when it was stopped already.
func (s *Supervisor) removeHeldLocked(h *heldLife) bool {
	ok := s.held[h.name] == h
	if ok {
		delete(s.held, h.name)
		h.stopped.Store(true)
	}
	s.m.Held.Set(float64(len(s.held)))
	return ok
}

// takeAllHeld stops every life at once, returns them, and refuses new ones
// until the next generation starts.
func (s *Supervisor) takeAllHeld() []*heldLife {
	s.mu.Lock()
	s.heldClosed = true
	out := make([]*heldLife, 0, len(s.held))
	for _, h := range s.held {
		h.stopped.Store(true)
		out = append(out, h)
	}
	clear(s.held)
	s.mu.Unlock()
	s.m.Held.Set(0)
	return out
}

// dropAllHeld stops every life without writing anything. Their Runs must
// have been told to stop at once (expireRuns).
func (s *Supervisor) dropAllHeld(reason string) int {
	lives := s.takeAllHeld()
	s.m.Lost.WithLabelValues(reason).Add(float64(len(lives)))
	return len(lives)
}

func (s *Supervisor) snapshotHeld() []*heldLife {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*heldLife, 0, len(s.held))
	for _, h := range s.held {
		out = append(out, h)
	}
	return out
}
