package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
)

const (
	testTTL      = 3 * time.Second
	testInterval = 200 * time.Millisecond
)

var testKeys, _ = registry.NewKeys(registry.DefaultPrefix)

// member is one supervisor in the test process, with its own client.
type member struct {
	t      testing.TB
	id     string
	cli    *clientv3.Client
	sup    *Supervisor
	cancel context.CancelFunc
	done   chan error
}

func testLogger(tb testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("test", tb.Name())
}

// startMember runs a supervisor with id against endpoint.
func startMember(tb testing.TB, endpoint, id string) *member {
	tb.Helper()
	return startMemberWith(tb, endpoint, id)
}

// startMemberWith runs a supervisor with id, its test config changed by
// each of change in turn.
func startMemberWith(tb testing.TB, endpoint, id string, change ...func(*Config)) *member {
	tb.Helper()
	cli := etcdtest.MustClient(tb, endpoint)
	cfg := Config{
		ID:                 id,
		Client:             cli,
		Keys:               testKeys,
		Lease:              lease.Config{TTL: testTTL},
		CheckpointInterval: testInterval,
		Logger:             testLogger(tb).With("member", id),
	}
	for _, f := range change {
		f(&cfg)
	}
	sup, err := New(cfg)
	if err != nil {
		tb.Fatalf("new supervisor: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{t: tb, id: id, cli: cli, sup: sup, cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- sup.Run(ctx) }()
	tb.Cleanup(m.stop)
	waitFor(tb, 10*time.Second, id+" ready", sup.Ready)
	return m
}

// stop shuts the member down gracefully and waits for Run to return.
func (m *member) stop() {
	m.cancel()
	select {
	case err := <-m.done:
		if err != nil {
			m.t.Errorf("member %s: Run: %v", m.id, err)
		}
		m.done <- nil // later calls return at once
	case <-time.After(30 * time.Second):
		m.t.Errorf("member %s did not stop within 30s", m.id)
	}
}

// crash makes the member vanish without revoking anything: its client is
// closed first, so nothing it does afterwards reaches etcd. Cleanup waits
// for its goroutines.
func (m *member) crash() {
	_ = m.cli.Close()
	m.cancel()
}

// firstRecordBy watches ages/<name> from rev and returns the first record
// written by holder.
func firstRecordBy(tb testing.TB, cli *clientv3.Client, name string, rev int64, holder string) registry.AgeRecord {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for wr := range cli.Watch(ctx, testKeys.Age(name), clientv3.WithRev(rev)) {
		for _, ev := range wr.Events {
			if rec, err := registry.ParseAgeRecord(ev.Kv.Value); err == nil && rec.Holder == holder {
				return rec
			}
		}
	}
	tb.Fatalf("no record of %s by %s", name, holder)
	return registry.AgeRecord{}
}

func (m *member) holds(name string) bool {
	_, ok := m.sup.Held()[name]
	return ok
}

// waitFor polls cond until it holds or the bound passes.
func waitFor(tb testing.TB, bound time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > bound {
			tb.Fatalf("timed out after %s waiting for %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func put(tb testing.TB, cli *clientv3.Client, key, val string) int64 {
	tb.Helper()
	resp, err := cli.Put(context.Background(), key, val)
	if err != nil {
		tb.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

func del(tb testing.TB, cli *clientv3.Client, key string) {
	tb.Helper()
	if _, err := cli.Delete(context.Background(), key); err != nil {
		tb.Fatalf("delete %s: %v", key, err)
	}
}

// ageRecord reads ages/<name>, carried forward to its holder's last
// heartbeat; ok is false when there is none.
func ageRecord(tb testing.TB, cli *clientv3.Client, name string) (registry.AgeRecord, bool) {
	tb.Helper()
	rec, ok, err := registry.ReadAge(context.Background(), cli, testKeys, name)
	if err != nil {
		tb.Fatalf("age record of %s: %v", name, err)
	}
	return rec, ok
}

func status(tb testing.TB, cli *clientv3.Client, name string) registry.Status {
	tb.Helper()
	st, err := registry.GetStatus(context.Background(), cli, testKeys, name)
	if err != nil {
		tb.Fatalf("status of %s: %v", name, err)
	}
	return st
}

// holderOf returns whichever of ms holds name, waiting for one to.
func holderOf(tb testing.TB, name string, ms ...*member) *member {
	tb.Helper()
	var h *member
	waitFor(tb, 10*time.Second, "a holder of "+name, func() bool {
		for _, m := range ms {
			if m.holds(name) {
				h = m
				return true
			}
		}
		return false
	})
	return h
}

// countKeys counts keys under prefix.
func countKeys(tb testing.TB, cli *clientv3.Client, prefix string) int64 {
	tb.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		tb.Fatalf("count %s: %v", prefix, err)
	}
	return resp.Count
}

// livesOnTwo runs two members, requests n lives (life-000, ...) and returns
// once they all run and no handoff is going on.
func livesOnTwo(tb testing.TB, n int) (*etcdtest.Server, *member, *member, *clientv3.Client) {
	tb.Helper()
	srv := etcdtest.MustStart(tb)
	m1 := startMember(tb, srv.Endpoint(), "m1")
	m2 := startMember(tb, srv.Endpoint(), "m2")
	obs := etcdtest.MustClient(tb, srv.Endpoint())
	for i := range n {
		put(tb, obs, testKeys.Life(fmt.Sprintf("life-%03d", i)), "")
	}
	waitFor(tb, 30*time.Second, "all lives running", func() bool { return len(m1.sup.Held())+len(m2.sup.Held()) == n })
	settled(tb, m1, m2)
	return srv, m1, m2, obs
}
