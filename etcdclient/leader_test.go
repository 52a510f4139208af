package etcdclient_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/internal/etcdtest"
)

// etcd's request timeout with its default settings (5 s + 2 election
// timeouts): how long a call that reached a member without a leader waits.
const requestTimeout = 7 * time.Second

func mustNew(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := etcdclient.New(etcdclient.Config{Endpoints: endpoints})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// TestNoLeaderIsRefusedAtOnce: every kind of call to a member without a
// leader, writes included, is refused with "no leader" at once instead of
// waiting for etcd's request timeout.
func TestNoLeaderIsRefusedAtOnce(t *testing.T) {
	cli := mustNew(t, etcdtest.MustLeaderless(t))
	// Reads and grants are sent again by clientv3 itself, to the same member
	// here, until its budget of retries is spent (about 3 s); the rest fail
	// at the first answer. Either way, well before etcd's request timeout.
	calls := []struct {
		name  string
		bound time.Duration
		call  func(context.Context) error
	}{
		{"put", 2 * time.Second, func(ctx context.Context) error { _, err := cli.Put(ctx, "k", "v"); return err }},
		{"txn", 2 * time.Second, func(ctx context.Context) error {
			_, err := cli.Txn(ctx).Then(clientv3.OpPut("k", "v")).Commit()
			return err
		}},
		{"watch", 2 * time.Second, func(ctx context.Context) error {
			for wr := range cli.Watch(ctx, "k") {
				if err := wr.Err(); err != nil {
					return err
				}
			}
			return errors.New("watch channel closed without an error")
		}},
		{"get", requestTimeout - time.Second, func(ctx context.Context) error { _, err := cli.Get(ctx, "k"); return err }},
		{"grant", requestTimeout - time.Second, func(ctx context.Context) error { _, err := cli.Grant(ctx, 5); return err }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*requestTimeout)
			defer cancel()
			start := time.Now()
			err := c.call(ctx)
			took := time.Since(start)
			if !etcdclient.IsNoLeader(err) {
				t.Fatalf("err = %v after %v, want etcd's no leader", err, took.Round(time.Millisecond))
			}
			if took >= c.bound {
				t.Errorf("refused after %v, want under %v (etcd's request timeout is %v)", took.Round(time.Millisecond), c.bound, requestTimeout)
			}
		})
	}
}

// TestNoLeaderMovesToTheNextEndpoint: a call refused for want of a leader is
// sent again to the next endpoint, writes too (they never reached the
// handler). The member without a leader and the healthy one are of two
// clusters here, since one process cannot cut a member of its own cluster
// off from its peers (the e2e test TestEtcdMemberIsolated does); what is
// tested is that no call is lost to the member without a leader, where a
// plain client with the same endpoints loses some.
func TestNoLeaderMovesToTheNextEndpoint(t *testing.T) {
	lonely := etcdtest.MustLeaderless(t)
	healthy := etcdtest.MustStart(t)
	eps := []string{lonely, healthy.Endpoint()}

	plain := etcdtest.MustClient(t, eps...)
	if failed := writes(t, plain, 20); failed == 0 {
		t.Fatal("a plain client lost no write to the member without a leader: the test does not reach it")
	}
	if failed := writes(t, mustNew(t, eps...), 20); failed != 0 {
		t.Errorf("%d of 20 writes failed", failed)
	}
}

// writes makes n writes through cli, requiring a leader, once both of its
// connections are up, and returns how many failed.
func writes(t *testing.T, cli *clientv3.Client, n int) int {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		_, err := cli.Put(clientv3.WithRequireLeader(ctx), "warm", "")
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no write went through in 30s: %v", err)
		}
	}
	time.Sleep(time.Second) // the other connection, to a local port, is up by now
	failed := 0
	for i := range n {
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), requestTimeout)
		_, err := cli.Txn(ctx).Then(clientv3.OpPut("k", fmt.Sprint(i))).Commit()
		cancel()
		if err != nil {
			if !etcdclient.IsNoLeader(err) {
				t.Fatalf("write %d: %v", i, err)
			}
			failed++
		}
	}
	return failed
}
