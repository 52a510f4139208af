package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

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

func TestChildRecord(t *testing.T) {
	r := registry.ChildRecord{LifeID: 5, Holder: "m1", HolderRev: 9, Incarnation: 2, Time: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
		Child: workload.ChildStatus{State: workload.ChildBackoff, ExitCode: 3, Restarts: 4, Error: "x"}}
	b := r.Marshal()
	if !strings.Contains(string(b), `"child":{"state":"backoff","exit_code":3,"restarts":4,"error":"x"}`) {
		t.Fatalf("Marshal = %s: want the child status", b)
	}
	got, err := registry.ParseChildRecord(b)
	if err != nil || got != r {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	// A long error is cut, on a UTF-8 boundary, so the record stays small.
	r.Child.Error = strings.Repeat("é", registry.MaxChildErrorBytes)
	b = r.Marshal()
	got, err = registry.ParseChildRecord(b)
	if err != nil || len(b) > registry.MaxChildRecordBytes || len(got.Child.Error) > registry.MaxChildErrorBytes ||
		!strings.HasSuffix(got.Child.Error, "...") || !utf8.ValidString(got.Child.Error) {
		t.Fatalf("a long error: %d bytes, %+v, %v", len(b), got, err)
	}
	// One that JSON escapes byte by byte still parses.
	for _, c := range []string{"<", "\x1b"} {
		r.Child.Error = strings.Repeat(c, 2*registry.MaxChildErrorBytes)
		r.Holder = strings.Repeat("h", 253)
		if got, err := registry.ParseChildRecord(r.Marshal()); err != nil || got.Child.Error == "" {
			t.Fatalf("an error of %q bytes: %+v, %v", c, got.Child, err)
		}
	}
	for _, bad := range []string{"", "[]", `{"life_id":0,"holder_rev":1,"incarnation":1}`, `{"life_id":1,"holder_rev":0,"incarnation":1}`,
		`{"life_id":1,"holder_rev":1,"incarnation":0}`, `{"life_id":1,"holder_rev":1,"incarnation":1,"x":"` + strings.Repeat("a", registry.MaxChildRecordBytes) + `"}`} {
		if _, err := registry.ParseChildRecord([]byte(bad)); !errors.Is(err, registry.ErrCorrupt) {
			t.Errorf("ParseChildRecord(%.40q) = %v, want ErrCorrupt", bad, err)
		}
	}
}

func TestStateRecord(t *testing.T) {
	r := registry.StateRecord{LifeID: 5, Holder: "m1", HolderRev: 9, Incarnation: 2, Time: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
		Data: []byte{0, 1, 2, 255}}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"data":"AAEC/w=="`) {
		t.Fatalf("Marshal = %s: want data in base64", b)
	}
	got, err := registry.ParseStateRecord(b)
	if err != nil || !bytes.Equal(got.Data, r.Data) || got.HolderRev != 9 || !got.Time.Equal(r.Time) {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	// A record written before child records existed still parses.
	if got, err := registry.ParseStateRecord([]byte(`{"life_id":5,"holder":"m1","holder_rev":9,"incarnation":2,"data":"QQ==","child":{"state":"running"}}`)); err != nil || string(got.Data) != "A" {
		t.Fatalf("an older record = %+v, %v", got, err)
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
	rec, _ := registry.StateRecord{LifeID: id, Holder: "m1", HolderRev: e, Incarnation: 1, Time: at, Data: []byte("41")}.Marshal()
	mustPut(t, cli, keys.State("job"), string(rec))
	mustPut(t, cli, keys.Child("job"), string(registry.ChildRecord{LifeID: id, Holder: "m1", HolderRev: e, Incarnation: 1, Time: at, Child: child}.Marshal()))
	// Wanted, no member runs its kind.
	mustPut(t, cli, keys.Life("orphan"), `{"kind":"counter"}`)
	// Wanted, of a kind a live member runs.
	mustPut(t, cli, keys.Life("batch"), `{"kind":"batch"}`)
	mustPut(t, cli, keys.Member("m2"), string(registry.MemberRecord{ID: "m2", Kinds: []string{"age", "batch"}}.Marshal()))
	// A state record of an earlier holder: no child status.
	sid := mustPut(t, cli, keys.Life("stale"), `{"kind":"batch"}`)
	rec, _ = registry.StateRecord{LifeID: sid, Holder: "gone", HolderRev: 1, Incarnation: 1, Time: at}.Marshal()
	mustPut(t, cli, keys.State("stale"), string(rec))
	mustPut(t, cli, keys.Child("stale"), string(registry.ChildRecord{LifeID: sid, Holder: "gone", HolderRev: 1, Incarnation: 1, Time: at, Child: child}.Marshal()))
	// A running life whose child record does not parse: the status says so.
	bid := mustPut(t, cli, keys.Life("broken"), `{"kind":"batch"}`)
	be := mustPut(t, cli, keys.Election("broken")+"/bbbb", "m2")
	mustPut(t, cli, keys.Age("broken"), string(registry.AgeRecord{LifeID: bid, AgeMS: 1000, Incarnation: 1, Holder: "m2", HolderRev: be, Time: at}.Marshal()))
	mustPut(t, cli, keys.Child("broken"), "garbage")
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
				"broken": {"batch", registry.StateRunning, `child record at /immortals/children/broken does not parse: registry: corrupt record: invalid character 'g' looking for beginning of value`, false},
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
	got, gotChild, err := registry.GetState(ctx, cli, keys, "job")
	if err != nil || string(got.Data) != "41" || got.HolderRev != e || gotChild == nil || gotChild.Child != child {
		t.Fatalf("GetState(job) = %+v, %+v, %v", got, gotChild, err)
	}
	for name, want := range map[string]error{"plain": registry.ErrNoState, "nobody": registry.ErrNoLife} {
		if _, _, err := registry.GetState(ctx, cli, keys, name); !errors.Is(err, want) {
			t.Errorf("GetState(%s) = %v, want %v", name, err, want)
		}
	}
	mustDelete(t, cli, keys.Life("stale"))
	mustPut(t, cli, keys.Life("stale"), `{"kind":"batch"}`)
	if _, _, err := registry.GetState(ctx, cli, keys, "stale"); !errors.Is(err, registry.ErrNoState) {
		t.Errorf("GetState of a reborn life with the old life's record = %v, want ErrNoState", err)
	}
	mustPut(t, cli, keys.State("plain"), "garbage")
	if _, _, err := registry.GetState(ctx, cli, keys, "plain"); !errors.Is(err, registry.ErrCorrupt) {
		t.Errorf("GetState of a corrupt record = %v, want ErrCorrupt", err)
	}
}

// A status read (ls, ls -w's read and watch, get-age) never reads a state
// record: with 200 command lives of 64 KiB of state each (about 17 MB
// stored), what etcd sends for ListStatus, WatchStatus's read and a
// GetStatus is at most 2 KiB per life and read, the watch after it gets
// about as much per checkpoint; reading
// states/ itself, through the same counting proxy, moves it all.
func TestStatusReadsNoState(t *testing.T) {
	srv := etcdtest.MustStart(t)
	setup := etcdtest.MustClient(t, srv.Endpoint())
	proxy := etcdtest.MustProxy(t, srv.Endpoint())
	cli := etcdtest.MustClient(t, proxy.Addr())
	keys := mustKeys(t, "/immortals/")
	ctx := context.Background()
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	const lives, stateBytes = 200, 64 << 10
	state := bytes.Repeat([]byte{0xa5}, stateBytes)
	child := workload.ChildStatus{State: workload.ChildRunning, Restarts: 1}
	mustPut(t, setup, keys.Member("m1"), string(registry.MemberRecord{ID: "m1", Kinds: []string{"age", "counter"}}.Marshal()))
	for i := range lives {
		name := fmt.Sprintf("job%03d", i)
		id := mustPut(t, setup, keys.Life(name), `{"kind":"counter"}`)
		e := mustPut(t, setup, keys.Election(name)+"/aaaa", "m1")
		mustPut(t, setup, keys.Age(name), string(registry.AgeRecord{LifeID: id, AgeMS: 1000, Incarnation: 1, Holder: "m1", HolderRev: e, Time: at}.Marshal()))
		rec, err := registry.StateRecord{LifeID: id, Holder: "m1", HolderRev: e, Incarnation: 1, Time: at, Data: state}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		mustPut(t, setup, keys.State(name), string(rec))
		mustPut(t, setup, keys.Child(name), string(registry.ChildRecord{LifeID: id, Holder: "m1", HolderRev: e, Incarnation: 1, Time: at, Child: child}.Marshal()))
	}

	before := proxy.Down()
	all, err := registry.ListStatus(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	w, err := registry.WatchStatus(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	one, err := registry.GetStatus(ctx, cli, keys, "job007")
	if err != nil {
		t.Fatal(err)
	}
	read := proxy.Down() - before
	if len(all) != lives || len(w.List()) != lives {
		t.Fatalf("ListStatus: %d lives, the watch %d; want %d", len(all), len(w.List()), lives)
	}
	for _, st := range append(all, one) {
		if st.State != registry.StateRunning || st.Child == nil || *st.Child != child {
			t.Fatalf("%s: state %q child %+v error %q; want running with %+v", st.Name, st.State, st.Child, st.Error, child)
		}
	}
	// Two reads of every life's small records and one of a life's: at
	// most 2 KiB per life and read (about 300 bytes here), a 32th of a
	// state.
	if limit := int64(3 * lives * 2 << 10); read > limit {
		t.Errorf("ListStatus, WatchStatus and GetStatus read %d bytes from etcd for %d lives; want at most %d", read, lives, limit)
	}
	t.Logf("three status reads of %d command lives: %d bytes from etcd (%d per life)", lives, read, read/lives)

	// The watch after the read: a holder's checkpoints (state and child
	// record in one Txn) reach it as child records alone.
	w.List()
	st0 := all[0]
	const e = 1 // the watch does not judge the fencing
	before = proxy.Down()
	const writes = 20
	var last int64
	for i := range writes {
		rec, err := registry.StateRecord{LifeID: st0.LifeID, Holder: "m1", HolderRev: e, Incarnation: 2, Time: at, Data: bytes.Repeat([]byte{byte(i)}, stateBytes)}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		c := registry.ChildRecord{LifeID: st0.LifeID, Holder: "m1", HolderRev: e, Incarnation: 2, Time: at, Child: workload.ChildStatus{State: workload.ChildRunning, Restarts: i}}
		resp, err := setup.Txn(ctx).Then(clientv3.OpPut(keys.State(st0.Name), string(rec)), clientv3.OpPut(keys.Child(st0.Name), string(c.Marshal()))).Commit()
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	for w.Rev() < last {
		nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := w.Next(nctx)
		cancel()
		if err != nil {
			t.Fatalf("the watch up to revision %d: %v", last, err)
		}
	}
	if got := proxy.Down() - before; got > writes*2<<10 {
		t.Errorf("the status watch received %d bytes for %d checkpoints of %d KiB: it receives the states", got, writes, stateBytes>>10)
	} else {
		t.Logf("the status watch received %d bytes for %d checkpoints of %d KiB", got, writes, stateBytes>>10)
	}

	before = proxy.Down()
	if _, _, err := registry.RangeAll(ctx, cli, keys.States(), 0); err != nil {
		t.Fatal(err)
	}
	if got := proxy.Down() - before; got < lives*stateBytes {
		t.Fatalf("reading states/ moved %d bytes through the proxy; want at least %d: the proxy does not count what it moves", got, lives*stateBytes)
	}
}
