package registry

import (
	"slices"
	"strings"
)

// What a StatusView holds beyond the lives' Status: the members with their
// heartbeats, and a life's fencing token and quarantine, for a picture of
// the whole cluster (package webui) from the same watch as the statuses.

// MemberStatus is one member as a StatusView holds it: its record under
// members/, the lease the record is on, and that lease's latest heartbeat.
type MemberStatus struct {
	// Record is the member record. When its value does not parse, Record
	// has only the ID, from the key, and Corrupt says why.
	Record  MemberRecord
	Corrupt string
	// Lease is the lease the record is on: the member's session.
	Lease int64
	// Beat is the latest heartbeat on Lease; nil when there is none (yet),
	// or it does not parse.
	Beat *Heartbeat
	// BeatRev is the ModRevision of that heartbeat's key (0: none). It
	// changes with every heartbeat etcd applies.
	BeatRev int64
}

// Members returns the members with a record under members/, sorted by id.
func (v *StatusView) Members() []MemberStatus {
	out := make([]MemberStatus, 0, len(v.members))
	for key, kv := range v.members {
		m := MemberStatus{Lease: kv.Lease}
		rec, err := ParseMemberRecord(kv.Value)
		if err != nil {
			rec, m.Corrupt = MemberRecord{ID: NameOf(v.keys.Members(), key)}, err.Error()
		}
		m.Record = rec
		if b := v.beats[v.keys.Heartbeat(kv.Lease)]; b != nil {
			if hb, err := ParseHeartbeat(b.Value); err == nil {
				m.Beat, m.BeatRev = &hb, b.ModRevision
			}
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b MemberStatus) int { return strings.Compare(a.Record.ID, b.Record.ID) })
	return out
}

// LifeDetail is what a StatusView holds of a life beyond its Status.
type LifeDetail struct {
	// FencingToken is the CreateRevision of the running holder's election
	// key (the token its work was given, a state record's HolderRev); 0
	// when no holder runs the life.
	FencingToken int64
	// Quarantined reports that quarantine/<name> holds the bytes of a
	// corrupt age record of the life.
	Quarantined bool
}

// Detail returns the detail of name; the zero LifeDetail when it is not
// requested.
func (v *StatusView) Detail(name string) LifeDetail {
	st, ok := v.Status(name)
	if !ok {
		return LifeDetail{}
	}
	d := LifeDetail{Quarantined: v.quarantines[name] != nil}
	if st.State == StateRunning {
		d.FencingToken = v.leader(name).CreateRevision // running: a leader whose revision the age record names
	}
	return d
}

// holderLive reports whether holder was a member when name stopped: its
// record there and, when name's age record names a lease, on that lease.
func (v *StatusView) holderLive(holder, name string) bool {
	kv := v.members[v.keys.Member(holder)]
	if kv == nil {
		return false
	}
	if a := v.ages[name]; a != nil {
		if rec, err := ParseAgeRecord(a.Value); err == nil && rec.Running() && rec.Lease != kv.Lease {
			return false // a member of the same id on a later session
		}
	}
	return true
}

// Members returns the members as of Rev (see StatusView.Members).
func (w *StatusWatch) Members() []MemberStatus { return w.view.Members() }

// Detail returns name's detail as of Rev (see StatusView.Detail).
func (w *StatusWatch) Detail(name string) LifeDetail { return w.view.Detail(name) }
