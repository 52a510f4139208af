package registry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
)

// TestWatchMembers checks that the member set is delivered in full, sorted,
// once per change of the set or of a member's lease: a rewritten record of
// a known member on the same lease is not a change, an expired lease is.
func TestWatchMembers(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t, "/immortals/")
	ctx := context.Background()

	mustPut(t, cli, keys.Member("m1"), "{}")
	mustPut(t, cli, keys.Life("m9"), "") // another section

	var mu sync.Mutex
	var got []string // each delivery, joined by ","
	wctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		errc <- registry.WatchMembers(wctx, cli, keys, func(ms []registry.Member) {
			mu.Lock()
			defer mu.Unlock()
			ids := make([]string, len(ms))
			for i, m := range ms {
				ids[i] = m.ID
				if m.Lease != 0 {
					ids[i] += fmt.Sprintf("@%x", m.Lease)
				}
				if len(m.Kinds) > 0 {
					ids[i] += "+" + strings.Join(m.Kinds, "+")
				}
			}
			got = append(got, strings.Join(ids, ","))
		}, slog.New(slog.DiscardHandler))
	}()
	defer func() {
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("WatchMembers = %v, want context.Canceled", err)
			}
		case <-time.After(waitBound):
			t.Errorf("WatchMembers did not return within %s", waitBound)
		}
	}()
	waitDeliveries := func(n int) {
		t.Helper()
		deadline := time.Now().Add(waitBound)
		for {
			mu.Lock()
			have := slices.Clone(got)
			mu.Unlock()
			if len(have) >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for delivery %d; have %q", n, have)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	waitDeliveries(1)
	mustPut(t, cli, keys.Member("m2"), "{}")
	waitDeliveries(2)
	mustPut(t, cli, keys.Member("m1"), `{"lives":3}`) // not a change of the set
	mustDelete(t, cli, keys.Member("m1"))
	waitDeliveries(3)
	grant, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, cli, keys.Member("m0"), "{}", clientv3.WithLease(grant.ID))
	waitDeliveries(4)
	if _, err := cli.Revoke(ctx, grant.ID); err != nil {
		t.Fatal(err)
	}
	waitDeliveries(5)
	l2 := grantMinute(t, cli)
	mustPut(t, cli, keys.Member("m2"), "{}", clientv3.WithLease(l2))
	waitDeliveries(6)
	// New kinds on the same lease are a change; the same kinds again are not.
	mustPut(t, cli, keys.Member("m2"), `{"id":"m2","kinds":["age","counter"]}`, clientv3.WithLease(l2))
	mustPut(t, cli, keys.Member("m2"), `{"id":"m2","kinds":["age","counter"],"lives":2}`, clientv3.WithLease(l2))
	mustPut(t, cli, keys.Member("m3"), "{}")
	waitDeliveries(8)

	mu.Lock()
	defer mu.Unlock()
	m0 := fmt.Sprintf("m0@%x", grant.ID)
	m2 := fmt.Sprintf("m2@%x", l2)
	want := []string{"m1", "m1,m2", "m2", m0 + ",m2", "m2", m2, m2 + "+age+counter", m2 + "+age+counter,m3"}
	if !slices.Equal(got, want) {
		t.Fatalf("deliveries = %q, want %q", got, want)
	}
}

// grantMinute grants a lease of a minute for a test and revokes it at cleanup.
func grantMinute(t *testing.T, cli *clientv3.Client) clientv3.LeaseID {
	t.Helper()
	g, err := cli.Grant(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = cli.Revoke(context.Background(), g.ID) })
	return g.ID
}
