package registry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
)

// waitBound is a generous bound on anything that takes one or two etcd round
// trips (plus Watch's first retry delay of 100ms) on a loaded machine.
const waitBound = 20 * time.Second

// event is one Handler call, as recorded.
type event struct {
	kind  string // "put" or "delete"
	name  string
	id    int64 // put: Life.ID
	rev   int64 // put: Life.ModRevision; delete: the deletion's revision
	valid bool  // put: Life.Valid()
}

// recorder is a Handler that keeps every call and the view a consumer that
// reconciles against Sync would have.
type recorder struct {
	// onSync, when set, runs inside Sync (on Watch's goroutine) after the
	// view was updated; n counts Sync calls from 1.
	onSync func(n int, rev int64, lives []registry.Life)

	mu     sync.Mutex
	syncs  []int64 // revision of every Sync
	events []event // Put and Delete calls since the last Sync
	view   map[string]registry.Life
}

var _ registry.Handler = (*recorder)(nil)

func (r *recorder) Sync(rev int64, lives []registry.Life) {
	r.mu.Lock()
	r.syncs = append(r.syncs, rev)
	r.events = nil
	r.view = make(map[string]registry.Life, len(lives))
	for _, l := range lives {
		r.view[l.Name] = l
	}
	n := len(r.syncs)
	r.mu.Unlock()
	if r.onSync != nil {
		r.onSync(n, rev, lives)
	}
}

func (r *recorder) Put(l registry.Life) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{kind: "put", name: l.Name, id: l.ID, rev: l.ModRevision, valid: l.Valid()})
	r.view[l.Name] = l
}

func (r *recorder) Delete(name string, rev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{kind: "delete", name: name, rev: rev})
	delete(r.view, name)
}

// names returns the sorted names of the view.
func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.view))
	for n := range r.view {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// waitUntil polls cond under the recorder's lock until it holds or the bound
// passes.
func (r *recorder) waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitBound)
	for {
		r.mu.Lock()
		ok := cond()
		syncs, events, view := slices.Clone(r.syncs), slices.Clone(r.events), len(r.view)
		r.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; syncs at %v, events %+v, %d lives in view", what, syncs, events, view)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startWatch runs registry.Watch until the test ends, and checks that it
// then returns context.Canceled.
func startWatch(t *testing.T, cli *clientv3.Client, keys registry.Keys, h registry.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- registry.Watch(ctx, cli, keys, h, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v after its context was cancelled, want context.Canceled", err)
			}
		case <-time.After(waitBound):
			t.Errorf("Watch did not return within %s of its context's end", waitBound)
		}
	})
}

func TestWatchDeliversPutsAndDeletes(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t, "/immortals/")
	ctx := context.Background()

	adam := mustPut(t, cli, keys.Life("Adam"), `{"labels":{"team":"a"}}`)
	mustPut(t, cli, keys.Age("Adam"), "not a request")
	mustPut(t, cli, "/other/lives/Stranger", "")

	rec := &recorder{}
	startWatch(t, cli, keys, rec)
	rec.waitUntil(t, "the first Sync", func() bool { return len(rec.syncs) == 1 })

	rec.mu.Lock()
	if rec.syncs[0] < adam {
		t.Errorf("first Sync at revision %d, before the request's revision %d", rec.syncs[0], adam)
	}
	if got := len(rec.view); got != 1 {
		t.Errorf("first Sync delivered %d lives, want only Adam: %v", got, rec.view)
	}
	if l := rec.view["Adam"]; l.ID != adam || !l.Valid() || l.Options.Labels["team"] != "a" {
		t.Errorf("first Sync delivered Adam as %+v, want id %d, valid, label team=a", l, adam)
	}
	rec.mu.Unlock()

	var want []event
	eve := mustPut(t, cli, keys.Life("Eve"), "")
	want = append(want, event{kind: "put", name: "Eve", id: eve, rev: eve, valid: true})
	bad := mustPut(t, cli, keys.Life("bad name"), "")
	want = append(want, event{kind: "put", name: "bad name", id: bad, rev: bad, valid: false})
	mustPut(t, cli, keys.Age("Eve"), "checkpoints are not requests")
	changed := mustPut(t, cli, keys.Life("Adam"), "")
	want = append(want, event{kind: "put", name: "Adam", id: adam, rev: changed, valid: true})
	del := mustDelete(t, cli, keys.Life("Adam"))
	want = append(want, event{kind: "delete", name: "Adam", rev: del})
	again := mustPut(t, cli, keys.Life("Adam"), "[]")
	want = append(want, event{kind: "put", name: "Adam", id: again, rev: again, valid: false})
	del = mustDelete(t, cli, keys.Life("Eve"))
	want = append(want, event{kind: "delete", name: "Eve", rev: del})
	if _, err := cli.Put(ctx, "/other/lives/Stranger2", ""); err != nil {
		t.Fatal(err)
	}

	rec.waitUntil(t, "every change", func() bool { return len(rec.events) >= len(want) })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.syncs) != 1 {
		t.Errorf("Watch listed %d times, want once: nothing broke the watch", len(rec.syncs))
	}
	if !slices.Equal(rec.events, want) {
		t.Errorf("events:\n got %+v\nwant %+v", rec.events, want)
	}
}

