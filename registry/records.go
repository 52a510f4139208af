package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// AgeRecord is the checkpoint of one life, stored at ages/<name>. Only the
// life's holder writes it, in a Txn fenced by the holder's election key and
// the life id.
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
