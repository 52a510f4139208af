package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/workload"
)

// States of a life as the CLI shows them.
const (
	StateRunning = "running" // a live holder runs it
	StateWaiting = "waiting" // wanted, no holder runs it yet
	StateInvalid = "invalid" // bad name or options: no member runs it (its stored age is kept)
)

// ErrNoLife is returned for a name that has no request under lives/.
var ErrNoLife = errors.New("no such life")

// Status is what `immortald get-age -o json` and `ls -o json` print. A life
// that no holder runs and whose kind no live member declares is waiting,
// with the Error `no live member runs kind "K"`.
type Status struct {
	Name string `json:"name"`
	// Age is the checkpointed age in whole seconds.
	Age            int64             `json:"age"`
	AgeMS          int64             `json:"age_ms"`
	State          string            `json:"state"`
	Holder         string            `json:"holder"`
	Incarnation    int64             `json:"incarnation"`
	LifeID         int64             `json:"life_id"`
	CheckpointTime *time.Time        `json:"checkpoint_time,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	// Kind is what the life runs ("age" when the request names none).
	Kind string `json:"kind"`
	// Child is the workload's status as its current holder last
	// checkpointed it; nil for age lives and lives no holder runs.
	Child *workload.ChildStatus `json:"child,omitempty"`
	// Error says what is wrong with the life, when something is.
	Error string `json:"error,omitempty"`
}

// GetStatus reads one life's status in a single consistent snapshot.
func GetStatus(ctx context.Context, cli *clientv3.Client, keys Keys, name string) (Status, error) {
	if name == "" {
		return Status{}, errors.New("name is empty")
	}
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(keys.Life(name)),
		clientv3.OpGet(keys.Election(name)+"/", clientv3.WithFirstCreate()...),
		clientv3.OpGet(keys.Age(name)),
		clientv3.OpGet(keys.Quarantine(name)),
		clientv3.OpGet(keys.Heartbeats(), clientv3.WithPrefix()),
		clientv3.OpGet(keys.Child(name)),
		clientv3.OpGet(keys.Members(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return Status{}, err
	}
	first := func(i int) *mvccpb.KeyValue {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil
		}
		return kvs[0]
	}
	req := first(0)
	if req == nil {
		return Status{}, fmt.Errorf("%w: %q", ErrNoLife, name)
	}
	v := view{keys: keys, beats: resp.Responses[4].GetResponseRange().Kvs, kinds: memberKinds(resp.Responses[6].GetResponseRange().Kvs)}
	return v.status(name, req, first(1), first(2), first(3), first(5)), nil
}

// ErrNoState is returned for a life that has no checkpointed state.
var ErrNoState = errors.New("no state checkpointed")

// GetState reads the last checkpointed state of one life, and its child
// record (nil when there is none of the same life and fencing token), in
// one snapshot with its request. Errors: ErrNoLife when the life is not
// requested; ErrNoState when it has no state record of its own life id
// (lives of kind age never have one, others not before their first
// checkpoint); an ErrCorrupt when the state record does not parse (a child
// record that does not parse is left out).
func GetState(ctx context.Context, cli *clientv3.Client, keys Keys, name string) (StateRecord, *ChildRecord, error) {
	if name == "" {
		return StateRecord{}, nil, errors.New("name is empty")
	}
	resp, err := cli.Txn(ctx).Then(clientv3.OpGet(keys.Life(name)), clientv3.OpGet(keys.State(name)), clientv3.OpGet(keys.Child(name))).Commit()
	if err != nil {
		return StateRecord{}, nil, err
	}
	req, st, ch := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs, resp.Responses[2].GetResponseRange().Kvs
	if len(req) == 0 {
		return StateRecord{}, nil, fmt.Errorf("%w: %q", ErrNoLife, name)
	}
	if len(st) == 0 {
		return StateRecord{}, nil, fmt.Errorf("%w for life %q", ErrNoState, name)
	}
	rec, err := ParseStateRecord(st[0].Value)
	if err != nil {
		return StateRecord{}, nil, fmt.Errorf("state record at %s: %w", keys.State(name), err)
	}
	if rec.LifeID != req[0].CreateRevision {
		return StateRecord{}, nil, fmt.Errorf("%w for life %q (the record is of an earlier life)", ErrNoState, name)
	}
	var child *ChildRecord
	if len(ch) > 0 {
		if c, err := ParseChildRecord(ch[0].Value); err == nil && c.LifeID == rec.LifeID && c.HolderRev == rec.HolderRev {
			child = &c
		}
	}
	return rec, child, nil
}

// ListStatus reads every life's status at one revision, sorted by name.
func ListStatus(ctx context.Context, cli *clientv3.Client, keys Keys) ([]Status, error) {
	_, v, err := ReadStatusView(ctx, cli, keys)
	if err != nil {
		return nil, err
	}
	return v.List(), nil
}

// view is what every life's status is derived with: the heartbeats/ keys
// and the kinds the live members run, read in the same snapshot.
type view struct {
	keys  Keys
	beats []*mvccpb.KeyValue
	kinds map[string]bool
}

// memberKinds is the set of kinds the members of kvs (members/ keys) run; a
// record that does not parse counts as a member that runs age only.
func memberKinds(kvs []*mvccpb.KeyValue) map[string]bool {
	out := map[string]bool{}
	for _, kv := range kvs {
		m, _ := ParseMemberRecord(kv.Value)
		out[workload.AgeKind] = true
		for _, k := range m.Kinds {
			out[k] = true
		}
	}
	return out
}

// status derives a status from the keys of one life; leader, age,
// quarantine and child (its children/<name> key) may be nil.
func (v view) status(name string, req, leader, age, quarantine, child *mvccpb.KeyValue) Status {
	keys, beats := v.keys, v.beats
	life := ParseLife(name, req.CreateRevision, req.ModRevision, req.Value)
	st := Status{Name: name, LifeID: life.ID, State: StateWaiting, Labels: life.Options.Labels, Kind: life.Options.KindName()}
	var problems []string
	if age != nil {
		// Read for an invalid request too: a request that turned invalid
		// keeps its life id, and its stored age, which the life resumes
		// from once the request is valid again.
		rec, err := ParseAgeRecord(age.Value)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("age record at %s does not parse: %v", keys.Age(name), err))
		case rec.LifeID == life.ID:
			rec = rec.At(beatOf(keys, beats, rec))
			st.AgeMS, st.Age, st.Incarnation = rec.AgeMS, rec.AgeMS/1000, rec.Incarnation
			t := rec.Time
			st.CheckpointTime = &t
			if life.Valid() && leader != nil && leader.CreateRevision == rec.HolderRev {
				st.State, st.Holder = StateRunning, rec.Holder
			}
		}
	}
	if !life.Valid() {
		// Only why it is invalid: a holder that still runs it is stopping
		// it, and no member campaigns for it.
		st.State = StateInvalid
		st.Error = life.Err.Error()
		return st
	}
	if child != nil && st.State == StateRunning {
		rec, err := ParseChildRecord(child.Value)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("child record at %s does not parse: %v", keys.Child(name), err))
		case rec.LifeID == life.ID && leader.CreateRevision == rec.HolderRev:
			c := rec.Child
			st.Child = &c
		}
	}
	if st.State != StateRunning && st.Kind != workload.AgeKind && !v.kinds[st.Kind] {
		problems = append(problems, fmt.Sprintf("no live member runs kind %q", st.Kind))
	}
	if quarantine != nil {
		problems = append(problems, fmt.Sprintf("a corrupt age record was found; its bytes are kept at %s", keys.Quarantine(name)))
	}
	if len(problems) > 0 {
		st.Error = problems[0]
		for _, p := range problems[1:] {
			st.Error += "; " + p
		}
	}
	return st
}
