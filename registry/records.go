package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/immortald/immortald/workload"
)

// AgeRecord is the checkpoint of one life, stored at ages/<name>. Only the
// life's holder writes it, in a Txn fenced by the holder's election key and
// the life id: when the life starts, when it is handed off, and when it
// stops. In between, the record does not change: a running life's age is
// carried forward by its holder's heartbeat (see Heartbeat and At), so that
// the checkpoint load on etcd is one write per member per interval, not one
// per life.
type AgeRecord struct {
	// LifeID is the CreateRevision of the life's request key. A record whose
	// LifeID is not the current life's is from an earlier life and is ignored.
	LifeID int64 `json:"life_id"`
	// AgeMS is the age in milliseconds at Time.
	AgeMS int64 `json:"age_ms"`
	// Incarnation counts starts of this life, from 1.
	Incarnation int64 `json:"incarnation"`
	// Holder is the member id that wrote the record.
	Holder string `json:"holder"`
	// HolderRev is the CreateRevision of the holder's election key.
	HolderRev int64 `json:"holder_rev"`
	// Time is the holder's wall clock when the age was taken.
	Time time.Time `json:"time"`
	// Lease is the holder's session lease while the life runs, and 0 once
	// it has stopped (handed off, ended, or invalid): then AgeMS is final.
	Lease int64 `json:"lease,omitempty"`
	// ClockMS is the holder's heartbeat clock when AgeMS was taken; it is
	// only meaningful with Lease.
	ClockMS int64 `json:"clock_ms,omitempty"`
}

// Running reports whether the record is of a life that runs on Lease: its
// age grows with that lease's heartbeat.
func (r AgeRecord) Running() bool { return r.Lease != 0 }

// At returns the record carried forward to the heartbeat b of its holder's
// lease (nil: none): the age the life had when b was written. A stopped
// record, or a beat older than the record, leaves it as it is.
func (r AgeRecord) At(b *Heartbeat) AgeRecord {
	if !r.Running() || b == nil || b.ClockMS <= r.ClockMS {
		return r
	}
	r.AgeMS += b.ClockMS - r.ClockMS
	r.ClockMS = b.ClockMS
	r.Time = b.Time
	return r
}

// Heartbeat is a member's checkpoint of every life it runs, stored at
// heartbeats/<lease-hex> without a lease, so that it outlives the member:
// a successor needs it to know how long the lives ran. Each member writes
// its own every checkpoint interval, in a Txn guarded by its member record
// being on that lease, so a member whose lease has expired can no longer
// make its lives older.
type Heartbeat struct {
	// Member is the member id that writes it.
	Member string `json:"member"`
	// ClockMS is the member's monotonic clock when it was written: the
	// time since the member started, in milliseconds. Only its differences
	// from an AgeRecord's ClockMS of the same lease mean anything.
	ClockMS int64 `json:"clock_ms"`
	// Time is the member's wall clock when it was written.
	Time time.Time `json:"time"`
}

// Marshal encodes b.
func (b Heartbeat) Marshal() []byte {
	out, _ := json.Marshal(b) // cannot fail: only plain fields
	return out
}

