package registry

import (
	"context"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// AgeView folds the events of ages/ and heartbeats/ into every life's age
// as of the latest event: the age record carried forward by its holder's
// heartbeat. It is for observers (tests, the benchmark) that follow ages
// with a watch; it is not safe for concurrent use.
type AgeView struct {
	keys    Keys
	recs    map[string]AgeRecord
	beats   map[int64]Heartbeat
	byLease map[int64]map[string]struct{}
}

// AgeChange is a life whose age an event changed. Beat is true when the
// change came from its holder's heartbeat, not from its own record.
type AgeChange struct {
	Name    string
	Rec     AgeRecord // carried forward to the holder's latest heartbeat
	Deleted bool      // the age record was deleted
	Beat    bool
}

// NewAgeView returns an empty view of the keyspace keys.
func NewAgeView(keys Keys) *AgeView {
	return &AgeView{
		keys:    keys,
		recs:    make(map[string]AgeRecord),
		beats:   make(map[int64]Heartbeat),
		byLease: make(map[int64]map[string]struct{}),
	}
}

// Load takes the ages/ and heartbeats/ keys as listed (in any order).
func (v *AgeView) Load(kvs []*mvccpb.KeyValue) error {
	var bad error
	for _, kv := range kvs {
		if _, err := v.Apply(&clientv3.Event{Type: mvccpb.PUT, Kv: kv}); err != nil && bad == nil {
			bad = err
		}
	}
	return bad
}

// Apply takes one event and returns the lives whose age it changed. Keys
// outside ages/ and heartbeats/ are ignored; a value that does not parse is
// an error and changes nothing.
func (v *AgeView) Apply(ev *clientv3.Event) ([]AgeChange, error) {
	key := string(ev.Kv.Key)
	if l, ok := v.keys.HeartbeatLease(key); ok {
		if ev.Type == mvccpb.DELETE {
			delete(v.beats, l)
			return nil, nil
		}
		b, err := ParseHeartbeat(ev.Kv.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		v.beats[l] = b
		out := make([]AgeChange, 0, len(v.byLease[l]))
		for name := range v.byLease[l] {
			out = append(out, AgeChange{Name: name, Rec: v.recs[name].At(&b), Beat: true})
		}
		return out, nil
	}
	name, ok := strings.CutPrefix(key, v.keys.Ages())
	if !ok || name == "" {
		return nil, nil
	}
	if old, ok := v.recs[name]; ok && old.Running() {
		delete(v.byLease[old.Lease], name)
		if len(v.byLease[old.Lease]) == 0 {
			delete(v.byLease, old.Lease)
		}
	}
	if ev.Type == mvccpb.DELETE {
		delete(v.recs, name)
		return []AgeChange{{Name: name, Deleted: true}}, nil
	}
	rec, err := ParseAgeRecord(ev.Kv.Value)
	if err != nil {
		delete(v.recs, name)
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	v.recs[name] = rec
	if rec.Running() {
		set := v.byLease[rec.Lease]
		if set == nil {
			set = make(map[string]struct{})
			v.byLease[rec.Lease] = set
		}
		set[name] = struct{}{}
	}
	return []AgeChange{{Name: name, Rec: v.carried(rec)}}, nil
}

// Get returns the age of name as of the latest event.
func (v *AgeView) Get(name string) (AgeRecord, bool) {
	rec, ok := v.recs[name]
	if !ok {
		return AgeRecord{}, false
	}
	return v.carried(rec), true
}

func (v *AgeView) carried(rec AgeRecord) AgeRecord {
	if !rec.Running() {
		return rec
	}
	if b, ok := v.beats[rec.Lease]; ok {
		return rec.At(&b)
	}
	return rec
}

// ReadAge reads the age record of name and carries it forward to its
// holder's latest heartbeat; ok is false when there is no record.
func ReadAge(ctx context.Context, cli *clientv3.Client, keys Keys, name string) (rec AgeRecord, ok bool, err error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(keys.Age(name)),
		clientv3.OpGet(keys.Heartbeats(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return AgeRecord{}, false, err
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return AgeRecord{}, false, nil
	}
	rec, err = ParseAgeRecord(kvs[0].Value)
	if err != nil {
		return AgeRecord{}, true, err
	}
	return rec.At(beatOf(keys, resp.Responses[1].GetResponseRange().Kvs, rec)), true, nil
}

// beatOf finds the heartbeat of rec's lease among kvs (heartbeats/ keys);
// nil when rec is not running or its beat is missing or corrupt.
func beatOf(keys Keys, kvs []*mvccpb.KeyValue, rec AgeRecord) *Heartbeat {
	if !rec.Running() {
		return nil
	}
	want := keys.Heartbeat(rec.Lease)
	for _, kv := range kvs {
		if string(kv.Key) == want {
			if b, err := ParseHeartbeat(kv.Value); err == nil {
				return &b
			}
			return nil
		}
	}
	return nil
}