// TestWatchRelistsAfterCompaction makes the watch start at a revision that is
// already compacted: the changes between the list and the watch are lost to
// the watch, and only a second list can deliver them.
func TestWatchRelistsAfterCompaction(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t, "/immortals/")

	mustPut(t, cli, keys.Life("A"), "")

	var compactedAt int64
	rec := &recorder{}
	rec.onSync = func(n int, rev int64, lives []registry.Life) {
		if n != 1 {
			return
		}
		// Still inside the first Sync: Watch will watch from rev+1 next.
		ctx, cancel := context.WithTimeout(context.Background(), waitBound)
		defer cancel()
		for _, op := range []clientv3.Op{
			clientv3.OpPut(keys.Life("B"), ""),
			clientv3.OpDelete(keys.Life("A")),
			clientv3.OpPut(keys.Life("C"), ""),
		} {
			if _, err := cli.Do(ctx, op); err != nil {
				t.Errorf("change inside Sync: %v", err)
				return
			}
		}
		resp, err := cli.Get(ctx, "any")
		if err != nil {
			t.Errorf("get revision: %v", err)
			return
		}
		cur := resp.Header.Revision
		if cur <= rev+1 {
			t.Errorf("revision %d after three changes is not past the watch start %d", cur, rev+1)
			return
		}
		if _, err := cli.Compact(ctx, cur, clientv3.WithCompactPhysical()); err != nil {
			t.Errorf("compact at %d: %v", cur, err)
			return
		}
		rec.mu.Lock()
		compactedAt = cur
		rec.mu.Unlock()
	}
	startWatch(t, cli, keys, rec)

	rec.waitUntil(t, "a second Sync after the compaction", func() bool { return len(rec.syncs) >= 2 })
	if t.Failed() {
		return
	}

	_, inEtcd, err := registry.List(context.Background(), cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	var etcdNames []string
	for _, l := range inEtcd {
		etcdNames = append(etcdNames, l.Name)
	}
	if want := []string{"B", "C"}; !slices.Equal(etcdNames, want) {
		t.Fatalf("etcd holds %v, want %v", etcdNames, want)
	}
	if got := rec.names(); !slices.Equal(got, etcdNames) {
		t.Fatalf("handler's view is %v, etcd holds %v", got, etcdNames)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.syncs[1] < compactedAt {
		t.Errorf("second Sync at revision %d, before the compaction at %d", rec.syncs[1], compactedAt)
	}
	for _, l := range inEtcd {
		if got := rec.view[l.Name]; got.ID != l.ID || got.ModRevision != l.ModRevision {
			t.Errorf("handler has %s as id %d mod %d, etcd as id %d mod %d", l.Name, got.ID, got.ModRevision, l.ID, l.ModRevision)
		}
	}
}

// TestWatchEndsWithContextWhenEtcdIsUnreachable checks that a Watch stuck
// listing an etcd it cannot reach still returns when its context ends.
func TestWatchEndsWithContextWhenEtcdIsUnreachable(t *testing.T) {
	cli := etcdtest.MustClient(t, "127.0.0.1:1")
	rec := &recorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	keys := mustKeys(t, "/immortals/")
	errc := make(chan error, 1)
	go func() { errc <- registry.Watch(ctx, cli, keys, rec, slog.New(slog.DiscardHandler)) }()
	select {
	case err := <-errc:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Watch = %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(waitBound):
		t.Fatalf("Watch did not return within %s of its context's end", waitBound)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.syncs) != 0 {
		t.Fatalf("Watch called Sync %d times without reaching etcd", len(rec.syncs))
	}
}

// TestListReadsEveryPage puts more lives than one list page holds.
func TestListReadsEveryPage(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t, "/immortals/")
	ctx := context.Background()

	const n = 5000*2 + 17 // three pages
	var want []string
	var ops []clientv3.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("put lives: %v", err)
		}
		ops = ops[:0]
	}
	for i := range n {
		name := fmt.Sprintf("life-%05d", i)
		want = append(want, name)
		ops = append(ops, clientv3.OpPut(keys.Life(name), ""))
		if len(ops) == 128 {
			flush()
		}
	}
	flush()
	mustPut(t, cli, keys.Age("life-00000"), "x") // another section: must not count
	mustPut(t, cli, keys.Prefix()+"livesX", "")  // shares the "lives" stem, not the section
	mustPut(t, cli, keys.Prefix()+"lives0", "")  // the first key after the section's range

	rev, lives, err := registry.List(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, 0, len(lives))
	for _, l := range lives {
		got = append(got, l.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List returned %d lives (first %q, last %q), want %d", len(got), first(got), last(got), len(want))
	}
	if cur := mustPut(t, cli, "/x", ""); rev != cur-1 {
		t.Fatalf("List read at revision %d, want the revision before the next write (%d)", rev, cur-1)
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// mustPut writes key and returns the revision of the write.
func mustPut(tb testing.TB, cli *clientv3.Client, key, value string, opts ...clientv3.OpOption) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	resp, err := cli.Put(ctx, key, value, opts...)
	if err != nil {
		tb.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

// mustDelete deletes key, which must exist, and returns the revision.
func mustDelete(tb testing.TB, cli *clientv3.Client, key string) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	resp, err := cli.Delete(ctx, key)
	if err != nil {
		tb.Fatalf("delete %s: %v", key, err)
	}
	if resp.Deleted != 1 {
		tb.Fatalf("delete %s: deleted %d keys, want 1", key, resp.Deleted)
	}
	return resp.Header.Revision
}
