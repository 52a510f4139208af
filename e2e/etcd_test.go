//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestEtcdCluster checks the harness itself: three etcd members come up as
// one cluster from immortald-etcd:dev, the test reaches them with its client
// and with etcdctl, the cluster keeps serving with one member killed, and the
// member rejoins with its data.
func TestEtcdCluster(t *testing.T) {
	start := time.Now()
	c := newCluster(t, Options{})
	cli := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if _, err := cli.Put(ctx, "/e2e/a", "1"); err != nil {
		t.Fatal(err)
	}
	res, err := c.Etcdctl(ctx, "get", "/e2e/a", "--print-value-only")
	must(t, err)
	if got := strings.TrimSpace(res.Stdout); got != "1" {
		t.Fatalf("etcdctl get = %q, want 1", got)
	}
	_, err = c.Etcdctl(ctx, "put", "/e2e/b", "")
	must(t, err)
	resp, err := cli.Get(ctx, "/e2e/b")
	must(t, err)
	if len(resp.Kvs) != 1 || len(resp.Kvs[0].Value) != 0 {
		t.Fatalf("get /e2e/b = %v, want one empty value", resp.Kvs)
	}
	res, err = c.Etcdctl(ctx, "member", "list")
	must(t, err)
	if n := len(strings.Split(strings.TrimSpace(res.Stdout), "\n")); n != 3 {
		t.Fatalf("member list has %d members, want 3:\n%s", n, res.Stdout)
	}

	victim := c.EtcdMembers()[0]
	must(t, c.EtcdKill(ctx, victim))
	// A proposal in flight when the leader dies times out on the server
	// ("request timed out") and the client does not retry writes: retry.
	killed := time.Now()
	must(t, poll(30*time.Second, 100*time.Millisecond, "a write with "+victim+" killed", func() (bool, string, error) {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		defer pcancel()
		_, err := cli.Put(pctx, "/e2e/c", "2")
		return err == nil, fmt.Sprint(err), nil
	}))
	writeAfterKill := time.Since(killed)
	must(t, c.EtcdStart(ctx, victim))
	must(t, poll(30*time.Second, 200*time.Millisecond, victim+" to serve again", func() (bool, string, error) {
		sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
		defer scancel()
		st, err := cli.Status(sctx, c.EtcdEndpoint(victim))
		if err != nil {
			return false, err.Error(), nil
		}
		// Serializable read on the restarted member: it caught up with /e2e/c.
		g, err := cli.Get(sctx, "/e2e/c")
		if err != nil {
			return false, err.Error(), nil
		}
		return st.Leader != 0 && len(g.Kvs) == 1, "", nil
	}))
	report(t, "etcd-cluster", "killed", victim, "write_after_kill_ms", ms(writeAfterKill), "total_ms", ms(time.Since(start)))
}
