package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/embedetcd"
	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
)

// Keys a member relies on, changed by someone else, are repaired within a
// few intervals (or, where they cannot be, the session is given up), and a
// member that cannot checkpoint says so and, past a TTL, stops its lives.

// adamOnOne runs one member, m1, with Adam.
func adamOnOne(t *testing.T) (*member, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.MustStart(t)
	m := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	put(t, obs, testKeys.Life("Adam"), "")
	waitFor(t, 10*time.Second, "Adam running", func() bool { return m.holds("Adam") })
	return m, obs
}

// ownBeat reads the member's heartbeat; ok is false when there is none.
func ownBeat(tb testing.TB, m *member, obs *clientv3.Client) (registry.Heartbeat, bool) {
	tb.Helper()
	m.sup.mu.Lock()
	gen := m.sup.gen
	m.sup.mu.Unlock()
	if gen == nil {
		return registry.Heartbeat{}, false
	}
	resp, err := obs.Get(context.Background(), testKeys.Heartbeat(int64(gen.sess.Lease())))
	if err != nil || len(resp.Kvs) == 0 {
		return registry.Heartbeat{}, false
	}
	b, err := registry.ParseHeartbeat(resp.Kvs[0].Value)
	return b, err == nil
}

// memberLease is the lease of members/<id>, 0 when there is none.
func memberLease(tb testing.TB, obs *clientv3.Client, id string) int64 {
	tb.Helper()
	resp, err := obs.Get(context.Background(), testKeys.Member(id))
	if err != nil {
		tb.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].Lease
}

func TestDeletedMemberRecordIsWrittenAgain(t *testing.T) {
	m, obs := adamOnOne(t)
	lease := memberLease(t, obs, "m1")

	del(t, obs, testKeys.Member("m1"))
	took := waitFor(t, 10*testInterval+2*time.Second, "members/m1 written again", func() bool {
		return memberLease(t, obs, "m1") == lease
	})
	t.Logf("members/m1 written again %s after the delete", took.Round(time.Millisecond))

	// The heartbeats carry Adam on: his age keeps moving, on the same session.
	before := status(t, obs, "Adam").AgeMS
	waitFor(t, 10*testInterval+2*time.Second, "Adam's age checkpointed again", func() bool {
		return status(t, obs, "Adam").AgeMS > before+2*testInterval.Milliseconds()
	})
	if n := readCounter(m.sup.m.SessionLosses); n != 0 {
		t.Errorf("%v sessions lost, want 0: a deleted member record is repaired", n)
	}
	if !m.holds("Adam") || !m.sup.Ready() {
		t.Errorf("holds Adam %v, ready %v; want both", m.holds("Adam"), m.sup.Ready())
	}
}

func TestForeignHeartbeatIsReplaced(t *testing.T) {
	m, obs := adamOnOne(t)
	waitFor(t, 10*time.Second, "a heartbeat", func() bool { _, ok := ownBeat(t, m, obs); return ok })
	m.sup.mu.Lock()
	key := testKeys.Heartbeat(int64(m.sup.gen.sess.Lease()))
	m.sup.mu.Unlock()

	// A forged heartbeat far in the future would make Adam look a year older,
	// and, taken for the member's own, stop its heartbeats for good.
	year := int64(365 * 24 * time.Hour / time.Millisecond)
	put(t, obs, key, string(registry.Heartbeat{Member: "m1", ClockMS: year, Time: time.Now()}.Marshal()))
	waitFor(t, 10*testInterval+2*time.Second, "the member's own heartbeat back", func() bool {
		b, ok := ownBeat(t, m, obs)
		return ok && b.ClockMS < year
	})
	// And a deleted one comes back.
	del(t, obs, key)
	waitFor(t, 10*testInterval+2*time.Second, "the heartbeat written again", func() bool { _, ok := ownBeat(t, m, obs); return ok })
	if age := status(t, obs, "Adam").AgeMS; age > time.Minute.Milliseconds() {
		t.Errorf("Adam's age is %d ms after the repair, want the real one (seconds)", age)
	}
	if n := readCounter(m.sup.m.SessionLosses); n != 0 {
		t.Errorf("%v sessions lost, want 0", n)
	}
}

