package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/etcdtest"
)

// After a broken watch (here: marked broken, as a compaction or a lost
// leader would), Next reads the keyspace again and reports what changed
// meanwhile, removals included, at the new read's revision.
func TestStatusWatchRereadsAfterABrokenWatch(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys, _ := NewKeys(DefaultPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, name := range []string{"A", "B"} {
		if _, err := cli.Put(ctx, keys.Life(name), ""); err != nil {
			t.Fatal(err)
		}
	}
	w, err := WatchStatus(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if all := w.List(); len(all) != 2 {
		t.Fatalf("List = %+v, want A and B", all)
	}
	w.broken = errors.New("compacted (test)")
	if _, err := cli.Delete(ctx, keys.Life("A")); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, keys.Life("B"), `{"bogus":1}`); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(ctx, keys.Life("C"), "")
	if err != nil {
		t.Fatal(err)
	}
	changes, err := w.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A " + EventRemoved, "B " + EventInvalid, "C " + EventAdded}
	if len(changes) != len(want) {
		t.Fatalf("Next = %+v, want %v", changes, want)
	}
	for i, c := range changes {
		if c.Status.Name+" "+c.Event != want[i] || c.Rev != resp.Header.Revision {
			t.Errorf("change %d = %s %s at %d, want %s at %d", i, c.Status.Name, c.Event, c.Rev, want[i], resp.Header.Revision)
		}
	}
	// The new watch follows from the new read.
	if _, err := cli.Delete(ctx, keys.Life("C")); err != nil {
		t.Fatal(err)
	}
	for {
		changes, err := w.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) == 1 && changes[0].Status.Name == "C" && changes[0].Event == EventRemoved {
			break
		}
		if len(changes) > 0 {
			t.Fatalf("Next = %+v, want C removed", changes)
		}
	}
}
