package etcdclient_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/internal/etcdtest"
)

// TestHealthLeavesOutAFrozenEndpoint puts a proxy that can freeze (bytes
// taken in and held, nothing closed: a frozen etcd process or a paused
// node, as TCP sees it) in front of each member of a three-member cluster,
// and freezes one once every connection is up:
//
//   - a client without the monitor loses calls to it (each waits out its
//     1 s timeout), which shows that the test reaches the frozen endpoint;
//   - a client with it leaves the endpoint out within the monitor's bound
//     (with slack), and then loses no call, and every one of its watches,
//     each on a stream of its own, gets an event written after the freeze
//     (a stream on the frozen endpoint would get it only after gRPC's
//     keep-alive, 12 s);
//   - thawed, the endpoint is used again.
func TestHealthLeavesOutAFrozenEndpoint(t *testing.T) {
	c := etcdtest.MustStartCluster(t, 3)
	proxies := make([]*etcdtest.Proxy, 3)
	eps := make([]string, 3)
	for i := range proxies {
		proxies[i] = etcdtest.MustProxy(t, c.Endpoint(i))
		eps[i] = proxies[i].Addr()
	}
	const interval = 200 * time.Millisecond
	var (
		mu  sync.Mutex
		out []string
	)
	outNow := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(out) }
	cli, err := etcdclient.New(etcdclient.Config{Endpoints: eps, HealthInterval: interval, OnEndpointsOut: func(o []string) {
		mu.Lock()
		out = slices.Clone(o)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	plain := mustNew(t, eps...)
	direct := etcdtest.MustClient(t, c.Endpoint(1))

	// Every connection up: a few calls go round every endpoint.
	for _, cl := range []*clientv3.Client{cli, plain} {
		if failed := puts(cl, 9, 5*time.Second); failed != 0 {
			t.Fatalf("%d of 9 puts failed before any freeze", failed)
		}
	}
	// Watches, each on a gRPC stream of its own (clientv3 shares a stream
	// between watches of the same metadata): the balancer spreads them.
	const watches = 6
	events := make(chan int, watches)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{}, watches)
	for i := range watches {
		wctx := metadata.AppendToOutgoingContext(ctx, "test-stream", fmt.Sprint(i))
		wch := cli.Watch(clientv3.WithRequireLeader(wctx), "after-freeze", clientv3.WithCreatedNotify())
		go func() {
			for wr := range wch {
				if wr.Created {
					ready <- struct{}{}
					continue
				}
				if len(wr.Events) > 0 {
					events <- i
					return
				}
			}
		}()
	}
	for range watches {
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			t.Fatal("the watches were not created within 10 s")
		}
	}

	proxies[0].Freeze()
	frozeAt := time.Now()
	if failed := puts(plain, 9, time.Second); failed == 0 {
		t.Fatal("a client without the monitor lost no call to the frozen endpoint: the test does not reach it")
	}

	bound := time.Duration(1+2*etcdclient.HealthFailures)*interval + 2*time.Second
	for !slices.Equal(outNow(), []string{eps[0]}) {
		if time.Since(frozeAt) > bound+10*time.Second {
			t.Fatalf("endpoints left out %v %v after the freeze, want [%s]", outNow(), time.Since(frozeAt).Round(time.Millisecond), eps[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The plain client's calls took some time above: the bound is checked
	// against what the monitor reported, not against this loop's exit.
	if took := time.Since(frozeAt); took > bound+10*time.Second {
		t.Errorf("the frozen endpoint left out after %v", took)
	}
	if failed := puts(cli, 12, time.Second); failed != 0 {
		t.Errorf("%d of 12 puts failed with the frozen endpoint left out", failed)
	}
	if _, err := direct.Put(context.Background(), "after-freeze", "x"); err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	deadline := time.After(bound)
	for len(got) < watches {
		select {
		case i := <-events:
			got[i] = true
		case <-deadline:
			t.Fatalf("%d of %d watches got the event within %v of the put", len(got), watches, bound)
		}
	}

	proxies[0].Thaw()
	thawed := time.Now()
	for len(outNow()) != 0 {
		if time.Since(thawed) > 10*time.Second {
			t.Fatalf("endpoints still left out 10 s after the thaw: %v", outNow())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// puts makes n puts through cli, each within timeout, and returns how many
// failed.
func puts(cli *clientv3.Client, n int, timeout time.Duration) int {
	failed := 0
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err := cli.Put(ctx, "k", fmt.Sprint(i))
		cancel()
		if err != nil {
			failed++
		}
	}
	return failed
}

// TestHealthTakesARefusalForAnAnswer: with auth on and a password user,
// etcd 3.7 refuses the monitor's Status probe ("user name is empty": the
// probe sends no token); that is an answer, and no endpoint is left out.
func TestHealthTakesARefusalForAnAnswer(t *testing.T) {
	srv := etcdtest.MustStart(t)
	root := etcdtest.MustClient(t, srv.Endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := root.UserAdd(ctx, "root", password); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.UserAdd(ctx, "immortald", password); return err },
		func() error { _, err := root.RoleAdd(ctx, "immortald"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "immortald", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.UserGrantRole(ctx, "immortald", "immortald"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	// Two names of the one member: the monitor runs with two endpoints.
	_, port, _ := strings.Cut(strings.TrimPrefix(srv.Endpoint(), "http://"), ":")
	eps := []string{"127.0.0.1:" + port, "localhost:" + port}
	var (
		mu  sync.Mutex
		out [][]string
	)
	var logs strings.Builder
	var logMu sync.Mutex
	cli, err := etcdclient.New(etcdclient.Config{Endpoints: eps, User: "immortald", Password: password,
		HealthInterval: 100 * time.Millisecond,
		OnEndpointsOut: func(o []string) { mu.Lock(); out = append(out, o); mu.Unlock() },
		Logger:         slog.New(slog.NewTextHandler(&lockedWriter{mu: &logMu, w: &logs}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, prefix+"k", "v"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // 20 probes of each endpoint
	mu.Lock()
	defer mu.Unlock()
	if len(out) != 0 {
		t.Errorf("the monitor left endpoints out: %v", out)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if logs.Len() != 0 {
		t.Errorf("the monitor logged: %s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
