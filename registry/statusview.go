package registry

import (
	"context"
	"maps"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// StatusView holds the keys of one keyspace that lives' statuses derive
// from (lives/, elections/, ages/, quarantine/, children/, heartbeats/ and
// members/), as listed and then changed by watch events, and derives any
// life's Status from them exactly as GetStatus and ListStatus do. Keys
// outside those sections are ignored: it never reads or holds a state
// record (states/, up to ~700 KB each), so neither a read nor the view's
// size grows with the lives' states. It is not safe for concurrent use.
type StatusView struct {
	keys        Keys
	lives       map[string]*mvccpb.KeyValue            // by name
	cands       map[string]map[string]*mvccpb.KeyValue // life name -> candidacy key -> kv
	ages        map[string]*mvccpb.KeyValue
	quarantines map[string]*mvccpb.KeyValue
	children    map[string]*mvccpb.KeyValue
	beats       map[string]*mvccpb.KeyValue // by key
	members     map[string]*mvccpb.KeyValue // by key
	kinds       map[string]bool
}

// NewStatusView returns an empty view of the keyspace keys.
func NewStatusView(keys Keys) *StatusView {
	return &StatusView{
		keys:        keys,
		lives:       make(map[string]*mvccpb.KeyValue),
		cands:       make(map[string]map[string]*mvccpb.KeyValue),
		ages:        make(map[string]*mvccpb.KeyValue),
		quarantines: make(map[string]*mvccpb.KeyValue),
		children:    make(map[string]*mvccpb.KeyValue),
		beats:       make(map[string]*mvccpb.KeyValue),
		members:     make(map[string]*mvccpb.KeyValue),
		kinds:       memberKinds(nil),
	}
}

// ReadStatusView reads the sections of keys that statuses derive from, at
// one revision (the first read's), page by page, and returns the view and
// that revision. Errors are etcd's.
func ReadStatusView(ctx context.Context, cli *clientv3.Client, keys Keys) (int64, *StatusView, error) {
	v := NewStatusView(keys)
	var rev int64
	for _, sec := range []string{keys.Lives(), keys.Ages(), keys.Quarantines(), keys.Children(), keys.Members(), keys.Heartbeats(), keys.Elections()} {
		r, kvs, err := RangeAll(ctx, cli, sec, rev)
		if err != nil {
			return 0, nil, err
		}
		rev = r
		v.Load(kvs)
	}
	return rev, v, nil
}

// Load takes keys as listed (any order; typically RangeAll of
// keys.Prefix()), as if each were put.
func (v *StatusView) Load(kvs []*mvccpb.KeyValue) {
	for _, kv := range kvs {
		v.Apply(&clientv3.Event{Type: mvccpb.PUT, Kv: kv})
	}
}

// Apply takes one event and returns the names of the lives whose status it
// may have changed, other than in age: an event of heartbeats/ only ages
// the lives of its lease and returns none; one of members/ returns every
// life when it changes the set of kinds the live members run, else none.
func (v *StatusView) Apply(ev *clientv3.Event) []string {
	key := string(ev.Kv.Key)
	put := ev.Type == mvccpb.PUT
	set := func(m map[string]*mvccpb.KeyValue, k string, kv *mvccpb.KeyValue) {
		if put {
			m[k] = kv
		} else {
			delete(m, k)
		}
	}
	k := v.keys
	switch {
	case strings.HasPrefix(key, k.Lives()):
		name := NameOf(k.Lives(), key)
		set(v.lives, name, ev.Kv)
		return []string{name}
	case strings.HasPrefix(key, k.Elections()):
		name, ok := k.ElectionName(key)
		if !ok {
			return nil
		}
		c := v.cands[name]
		if c == nil {
			c = make(map[string]*mvccpb.KeyValue)
			v.cands[name] = c
		}
		set(c, key, ev.Kv)
		if len(c) == 0 {
			delete(v.cands, name)
		}
		return []string{name}
	case strings.HasPrefix(key, k.Ages()):
		name := NameOf(k.Ages(), key)
		set(v.ages, name, ev.Kv)
		return []string{name}
	case strings.HasPrefix(key, k.Quarantines()):
		name := NameOf(k.Quarantines(), key)
		set(v.quarantines, name, ev.Kv)
		return []string{name}
	case strings.HasPrefix(key, k.Children()):
		name := NameOf(k.Children(), key)
		set(v.children, name, ev.Kv)
		return []string{name}
	case strings.HasPrefix(key, k.Heartbeats()):
		set(v.beats, key, ev.Kv)
		return nil
	case strings.HasPrefix(key, k.Members()):
		set(v.members, key, ev.Kv)
		kinds := memberKinds(slices.Collect(maps.Values(v.members)))
		if equalSets(kinds, v.kinds) {
			return nil
		}
		v.kinds = kinds
		return v.Names()
	}
	return nil
}

// Names returns the names of every requested life, sorted.
func (v *StatusView) Names() []string {
	out := make([]string, 0, len(v.lives))
	for name := range v.lives {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// Status derives the status of name; ok is false when it is not requested.
func (v *StatusView) Status(name string) (st Status, ok bool) {
	req := v.lives[name]
	if req == nil {
		return Status{}, false
	}
	return v.view().status(name, req, v.leader(name), v.ages[name], v.quarantines[name], v.children[name]), true
}

// List derives every requested life's status, sorted by name.
func (v *StatusView) List() []Status {
	vw := v.view()
	out := make([]Status, 0, len(v.lives))
	for _, name := range v.Names() {
		out = append(out, vw.status(name, v.lives[name], v.leader(name), v.ages[name], v.quarantines[name], v.children[name]))
	}
	return out
}

func (v *StatusView) view() view {
	return view{keys: v.keys, beats: slices.Collect(maps.Values(v.beats)), kinds: v.kinds}
}

// leader is the candidacy of name created first: its election's leader.
func (v *StatusView) leader(name string) *mvccpb.KeyValue {
	var lead *mvccpb.KeyValue
	for _, kv := range v.cands[name] {
		if lead == nil || kv.CreateRevision < lead.CreateRevision {
			lead = kv
		}
	}
	return lead
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