// ParseHeartbeat decodes a heartbeats/<lease-hex> value; anything that is
// not a JSON object with a member and a non-negative clock is ErrCorrupt.
func ParseHeartbeat(v []byte) (Heartbeat, error) {
	var b Heartbeat
	if err := json.Unmarshal(v, &b); err != nil {
		return Heartbeat{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	switch {
	case b.Member == "":
		return Heartbeat{}, fmt.Errorf("%w: heartbeat without a member", ErrCorrupt)
	case b.ClockMS < 0:
		return Heartbeat{}, fmt.Errorf("%w: clock_ms %d is negative", ErrCorrupt, b.ClockMS)
	}
	return b, nil
}

// ErrCorrupt marks a stored value that does not parse as its record type.
var ErrCorrupt = errors.New("registry: corrupt record")

// Marshal encodes r.
func (r AgeRecord) Marshal() []byte {
	b, _ := json.Marshal(r) // cannot fail: only plain fields
	return b
}

// ParseAgeRecord decodes an ages/<name> value. Any value that is not a JSON
// object with a positive life id and incarnation and a non-negative age is
// ErrCorrupt: it is never trusted and never silently overwritten.
func ParseAgeRecord(b []byte) (AgeRecord, error) {
	var r AgeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return AgeRecord{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	switch {
	case r.LifeID <= 0:
		return AgeRecord{}, fmt.Errorf("%w: life_id %d is not positive", ErrCorrupt, r.LifeID)
	case r.Incarnation <= 0:
		return AgeRecord{}, fmt.Errorf("%w: incarnation %d is not positive", ErrCorrupt, r.Incarnation)
	case r.AgeMS < 0:
		return AgeRecord{}, fmt.Errorf("%w: age_ms %d is negative", ErrCorrupt, r.AgeMS)
	case r.Lease < 0 || r.ClockMS < 0:
		return AgeRecord{}, fmt.Errorf("%w: lease %d or clock_ms %d is negative", ErrCorrupt, r.Lease, r.ClockMS)
	}
	return r, nil
}

// MemberRecord describes one running member, stored at members/<id> on the
// member's session lease, so it disappears with the member.
type MemberRecord struct {
	ID      string    `json:"id"`
	Address string    `json:"address"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// Lives is how many lives the member held when it last wrote the record.
	Lives int `json:"lives"`
	// PID is the member's process id (in its PID namespace): the process
	// whose death its watchdog detects. 0 in records of older members.
	PID int `json:"pid,omitempty"`
	// Kinds are the kinds the member runs, sorted. Absent in records of
	// older members, which run only workload.AgeKind; every member runs it.
	Kinds []string `json:"kinds,omitempty"`
}

// Runs reports whether the member runs lives of kind.
func (m MemberRecord) Runs(kind string) bool {
	return kind == workload.AgeKind || slices.Contains(m.Kinds, kind)
}

// ParseMemberRecord decodes a members/<id> value; anything that is not a
// JSON object with an id is ErrCorrupt.
func ParseMemberRecord(v []byte) (MemberRecord, error) {
	var m MemberRecord
	if err := json.Unmarshal(v, &m); err != nil {
		return MemberRecord{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if m.ID == "" {
		return MemberRecord{}, fmt.Errorf("%w: member record without an id", ErrCorrupt)
	}
	return m, nil
}

// StateRecord is the workload state of one life (of a kind other than age),
// stored at states/<name>. Only the life's holder writes it, fenced as the
// age record is (CreateRevision of its election key == HolderRev, and of
// lives/<name> == LifeID): each checkpoint of the workload. Its child
// status goes, in the same Txn, to a ChildRecord of its own, so that a
// status read never reads the state. A record whose LifeID is not the
// current life's is from an earlier life and is never restored. (A record
// written before child records existed carries a "child" field too; it is
// ignored.)
type StateRecord struct {
	LifeID int64 `json:"life_id"`
	// Holder is the member id that wrote it.
	Holder string `json:"holder"`
	// HolderRev is the CreateRevision of the holder's election key: the
	// fencing token the workload was given.
	HolderRev int64 `json:"holder_rev"`
	// Incarnation of the life when it was written, from 1.
	Incarnation int64 `json:"incarnation"`
	// Time is the holder's wall clock when it was written.
	Time time.Time `json:"time"`
	// Data is the state, at most workload.MaxStateBytes (base64 in JSON).
	Data []byte `json:"data,omitempty"`
}

// ChildRecord is the status of one life's workload (its child process, for
// a command kind), stored at children/<name>: a few hundred bytes, written
// by the holder in the same fenced Txn as each states/<name> record (so the
// two always have the same ModRevision, and a guard on the state record's
// revision covers both), and deleted with it. The status shown by ls,
// get-age and the live view comes from it.
type ChildRecord struct {
	LifeID      int64     `json:"life_id"`
	Holder      string    `json:"holder"`
	HolderRev   int64     `json:"holder_rev"` // the holder's fencing token
	Incarnation int64     `json:"incarnation"`
	Time        time.Time `json:"time"` // the holder's wall clock when written
	// Child is the workload's status when it was written; its Error is cut
	// to MaxChildErrorBytes.
	Child workload.ChildStatus `json:"child"`
}

// MaxChildErrorBytes bounds ChildRecord.Child.Error as written.
const MaxChildErrorBytes = 1 << 10

// MaxChildRecordBytes bounds a stored child record; a longer value is
// ErrCorrupt, unread. It holds an Error of MaxChildErrorBytes that JSON
// escapes entirely (6 bytes per byte: <, >, &, control bytes) and the
// other fields.
const MaxChildRecordBytes = 8 << 10

// Marshal encodes r, its child's Error cut to MaxChildErrorBytes (on a
// UTF-8 boundary).
func (r ChildRecord) Marshal() []byte {
	if e := r.Child.Error; len(e) > MaxChildErrorBytes {
		e = strings.ToValidUTF8(e[:MaxChildErrorBytes-3], "") + "..."
		r.Child.Error = e
	}
	b, _ := json.Marshal(r) // cannot fail: only plain fields
	return b
}

// ParseChildRecord decodes a children/<name> value. A value over
// MaxChildRecordBytes (unread), or that is not a JSON object with a
// positive life id, holder revision and incarnation, is ErrCorrupt.
func ParseChildRecord(v []byte) (ChildRecord, error) {
	if len(v) > MaxChildRecordBytes {
		return ChildRecord{}, fmt.Errorf("%w: child record of %d bytes is over the limit of %d", ErrCorrupt, len(v), MaxChildRecordBytes)
	}
	var r ChildRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return ChildRecord{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if err := checkHold(r.LifeID, r.HolderRev, r.Incarnation); err != nil {
		return ChildRecord{}, err
	}
	return r, nil
}

// checkHold is the check a holder's record (state or child) passes: a
// positive life id, holder revision and incarnation; else ErrCorrupt.
func checkHold(lifeID, holderRev, incarnation int64) error {
	switch {
	case lifeID <= 0:
		return fmt.Errorf("%w: life_id %d is not positive", ErrCorrupt, lifeID)
	case holderRev <= 0:
		return fmt.Errorf("%w: holder_rev %d is not positive", ErrCorrupt, holderRev)
	case incarnation <= 0:
		return fmt.Errorf("%w: incarnation %d is not positive", ErrCorrupt, incarnation)
	}
	return nil
}

// MaxStateRecordBytes bounds a stored state record: the base64 of
// workload.MaxStateBytes and 8 KiB of metadata.
const MaxStateRecordBytes = (workload.MaxStateBytes+2)/3*4 + 8<<10

// Marshal encodes r; a Data over workload.MaxStateBytes is
// workload.ErrStateTooLarge, and nothing is encoded.
func (r StateRecord) Marshal() ([]byte, error) {
	if len(r.Data) > workload.MaxStateBytes {
		return nil, fmt.Errorf("%w: %d bytes", workload.ErrStateTooLarge, len(r.Data))
	}
	b, err := json.Marshal(r)
	if err == nil && len(b) > MaxStateRecordBytes {
		err = fmt.Errorf("state record of %d bytes is over the limit of %d", len(b), MaxStateRecordBytes)
	}
	return b, err
}

// ParseStateRecord decodes a states/<name> value. A value over
// MaxStateRecordBytes (unread), or whose data is over
// workload.MaxStateBytes, or that is not a JSON object with a positive
// life id, holder revision and incarnation, is ErrCorrupt.
func ParseStateRecord(v []byte) (StateRecord, error) {
	if len(v) > MaxStateRecordBytes {
		return StateRecord{}, fmt.Errorf("%w: state record of %d bytes is over the limit of %d", ErrCorrupt, len(v), MaxStateRecordBytes)
	}
	var r StateRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return StateRecord{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if err := checkHold(r.LifeID, r.HolderRev, r.Incarnation); err != nil {
		return StateRecord{}, err
	}
	if len(r.Data) > workload.MaxStateBytes {
		return StateRecord{}, fmt.Errorf("%w: data of %d bytes is over the limit of %d", ErrCorrupt, len(r.Data), workload.MaxStateBytes)
	}
	return r, nil
}

// Marshal encodes m.
func (m MemberRecord) Marshal() []byte {
	b, _ := json.Marshal(m) // cannot fail: only plain fields
	return b
}

// Life is one request found under lives/.
type Life struct {
	Name string
	// ID is the CreateRevision of the request key: the life's identity.
	ID int64
	// ModRevision of the request key, so a changed value can be told apart.
	ModRevision int64
	Options     Options
	// Err is why the request is invalid (bad name or options), or nil.
	Err error
}

// Valid reports whether the life may run.
func (l Life) Valid() bool { return l.Err == nil }

// ParseLife builds a Life from a request key's name, revisions and value.
func ParseLife(name string, createRev, modRev int64, value []byte) Life {
	l := Life{Name: name, ID: createRev, ModRevision: modRev}
	if err := ValidateName(name); err != nil {
		l.Err = err
		return l
	}
	o, err := ParseOptions(value)
	if err != nil {
		l.Err = err
		return l
	}
	l.Options = o
	return l
}
