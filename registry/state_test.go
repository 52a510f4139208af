package registry_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

func TestOptionsKind(t *testing.T) {
	o, err := registry.ParseOptions([]byte(`{"kind":"counter","labels":{"a":"b"}}`))
	if err != nil || o.Kind != "counter" || o.KindName() != "counter" || o.Labels["a"] != "b" {
		t.Fatalf("ParseOptions = %+v, %v; want kind counter", o, err)
	}
	if o, _ := registry.ParseOptions(nil); o.KindName() != workload.AgeKind {
		t.Fatalf("no kind is %q, want %q", o.KindName(), workload.AgeKind)
	}
	for in, want := range map[string]string{
		`{"kind":"counter","command":["/bin/sh"]}`: `field "command" is not allowed: a request cannot carry a command: name a kind that members declare in their config`,
		`{"args":["-x"]}`:                          `field "args" is not allowed`,
		`{"kind":"c","env":{"A":"b"}}`:             `field "env" is not allowed`,
		`{"program":"/bin/sh"}`:                    `field "program" is not allowed`,
		`{"kind":"Counter"}`:                       `kind "Counter": want 1 to 63 lower-case letters`,
		`{"kind":"a/b"}`:                           `kind "a/b"`,
		`{"kind":7}`:                               "options",
	} {
		if _, err := registry.ParseOptions([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseOptions(%s) = %v, want an error containing %q", in, err, want)
		}
	}
}

func TestStateRecord(t *testing.T) {
	r := registry.StateRecord{LifeID: 5, Holder: "m1", HolderRev: 9, Incarnation: 2, Time: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
		Data: []byte{0, 1, 2, 255}, Child: workload.ChildStatus{State: workload.ChildBackoff, ExitCode: 3, Restarts: 4, Error: "x"}}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"data":"AAEC/w=="`) || !strings.Contains(string(b), `"child":{"state":"backoff","exit_code":3,"restarts":4,"error":"x"}`) {
		t.Fatalf("Marshal = %s: want data in base64 and the child status", b)
	}
	got, err := registry.ParseStateRecord(b)
	if err != nil || !bytes.Equal(got.Data, r.Data) || got.Child != r.Child || got.HolderRev != 9 || !got.Time.Equal(r.Time) {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	full := r
	full.Data = bytes.Repeat([]byte{0xff}, workload.MaxStateBytes)
	b, err = full.Marshal()
	if err != nil {
		t.Fatalf("a state at the limit: %v", err)
	}
	if _, err := registry.ParseStateRecord(b); err != nil {
		t.Fatalf("a record with a state at the limit: %v", err)
	}
	full.Data = append(full.Data, 0)
	if _, err := full.Marshal(); !errors.Is(err, workload.ErrStateTooLarge) {
		t.Fatalf("Marshal of a state over the limit = %v, want ErrStateTooLarge", err)
	}
	for _, bad := range []string{"", "garbage", `{"life_id":0,"holder_rev":1,"incarnation":1}`, `{"life_id":1,"holder_rev":0,"incarnation":1}`,
		`{"life_id":1,"holder_rev":1,"incarnation":0}`, `{"life_id":1,"holder_rev":1,"incarnation":1,"data":"!!"}`,
		strings.Repeat(" ", registry.MaxStateRecordBytes+1)} {
		if _, err := registry.ParseStateRecord([]byte(bad)); !errors.Is(err, registry.ErrCorrupt) {
			t.Errorf("ParseStateRecord(%.40q) = %v, want ErrCorrupt", bad, err)
		}
	}
}

func TestMemberRecordKinds(t *testing.T) {
	old, err := registry.ParseMemberRecord([]byte(`{"id":"m0","lives":2}`))
	if err != nil {
		t.Fatal(err)
	}
	if !old.Runs(workload.AgeKind) || old.Runs("counter") {
		t.Errorf("a record without kinds: runs age %v, counter %v; want only age", old.Runs("age"), old.Runs("counter"))
	}
	m := registry.MemberRecord{ID: "m1", Kinds: []string{"age", "counter"}}
	if !strings.Contains(string(m.Marshal()), `"kinds":["age","counter"]`) || !m.Runs("counter") || m.Runs("other") {
		t.Errorf("record %s: want kinds age and counter", m.Marshal())
	}
	if _, err := registry.ParseMemberRecord([]byte(`{}`)); !errors.Is(err, registry.ErrCorrupt) {
		t.Errorf("a record without an id = %v, want ErrCorrupt", err)
	}
}

// Status shows the kind, the child status of the current holder's state
// record, and says when no live member runs a life's kind.
func TestStatusKinds(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t, "/immortals/")
	ctx := context.Background()
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	child := workload.ChildStatus{State: workload.ChildRunning, ExitCode: 1, Restarts: 2}

	mustPut(t, cli, keys.Member("old"), `{"id":"old"}`)
	// Running on a member that has since lost the kind: running wins.
	id := mustPut(t, cli, keys.Life("job"), `{"kind":"counter"}`)
	e := mustPut(t, cli, keys.Election("job")+"/aaaa", "m1")
	mustPut(t, cli, keys.Age("job"), string(registry.AgeRecord{LifeID: id, AgeMS: 2000, Incarnation: 1, Holder: "m1", HolderRev: e, Time: at}.Marshal()))
	rec, _ := registry.StateRecord{LifeID: id, Holder: "m1", HolderRev: e, Incarnation: 1, Time: at, Data: []byte("41"), Child: child}.Marshal()
	mustPut(t, cli, keys.State("job"), string(rec))
	// Wanted, no member runs its kind.
	mustPut(t, cli, keys.Life("orphan"), `{"kind":"counter"}`)
	// Wanted, of a kind a live member runs.
	mustPut(t, cli, keys.Life("batch"), `{"kind":"batch"}`)
	mustPut(t, cli, keys.Member("m2"), string(registry.MemberRecord{ID: "m2", Kinds: []string{"age", "batch"}}.Marshal()))
	// A state record of an earlier holder: no child status.
	sid := mustPut(t, cli, keys.Life("stale"), `{"kind":"batch"}`)
	rec, _ = registry.StateRecord{LifeID: sid, Holder: "gone", HolderRev: 1, Incarnation: 1, Time: at, Child: child}.Marshal()
	mustPut(t, cli, keys.State("stale"), string(rec))
	mustPut(t, cli, keys.Life("plain"), "")

	all, err := registry.ListStatus(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range all {
		got, err := registry.GetStatus(ctx, cli, keys, st.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []registry.Status{st, got} {
			want := map[string]struct {
				kind, state, err string
				child            bool
			}{
				"job":    {"counter", registry.StateRunning, "", true},
				"orphan": {"counter", registry.StateWaiting, `no live member runs kind "counter"`, false},
				"batch":  {"batch", registry.StateWaiting, "", false},
				"stale":  {"batch", registry.StateWaiting, "", false},
				"plain":  {"age", registry.StateWaiting, "", false},
			}[s.Name]
			if s.Kind != want.kind || s.State != want.state || s.Error != want.err || (s.Child != nil) != want.child {
				t.Errorf("%s: kind %q state %q error %q child %+v; want %+v", s.Name, s.Kind, s.State, s.Error, s.Child, want)
			}
			if want.child && *s.Child != child {
				t.Errorf("%s: child %+v, want %+v", s.Name, *s.Child, child)
			}
		}
	}

	// GetState.
	got, err := registry.GetState(ctx, cli, keys, "job")
	if err != nil || string(got.Data) != "41" || got.HolderRev != e {
		t.Fatalf("GetState(job) = %+v, %v", got, err)
	}
	for name, want := range map[string]error{"plain": registry.ErrNoState, "nobody": registry.ErrNoLife} {
		if _, err := registry.GetState(ctx, cli, keys, name); !errors.Is(err, want) {
			t.Errorf("GetState(%s) = %v, want %v", name, err, want)
		}
	}
	mustDelete(t, cli, keys.Life("stale"))
	mustPut(t, cli, keys.Life("stale"), `{"kind":"batch"}`)
	if _, err := registry.GetState(ctx, cli, keys, "stale"); !errors.Is(err, registry.ErrNoState) {
		t.Errorf("GetState of a reborn life with the old life's record = %v, want ErrNoState", err)
	}
	mustPut(t, cli, keys.State("plain"), "garbage")
	if _, err := registry.GetState(ctx, cli, keys, "plain"); !errors.Is(err, registry.ErrCorrupt) {
		t.Errorf("GetState of a corrupt record = %v, want ErrCorrupt", err)
	}
}
