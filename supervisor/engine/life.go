package engine

import (
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// Life is one hold of a life by this member, from the election won to its
// stop. Its age is base plus the time since started: it ticks in memory.
// Its age record is written when it starts (running on the member's lease
// from the member's clock at started) and when it stops; in between, the
// member's heartbeat carries it forward. Its fields are the engine's; the
// driver reads them through the methods, under the engine's guard, except
// for those fixed when the hold begins (Name, LifeID, FencingToken,
// Incarnation, Fence), which it may read at any time.
type Life struct {
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

	lastRev int64  // revision of the last applied write (before the first: of the record read)
	lastAge int64  // age of the last write
	keep    []byte // bytes to quarantine with the next write; nil: none
	stopped bool   // taken out of the running lives

	// Work: for a life of a kind with a Runner.
	kind     string
	hasWork  bool
	stateKV  *mvccpb.KeyValue // states/<name> as the first write read it
	stateRev int64            // ModRevision of states/<name> as last read or written
	run      runState

	// Work is the driver's: its handle on the life's Run and state. The
	// engine never looks at it.
	Work any
}

// Name is the life's name.
func (l *Life) Name() string { return l.name }

// LifeID is the life's id: its request key's create revision.
func (l *Life) LifeID() int64 { return l.lifeID }

// FencingToken is the create revision of the holder's election key:
// strictly greater for every new holder of the life.
func (l *Life) FencingToken() int64 { return l.ownRev }

// Incarnation counts the holds of the life, from 1.
func (l *Life) Incarnation() int64 { return l.incarnate }

// Kind is the name of the life's kind.
func (l *Life) Kind() string { return l.kind }

// Key is the holder's election key.
func (l *Life) Key() string { return l.ownKey }

// AgeAt is the life's age in milliseconds at t.
func (l *Life) AgeAt(t time.Time) int64 { return l.base + t.Sub(l.started).Milliseconds() }

// Stopped reports whether the life no longer runs.
func (l *Life) Stopped() bool { return l.stopped }

// StateRead returns states/<name> as the first write read it (nil: none),
// once: the driver restores the Run's state from it.
func (l *Life) StateRead() *mvccpb.KeyValue {
	kv := l.stateKV
	l.stateKV = nil
	return kv
}

// resumeAge is the age the life resumes at: the record it was won with,
// carried forward to its old holder's last heartbeat.
func (l *Life) resumeAge() int64 {
	if l.prev == nil {
		return 0
	}
	return l.prev.At(l.beat).AgeMS
}

// runningRecord is the record written when the life starts: its age at
// started, running on l.lease from clockMS.
func (l *Life) runningRecord() registry.AgeRecord {
	return registry.AgeRecord{
		LifeID:      l.lifeID,
		AgeMS:       l.base,
		Incarnation: l.incarnate,
		Holder:      l.holder,
		HolderRev:   l.ownRev,
		Time:        l.started.UTC().Round(0),
		Lease:       l.lease,
		ClockMS:     l.clockMS,
	}
}

// FinalRecord is the record of the life stopped at t: its age then, which
// no heartbeat changes any more. It never holds a smaller age than the last
// write, whatever the clock did.
func (l *Life) FinalRecord(t time.Time) registry.AgeRecord {
	rec := l.runningRecord()
	rec.AgeMS = max(l.AgeAt(t), l.lastAge)
	rec.Time = t.UTC().Round(0)
	rec.Lease, rec.ClockMS = 0, 0
	return rec
}

// wrote records an applied write at revision rev.
func (l *Life) wrote(rev, age int64) {
	l.lastRev = rev
	l.lastAge = age
	l.keep = nil
}

// fenceHolds reports whether own and req, read from etcd, show that the
// guard of l still holds.
func (l *Life) fenceHolds(own, req *mvccpb.KeyValue) bool {
	return own != nil && own.CreateRevision == l.ownRev && req != nil && req.CreateRevision == l.lifeID
}

// isOwn reports whether kv is an age record this holder wrote: same life,
// same holder, same election key.
func (l *Life) isOwn(kv *mvccpb.KeyValue) bool {
	if kv == nil {
		return false
	}
	rec, err := registry.ParseAgeRecord(kv.Value)
	return err == nil && rec.LifeID == l.lifeID && rec.Holder == l.holder && rec.HolderRev == l.ownRev
}

// ageWrite is the fenced write of rec over the record l last wrote (or
// read): the fence, the record's revision, the put (and the quarantine of
// foreign bytes found in its place), and on failure the reads that say why
// (own election key, request, age record, in that order).
func (l *Life) ageWrite(k registry.Keys, rec registry.AgeRecord) (cmps []clientv3.Cmp, then, orElse []clientv3.Op) {
	age := k.Age(l.name)
	cmps = append(l.Fence(k), clientv3.Compare(clientv3.ModRevision(age), "=", l.lastRev))
	then = []clientv3.Op{clientv3.OpPut(age, string(rec.Marshal()))}
	if l.keep != nil {
		then = append(then, clientv3.OpPut(k.Quarantine(l.name), string(l.keep)))
	}
	orElse = []clientv3.Op{clientv3.OpGet(l.ownKey), clientv3.OpGet(k.Life(l.name)), clientv3.OpGet(age)}
	return cmps, then, orElse
}

// adopt takes kv, a record isOwn says l wrote although the answer was lost
// (a timeout), as l's last write.
func (l *Life) adopt(kv *mvccpb.KeyValue) {
	rec, _ := registry.ParseAgeRecord(kv.Value)
	l.wrote(kv.ModRevision, max(l.lastAge, rec.AgeMS))
}

// Fence is the guard of every write of the holder: it still holds the
// election key it won, and the request key is still this life.
func (l *Life) Fence(k registry.Keys) []clientv3.Cmp {
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(l.ownKey), "=", l.ownRev),
		clientv3.Compare(clientv3.CreateRevision(k.Life(l.name)), "=", l.lifeID),
	}
}

// addHeld starts running l, unless no life may run (the session is lost
// or ending): then it reports false.
func (e *Engine) addHeld(l *Life) bool {
	if !e.restoreHeld(l) {
		return false
	}
	e.m.Started.Inc()
	return true
}

// restoreHeld runs l (again), unless no life may run.
func (e *Engine) restoreHeld(l *Life) bool {
	if e.heldClosed {
		return false
	}
	e.held[l.name] = l
	l.stopped = false
	e.setHeldGauge()
	return true
}

// removeHeld stops l; false when it was stopped already.
func (e *Engine) removeHeld(l *Life) bool {
	ok := e.held[l.name] == l
	if ok {
		delete(e.held, l.name)
		l.stopped = true
	}
	e.setHeldGauge()
	return ok
}

func (e *Engine) setHeldGauge() { e.m.Held.Set(float64(len(e.held))) }