// TestMemberRecordTakenGivesSessionUp: when members/<id> is deleted and
// another session registers the same id before the member repairs it, the
// member cannot go on under that id: it stops its lives and waits for the
// id to be free.
func TestMemberRecordTakenGivesSessionUp(t *testing.T) {
	m, obs := adamOnOne(t)

	other, err := obs.Grant(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.Put(context.Background(), testKeys.Member("m1"), `{"id":"m1"}`, clientv3.WithLease(other.ID)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*testInterval+2*time.Second, "m1 giving Adam up", func() bool { return !m.holds("Adam") })
	if n := readCounter(m.sup.m.SessionLosses); n != 1 {
		t.Errorf("%v sessions lost, want 1", n)
	}
	if m.sup.Ready() {
		t.Error("ready while another session holds its id")
	}
	// The id frees: the member registers again and runs Adam.
	if _, err := obs.Revoke(context.Background(), other.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*testTTL, "Adam running on m1 again", func() bool { return m.holds("Adam") })
}

// TestNoCheckpointGivesLivesUp makes every write fail while the lease still
// renews (etcd's NOSPACE alarm refuses puts and Txns, not keep-alives): the
// member must turn unready, count and log the failures, and stop its lives
// once a TTL has gone by without a checkpoint; and run them again after.
func TestNoCheckpointGivesLivesUp(t *testing.T) {
	m, obs := adamOnOne(t)

	st, err := obs.Status(context.Background(), obs.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	alarm := func(action pb.AlarmRequest_AlarmAction) {
		t.Helper()
		_, err := pb.NewMaintenanceClient(obs.ActiveConnection()).Alarm(context.Background(),
			&pb.AlarmRequest{Action: action, MemberID: st.Header.MemberId, Alarm: pb.AlarmType_NOSPACE})
		if err != nil {
			t.Fatalf("alarm %v: %v", action, err)
		}
	}
	errs0 := readCounter(m.sup.m.HeartbeatErrors)
	alarm(pb.AlarmRequest_ACTIVATE)
	defer alarm(pb.AlarmRequest_DEACTIVATE)
	waitFor(t, 10*testInterval+2*time.Second, "m1 unready", func() bool { return !m.sup.Ready() })
	if readCounter(m.sup.m.HeartbeatErrors) <= errs0 || readGauge(m.sup.m.HeartbeatFailing) != 1 {
		t.Errorf("heartbeat errors %v (before %v), failing %v: want more errors and failing 1",
			readCounter(m.sup.m.HeartbeatErrors), errs0, readGauge(m.sup.m.HeartbeatFailing))
	}
	if !m.holds("Adam") {
		t.Error("Adam stopped at once; want him running until a TTL passes without a checkpoint")
	}
	start := time.Now()
	waitFor(t, testTTL+5*time.Second, "Adam given up", func() bool { return !m.holds("Adam") })
	t.Logf("Adam given up %s after the writes began to fail (TTL %s)", time.Since(start).Round(time.Millisecond), testTTL)
	if n := readCounter(m.sup.m.SessionLosses); n < 1 {
		t.Errorf("%v sessions lost, want at least 1", n)
	}

	alarm(pb.AlarmRequest_DEACTIVATE)
	waitFor(t, 3*testTTL+5*time.Second, "Adam running again", func() bool { return m.holds("Adam") && m.sup.Ready() })
}

// TestEtcdRestoredFromOlderDataGivesSessionUp puts an older copy of etcd's
// data back under a running member (a restore from a backup): the member's
// lease is in it, so keep-alives go on, but its heartbeat and revisions went
// back. The member must notice at its next heartbeat, give the session up,
// and run its life again on a new one.
func TestEtcdRestoredFromOlderDataGivesSessionUp(t *testing.T) {
	dir := t.TempDir()
	cfg := embedetcd.Config{Dir: filepath.Join(dir, "data"), ClientURL: "http://" + etcdtest.FreeAddr(t), PeerURL: "http://" + etcdtest.FreeAddr(t)}
	srv, err := embedetcd.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	// A TTL that outlasts a restart of etcd, so the backup holds the
	// member's session.
	const ttl = 15 * time.Second
	m := startMemberWith(t, srv.Endpoint(), "m1", func(c *Config) { c.Lease.TTL = ttl })
	obs := etcdtest.MustClient(t, srv.Endpoint())
	put(t, obs, testKeys.Life("Adam"), "")
	waitFor(t, 10*time.Second, "Adam running", func() bool { return m.holds("Adam") })
	time.Sleep(3 * testInterval)

	// The backup: a copy of the data of the stopped server.
	srv.Close()
	if err := os.CopyFS(filepath.Join(dir, "backup"), os.DirFS(cfg.Dir)); err != nil {
		t.Fatal(err)
	}
	if srv, err = embedetcd.Start(cfg); err != nil {
		t.Fatal(err)
	}
	beats := readCounter(m.sup.m.Heartbeats)
	waitFor(t, ttl, "heartbeats going on after the restart", func() bool {
		return readCounter(m.sup.m.Heartbeats) > beats+5 && m.sup.Ready()
	})
	if n := readCounter(m.sup.m.SessionLosses); n != 0 {
		t.Fatalf("%v sessions lost before the restore, want 0", n)
	}

	// The restore: the older data, on the same addresses.
	srv.Close()
	if err := os.RemoveAll(cfg.Dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "backup"), cfg.Dir); err != nil {
		t.Fatal(err)
	}
	if srv, err = embedetcd.Start(cfg); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, ttl, "the session given up", func() bool { return readCounter(m.sup.m.SessionLosses) >= 1 })
	t.Logf("session given up %s after etcd came back with older data (TTL %s)", took.Round(time.Millisecond), ttl)
	waitFor(t, 2*ttl, "Adam running on a new session", func() bool { return m.holds("Adam") && m.sup.Ready() })
}
