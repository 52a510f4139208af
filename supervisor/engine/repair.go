package engine

import (
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// A running life's age record is written only by its holder between its
// start and its stop. A record someone else changed (a put or a delete) is
// found by the driver (the watch of ages/, the sweep) and written again
// through PlanRepair and Repaired; foreign bytes go to quarantine/<name>.

// Repair is the fenced write of a running life's record over one that
// someone else wrote or deleted.
type Repair struct {
	l     *Life
	found *mvccpb.KeyValue
	rec   registry.AgeRecord
	// Cmps and Then are the Txn to send.
	Cmps []clientv3.Cmp
	Then []clientv3.Op
}

// Suspect reports whether a change of l's record at revision rev may be
// someone else's: l runs and rev is past its last write.
func (l *Life) Suspect(rev int64) bool { return !l.stopped && rev > l.lastRev }

// PlanRepair returns the write that repairs l's record, found (nil:
// deleted) at revision rev by someone other than l's holder; nil when
// there is nothing to repair (l stopped, the change is not newer than l's
// last write, or it is l's own write whose answer was lost: adopted).
func (e *Engine) PlanRepair(l *Life, found *mvccpb.KeyValue, rev int64) *Repair {
	if !l.Suspect(rev) {
		return nil
	}
	if found != nil && l.isOwn(found) {
		l.adopt(found)
		return nil
	}
	// The write replaces what was found: as ageWrite, over found's
	// revision, with found's bytes kept.
	// Foreign bytes waiting for the next write (a failed handoff found
	// them) are kept when the record was deleted since.
	w := *l
	w.lastRev = 0
	if found != nil {
		w.lastRev, w.keep = found.ModRevision, found.Value
	}
	r := &Repair{l: l, found: found, rec: l.runningRecord()}
	r.Cmps, r.Then, _ = w.ageWrite(e.cfg.Keys, r.rec)
	return r
}

// Repaired handles the answer to r's Txn: applied is false when it failed
// or its guard did not hold (tried again at the next sweep; a failed
// fence stops the life through the election watch or its next write).
func (e *Engine) Repaired(r *Repair, rev int64, applied bool) {
	if !applied {
		return
	}
	l, k := r.l, e.cfg.Keys
	l.wrote(rev, r.rec.AgeMS)
	if r.found != nil {
		e.m.Quarantined.Inc()
		e.log.Error("age record was overwritten by someone other than its holder; kept those bytes in quarantine and wrote the life's own age",
			"name", l.name, "key", k.Age(l.name), "quarantine", k.Quarantine(l.name), "age", l.AgeAt(e.now())/1000)
	} else {
		e.log.Warn("age record was deleted by someone other than its holder; wrote it again", "name", l.name, "age", l.AgeAt(e.now())/1000)
	}
}

// LastRev is the revision of l's last applied write (before the first:
// of the record read).
func (l *Life) LastRev() int64 { return l.lastRev }
