package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/supervisor/engine"
)

func TestLifeStartsAndAges(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m := startMember(t, srv.Endpoint(), "m1")
	lifeID := put(t, m.cli, testKeys.Life("Adam"), "")

	waitFor(t, 5*time.Second, "Adam running", func() bool { return m.holds("Adam") })
	waitFor(t, 5*time.Second, "a checkpoint of age >= 1s", func() bool {
		rec, ok := ageRecord(t, m.cli, "Adam")
		return ok && rec.AgeMS >= 1000
	})
	rec, _ := ageRecord(t, m.cli, "Adam")
	if rec.LifeID != lifeID || rec.Holder != "m1" || rec.Incarnation != 1 {
		t.Fatalf("record = %+v, want life id %d, holder m1, incarnation 1", rec, lifeID)
	}
	st := status(t, m.cli, "Adam")
	if st.State != registry.StateRunning || st.Holder != "m1" || st.Age < 1 {
		t.Fatalf("status = %+v, want running on m1 with age >= 1", st)
	}
}

func TestCrashFailoverKeepsAge(t *testing.T) {
	old, peer, obs := adamOnOneOfTwo(t)

	before := put(t, obs, "/test/mark", "")
	ageAtCrash := old.sup.Held()["Adam"]
	crashed := time.Now()
	old.crash()
	waitFor(t, testTTL+3*time.Second, "failover to "+peer.id, func() bool { return peer.holds("Adam") })
	took := time.Since(crashed)
	rec := firstRecordBy(t, obs, "Adam", before, peer.id)
	t.Logf("crash failover: %s after the crash (TTL %s); age at crash %dms, resumed at %dms: lost %dms",
		took.Round(time.Millisecond), testTTL, ageAtCrash, rec.AgeMS, ageAtCrash-rec.AgeMS)

	if took > testTTL+2*time.Second {
		t.Errorf("failover took %s, over TTL + 2s", took)
	}
	if rec.Incarnation != 2 {
		t.Errorf("record after failover = %+v, want incarnation 2", rec)
	}
	// The peer resumes from the last checkpoint: at most one interval (plus
	// slack for the write itself) behind the age at the crash.
	if lost := ageAtCrash - rec.AgeMS; lost > testInterval.Milliseconds()+300 {
		t.Errorf("lost %dms of age, more than one checkpoint interval (%s) + 300ms", lost, testInterval)
	}
}

func TestGracefulHandoff(t *testing.T) {
	old, peer, obs := adamOnOneOfTwo(t)

	// Watch the age record and the heartbeats through the handoff.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	start, _ := obs.Get(wctx, "x")
	view := registry.NewAgeView(testKeys)
	if _, kvs, err := registry.RangeAll(wctx, obs, testKeys.Prefix(), start.Header.Revision); err != nil {
		t.Fatal(err)
	} else if err := view.Load(kvs); err != nil {
		t.Fatal(err)
	}
	wch := obs.Watch(wctx, testKeys.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))

	old.stop() // SIGTERM: the parent context is cancelled before the lease is revoked
	if n := countKeysWithValue(t, obs, testKeys.Elections(), old.id); n != 0 {
		t.Fatalf("%d election keys of %s are left after a graceful stop: revoke must use a fresh context", n, old.id)
	}
	waitFor(t, 2*time.Second, "handoff to "+peer.id, func() bool { return peer.holds("Adam") })

	final, _ := view.Get("Adam")
	var first registry.AgeRecord
	for first.Holder != peer.id {
		select {
		case wr := <-wch:
			for _, ev := range wr.Events {
				changes, err := view.Apply(ev)
				if err != nil {
					t.Fatalf("bad record: %v", err)
				}
				for _, c := range changes {
					if c.Name != "Adam" || c.Deleted {
						continue
					}
					if c.Rec.Holder == old.id {
						final = c.Rec
					} else if first.Holder == "" {
						first = c.Rec
					}
				}
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no record of the new holder")
		}
	}
	gap := first.Time.Sub(final.Time)
	t.Logf("graceful handoff: final checkpoint age %dms at %s, resumed age %dms at %s: %s without running",
		final.AgeMS, final.Time.Format("15:04:05.000"), first.AgeMS, first.Time.Format("15:04:05.000"), gap)
	if first.AgeMS != final.AgeMS {
		t.Errorf("resumed at %dms, want exactly the final checkpoint %dms", first.AgeMS, final.AgeMS)
	}
	if first.Incarnation != final.Incarnation+1 {
		t.Errorf("incarnation %d after %d", first.Incarnation, final.Incarnation)
	}
	if gap >= 100*time.Millisecond {
		t.Errorf("graceful handoff lost %s of age, want under 100ms", gap)
	}
}

func countKeysWithValue(tb testing.TB, cli *clientv3.Client, prefix, value string) int {
	tb.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		if string(kv.Value) == value {
			n++
		}
	}
	return n
}

// A holder whose lease is gone (here: revoked behind its back, as the server
// does when it expires) cannot apply another age write, and stops the life.
func TestStaleHolderCannotWrite(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	put(t, obs, testKeys.Life("Adam"), "")
	waitFor(t, 5*time.Second, "Adam on m1", func() bool { return m1.holds("Adam") })
	rec, _ := ageRecord(t, obs, "Adam")

	own, err := obs.Get(context.Background(), testKeys.Election("Adam")+"/", clientv3.WithPrefix())
	if err != nil || len(own.Kvs) != 1 {
		t.Fatalf("election keys: %v %v", own, err)
	}
	revoked, err := obs.Revoke(context.Background(), clientv3.LeaseID(own.Kvs[0].Lease))
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := obs.Watch(wctx, testKeys.Age("Adam"), clientv3.WithRev(revoked.Header.Revision+1))
	beats := obs.Watch(wctx, testKeys.Heartbeat(own.Kvs[0].Lease), clientv3.WithRev(revoked.Header.Revision+1))

	waitFor(t, testTTL+2*time.Second, "m1 to stop Adam", func() bool { return !m1.holds("Adam") })
	// m1 campaigns again on a new session and takes Adam back; every write
	// applied after the revoke must carry the new election key.
	waitFor(t, 10*time.Second, "Adam back on m1", func() bool { return m1.holds("Adam") })
	deadline := time.After(3 * testInterval)
	for {
		select {
		case wr := <-wch:
			for _, ev := range wr.Events {
				if ev.Type != mvccpb.PUT {
					continue
				}
				r, err := registry.ParseAgeRecord(ev.Kv.Value)
				if err != nil {
					t.Fatal(err)
				}
				if r.HolderRev == rec.HolderRev {
					t.Fatalf("a write of the revoked holder (holder_rev %d) was applied at revision %d", r.HolderRev, ev.Kv.ModRevision)
				}
			}
		case wr := <-beats:
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.PUT {
					t.Fatalf("a heartbeat on the revoked lease was applied at revision %d: %s", ev.Kv.ModRevision, ev.Kv.Value)
				}
			}
		case <-deadline:
			return
		}
	}
}

// A life whose election key is taken away stops alone: the member's other
// lives keep running and keep being checkpointed by its heartbeat.
func TestLostLifeStopsAlone(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	const n = 500
	for i := range n {
		put(t, obs, testKeys.Life(fmt.Sprintf("life-%02d", i)), "")
	}
	waitFor(t, 10*time.Second, "all lives on m1", func() bool { return len(m1.sup.Held()) == n })
	stale := "life-20"
	before, _ := ageRecord(t, obs, "life-07")
	stolen, err := obs.Delete(context.Background(), testKeys.Election(stale)+"/", clientv3.WithPrefix())
	if err != nil || stolen.Deleted != 1 {
		t.Fatalf("delete the election key of %s: %v, %v", stale, stolen, err)
	}
	waitFor(t, 5*time.Second, stale+" stopped or taken anew", func() bool {
		return readCounter(m1.sup.m.Lost.WithLabelValues("fenced")) == 1
	})
	waitFor(t, 5*time.Second, "the other lives checkpointed on", func() bool {
		rec, _ := ageRecord(t, obs, "life-07")
		return rec.AgeMS >= before.AgeMS+2*testInterval.Milliseconds()
	})
	held := m1.sup.Held()
	for i := range n {
		if name := fmt.Sprintf("life-%02d", i); name != stale {
			if _, ok := held[name]; !ok {
				t.Errorf("%s stopped with the stale life", name)
			}
		}
	}
}

func TestDeleteEndsLifeAndReputStartsAtZero(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	m2 := startMember(t, srv.Endpoint(), "m2")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	firstID := put(t, obs, testKeys.Life("Adam"), "")
	h := holderOf(t, "Adam", m1, m2)
	waitFor(t, 5*time.Second, "age >= 1s", func() bool { return h.sup.Held()["Adam"] >= 1000 })

	del(t, obs, testKeys.Life("Adam"))
	waitFor(t, 5*time.Second, "Adam ended everywhere", func() bool {
		return !m1.holds("Adam") && !m2.holds("Adam") &&
			countKeys(t, obs, testKeys.Election("Adam")+"/") == 0 && countKeys(t, obs, testKeys.Age("Adam")) == 0
	})

	secondID := put(t, obs, testKeys.Life("Adam"), "")
	h = holderOf(t, "Adam", m1, m2)
	rec, ok := ageRecord(t, obs, "Adam")
	if !ok || rec.LifeID != secondID || rec.LifeID == firstID {
		t.Fatalf("record %+v, want life id %d", rec, secondID)
	}
	if rec.Incarnation != 1 || rec.AgeMS >= 1000 {
		t.Fatalf("the new life starts at incarnation %d, age %dms; want 1 and under 1s", rec.Incarnation, rec.AgeMS)
	}
}

func TestBadInputIsNeverStarted(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	bad := []struct {
		name, key, value string
	}{
		{name: "white space", key: testKeys.Life("bad name"), value: ""},
		{name: "slash", key: testKeys.Life("a/b"), value: ""},
		{name: "too long", key: testKeys.Life(strings.Repeat("x", 129)), value: ""},
		{name: "control", key: testKeys.Life("bell\a"), value: ""},
		{name: "unknown option", key: testKeys.Life("Opt"), value: `{"nope":1}`},
		{name: "not json", key: testKeys.Life("Junk"), value: "not json"},
	}
	for _, b := range bad {
		put(t, obs, b.key, b.value)
	}
	put(t, obs, testKeys.Life("Good"), `{"labels":{"team":"gods"}}`)
	waitFor(t, 5*time.Second, "Good running", func() bool { return m1.holds("Good") })
	time.Sleep(3 * testInterval) // let a few checkpoints pass

	if held := m1.sup.Held(); len(held) != 1 {
		t.Fatalf("held %v, want only Good", held)
	}
	if n := countKeys(t, obs, testKeys.Elections()); n != 1 {
		t.Fatalf("%d election keys, want 1 (Good's)", n)
	}
	all, err := registry.ListStatus(context.Background(), obs, testKeys)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			name := registry.NameOf(testKeys.Lives(), b.key)
			for _, st := range all {
				if st.Name == name {
					if st.State != registry.StateInvalid || st.Error == "" {
						t.Fatalf("status %+v, want invalid with an error", st)
					}
					return
				}
			}
			t.Fatalf("%q missing from ls", name)
		})
	}
}

// Garbage in ages/<name> is never resumed and never silently overwritten:
// its bytes go to quarantine/<name>, and the life keeps running.
func TestCorruptAgeRecordIsQuarantined(t *testing.T) {
	srv := etcdtest.MustStart(t)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	put(t, obs, testKeys.Life("Eve"), "")
	put(t, obs, testKeys.Age("Eve"), "garbage at rest")

	m1 := startMember(t, srv.Endpoint(), "m1")
	put(t, obs, testKeys.Life("Adam"), "")
	waitFor(t, 5*time.Second, "Eve and Adam running", func() bool { return m1.holds("Eve") && m1.holds("Adam") })
	if got := getValue(t, obs, testKeys.Quarantine("Eve")); got != "garbage at rest" {
		t.Fatalf("quarantine/Eve = %q", got)
	}

	// Garbage written under a running life: the holder sees it on its watch
	// of ages/, keeps the bytes, and keeps its own age.
	waitFor(t, 5*time.Second, "Adam age >= 600ms", func() bool { return m1.sup.Held()["Adam"] >= 600 })
	put(t, obs, testKeys.Age("Adam"), "{not an age")
	waitFor(t, 5*time.Second, "Adam's garbage quarantined", func() bool {
		return getValue(t, obs, testKeys.Quarantine("Adam")) == "{not an age"
	})
	waitFor(t, 5*time.Second, "Adam's record rewritten", func() bool {
		rec, ok, err := registry.ReadAge(context.Background(), obs, testKeys, "Adam")
		return err == nil && ok && rec.AgeMS >= 600
	})
	if !m1.holds("Adam") || !m1.holds("Eve") {
		t.Fatal("a life stopped because of a corrupt record")
	}
	if st := status(t, obs, "Adam"); st.State != registry.StateRunning || !strings.Contains(st.Error, "quarantine") {
		t.Fatalf("status %+v, want running with a note on the quarantine", st)
	}

	// A record deleted under a running life is written again at once.
	del(t, obs, testKeys.Age("Adam"))
	waitFor(t, 5*time.Second, "Adam's deleted record written again", func() bool {
		rec, ok := ageRecord(t, obs, "Adam")
		return ok && rec.Holder == "m1" && rec.AgeMS >= 600
	})
}

func getValue(tb testing.TB, cli *clientv3.Client, key string) string {
	tb.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		tb.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// etcd #11051: a candidate can be told it leads after its session expired.
// Here the waiting member's lease is revoked behind its back; when the
// holder resigns, the waiting member must not run the life on the dead
// lease's candidacy: its check cannot create or keep a key on that lease,
// and every write it makes carries a candidacy of a live session.
func TestCandidacyOfExpiredSessionNeverLeads(t *testing.T) {
	holder, peer, obs := adamOnOneOfTwo(t)
	ctx := context.Background()
	resp, err := obs.Get(ctx, testKeys.Election("Adam")+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var dead *mvccpb.KeyValue
	for _, kv := range resp.Kvs {
		if string(kv.Value) == peer.id {
			dead = kv
		}
	}
	if dead == nil {
		t.Fatalf("no candidacy of %s among %d keys", peer.id, len(resp.Kvs))
	}
	if _, err := obs.Revoke(ctx, clientv3.LeaseID(dead.Lease)); err != nil {
		t.Fatal(err)
	}
	watchFrom := dead.ModRevision
	holder.stop() // resigns: the dead candidacy would have been next
	rec := firstRecordBy(t, obs, "Adam", watchFrom, peer.id)
	if rec.HolderRev == dead.CreateRevision {
		t.Fatalf("%s wrote Adam's age on the candidacy of its revoked lease (revision %d)", peer.id, rec.HolderRev)
	}
	own, err := obs.Get(ctx, testKeys.Election("Adam")+"/", clientv3.WithPrefix(), clientv3.WithRev(0))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, kv := range own.Kvs {
		found = found || (kv.CreateRevision == rec.HolderRev && kv.Lease != dead.Lease)
	}
	if !found {
		t.Fatalf("the record's holder_rev %d is not a live candidacy: %v", rec.HolderRev, own.Kvs)
	}
}

// A member cut off from etcd stops its lives by its safe deadline, before a
// peer can take them, and comes back as a healthy member when reconnected.
func TestCutOffMemberStopsBeforePeerTakesOver(t *testing.T) {
	srv := etcdtest.MustStart(t)
	proxy := etcdtest.MustProxy(t, srv.Endpoint())
	m1 := startMember(t, proxy.Addr(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	put(t, obs, testKeys.Life("Adam"), "")
	waitFor(t, 5*time.Second, "Adam on m1", func() bool { return m1.holds("Adam") })
	m2 := startMember(t, srv.Endpoint(), "m2")

	proxy.Freeze()
	cut := time.Now()
	var stoppedAt time.Duration
	waitFor(t, testTTL+3*time.Second, "failover to m2", func() bool {
		if stoppedAt == 0 && !m1.holds("Adam") {
			stoppedAt = time.Since(cut)
		}
		if m2.holds("Adam") {
			if m1.holds("Adam") {
				t.Fatal("m2 runs Adam while m1 still does")
			}
			return true
		}
		return false
	})
	took := time.Since(cut)
	t.Logf("cut off: m1 stopped Adam after %s, m2 took it after %s", stoppedAt.Round(time.Millisecond), took.Round(time.Millisecond))
	if stoppedAt == 0 || stoppedAt > took {
		t.Fatalf("m1 stopped Adam at %s, after m2 took it at %s", stoppedAt, took)
	}

	proxy.Thaw()
	waitFor(t, 15*time.Second, "m1 ready again", m1.sup.Ready)
	waitFor(t, 5*time.Second, "m1 registered again", func() bool { return getValue(t, obs, testKeys.Member("m1")) != "" })
	if m1.holds("Adam") {
		t.Fatal("m1 runs Adam again while m2 holds it")
	}
}

// Many lives over two members all run, each on exactly one member, and
// the checkpoint load is one heartbeat per member, not a write per life.
func TestManyLivesRunOnceInBatches(t *testing.T) {
	const n = 400
	_, m1, m2, obs := livesOnTwo(t, n)
	h1, h2 := m1.sup.Held(), m2.sup.Held()
	for name := range h1 {
		if _, both := h2[name]; both {
			t.Fatalf("%s runs on both members", name)
		}
	}
	mark, err := obs.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	before := readCounter(m1.sup.m.Heartbeats) + readCounter(m2.sup.m.Heartbeats)
	time.Sleep(5 * testInterval)
	beats := readCounter(m1.sup.m.Heartbeats) + readCounter(m2.sup.m.Heartbeats) - before
	// The checkpoint load does not grow with the lives: one heartbeat per
	// member per interval, and no age record written in the steady state.
	if beats < 2 || beats > 2*6 {
		t.Fatalf("%v heartbeats of 2 members in 5 intervals, want 2 to 12", beats)
	}
	// (Count is taken before the revision filter; the keys are after it.)
	written, err := obs.Get(context.Background(), testKeys.Ages(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithMinModRev(mark.Header.Revision+1))
	if err != nil {
		t.Fatal(err)
	}
	if len(written.Kvs) != 0 {
		t.Fatalf("%d age records written in the steady state, want 0", len(written.Kvs))
	}
	t.Logf("%d lives: m1 holds %d, m2 holds %d; %v heartbeats in 5 intervals", n, len(h1), len(h2), beats)
}

// settled waits until no member has handed a life off for a while.
func settled(tb testing.TB, ms ...*member) {
	tb.Helper()
	handoffs := func() float64 {
		sum := 0.0
		for _, m := range ms {
			sum += readCounter(m.sup.m.Handoffs)
		}
		return sum
	}
	last, since := handoffs(), time.Now()
	waitFor(tb, 30*time.Second, "placement to settle", func() bool {
		if h := handoffs(); h != last {
			last, since = h, time.Now()
		}
		return time.Since(since) > 2*time.Second
	})
}

// A request whose options turn invalid stops the life but keeps its age:
// fixing the options resumes it where it was.
func TestInvalidOptionsStopLifeAndKeepAge(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	lifeID := put(t, obs, testKeys.Life("Adam"), "")
	waitFor(t, 5*time.Second, "Adam age >= 1s", func() bool { return m1.sup.Held()["Adam"] >= 1000 })

	put(t, obs, testKeys.Life("Adam"), `{"nope":1}`)
	waitFor(t, 5*time.Second, "Adam stopped", func() bool {
		return !m1.holds("Adam") && countKeys(t, obs, testKeys.Election("Adam")+"/") == 0
	})
	stopped, ok := ageRecord(t, obs, "Adam")
	if !ok || stopped.AgeMS < 1000 {
		t.Fatalf("age record after the bad options: %+v, %v; want it kept with age >= 1s", stopped, ok)
	}
	if st := status(t, obs, "Adam"); st.State != registry.StateInvalid {
		t.Fatalf("status %+v, want invalid", st)
	}

	put(t, obs, testKeys.Life("Adam"), `{"labels":{"fixed":"yes"}}`)
	waitFor(t, 5*time.Second, "Adam running again", func() bool { return m1.holds("Adam") })
	rec, _ := ageRecord(t, obs, "Adam")
	if rec.LifeID != lifeID || rec.AgeMS < stopped.AgeMS || rec.Incarnation != stopped.Incarnation+1 {
		t.Fatalf("resumed record %+v after %+v: want the same life, no younger, next incarnation", rec, stopped)
	}
}

// writerOnly returns a supervisor that is not running, to call its write
// path directly, and a client of its etcd.
func writerOnly(t *testing.T) (*Supervisor, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	sup, err := New(Config{ID: "m1", Client: cli, Keys: testKeys})
	if err != nil {
		t.Fatal(err)
	}
	return sup, cli
}

// adamOnOneOfTwo runs two members, requests Adam, and returns once Adam is
// at least 1 s old: the member that holds him, the other, and an observer.
func adamOnOneOfTwo(t *testing.T) (holder, peer *member, obs *clientv3.Client) {
	t.Helper()
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	m2 := startMember(t, srv.Endpoint(), "m2")
	obs = etcdtest.MustClient(t, srv.Endpoint())
	put(t, obs, testKeys.Life("Adam"), "")
	holder, peer = holderOf(t, "Adam", m1, m2), m2
	if holder == m2 {
		peer = m1
	}
	waitFor(t, 5*time.Second, "age >= 1s", func() bool { return holder.sup.Held()["Adam"] >= 1000 })
	return holder, peer, obs
}

// A crashed member's heartbeat stays while its lives need it, then goes:
// once every life it ran has been taken over or has ended. A life that
// ended while nobody ran it loses its age record on the way.
func TestGoneMembersHeartbeatIsCollected(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	m2 := startMember(t, srv.Endpoint(), "m2")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	const n = 12
	for i := range n {
		put(t, obs, testKeys.Life(fmt.Sprintf("life-%02d", i)), "")
	}
	waitFor(t, 10*time.Second, "all lives running", func() bool { return len(m1.sup.Held())+len(m2.sup.Held()) == n })
	settled(t, m1, m2)
	onM1 := m1.sup.Held()
	if len(onM1) == 0 {
		t.Skip("m1 holds no life") // 1 in 4096
	}
	var beatKey string
	resp, err := obs.Get(context.Background(), testKeys.Heartbeats(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if b, err := registry.ParseHeartbeat(kv.Value); err == nil && b.Member == "m1" {
			beatKey = string(kv.Key)
		}
	}
	if beatKey == "" {
		t.Fatal("no heartbeat of m1")
	}
	var ended string
	for name := range onM1 {
		ended = name
		break
	}
	m1.crash()
	del(t, obs, testKeys.Life(ended)) // ends while nobody runs it
	waitFor(t, testTTL+5*time.Second, "m2 runs every life left", func() bool { return len(m2.sup.Held()) == n-1 })
	if got := getValue(t, obs, beatKey); got == "" {
		t.Fatal("m1's heartbeat went before the sweep")
	}
	waitFor(t, 5*time.Second, "m1's heartbeat collected", func() bool {
		m2.sup.collectBeats(context.Background())
		return getValue(t, obs, beatKey) == ""
	})
	if got := getValue(t, obs, testKeys.Age(ended)); got != "" {
		t.Fatalf("the record of %s, which ended while its holder was gone, is left: %s", ended, got)
	}
	if n := countKeys(t, obs, testKeys.Heartbeats()); n != 1 {
		t.Fatalf("%d heartbeats left, want m2's alone", n)
	}
	for i := range n {
		name := fmt.Sprintf("life-%02d", i)
		if rec, ok := ageRecord(t, obs, name); name != ended && (!ok || rec.Holder != "m2") {
			t.Fatalf("%s: record %+v after the sweep", name, rec)
		}
	}
}

// When a holder leaves, a waiting candidate that knows every key in front
// of its own starts the life in one Txn, without checking again, and
// resumes at exactly the age the life stopped at.
func TestPeerStartsDirectlyAfterHandoff(t *testing.T) {
	const n = 200
	_, m1, m2, obs := livesOnTwo(t, n)
	moved := len(m1.sup.Held())
	if moved == 0 {
		t.Skip("m1 holds no life")
	}
	before := readCounter(m2.sup.m.DirectStarts)
	m1.stop()
	waitFor(t, 10*time.Second, "m2 runs every life", func() bool { return len(m2.sup.Held()) == n })
	direct := readCounter(m2.sup.m.DirectStarts) - before
	t.Logf("%d lives handed off: %v started directly", moved, direct)
	if direct < float64(moved)/2 {
		t.Errorf("%v of %d lives started directly, want most", direct, moved)
	}
	for i := range n {
		name := fmt.Sprintf("life-%03d", i)
		if rec, ok := ageRecord(t, obs, name); !ok || rec.Holder != "m2" {
			t.Fatalf("%s: record %+v", name, rec)
		}
	}
}

// TestHandoffLogsInOrder: the "life handed off" lines of a member that
// stops are written after its revoke (for speed), but each carries the time
// its life stopped: never later than the peer's "New life spawned" line of
// the same life, so logs merged by time read in the order things happened.
func TestHandoffLogsInOrder(t *testing.T) {
	srv := etcdtest.MustStart(t)
	var buf syncBuffer
	logTo := func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&buf, nil)).With("member", c.ID)
	}
	// m1 logs to a slow sink (a pipe to a busy collector, say): its lines
	// take 200 µs each, so the peer starts lives while m1 still writes.
	slowLog := func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(slowWriter{&buf}, nil)).With("member", c.ID)
	}
	old := startMemberWith(t, srv.Endpoint(), "m1", slowLog)
	obs := etcdtest.MustClient(t, srv.Endpoint())
	const n = 500
	for i := range n {
		put(t, obs, testKeys.Life(fmt.Sprintf("life-%03d", i)), "")
	}
	waitFor(t, 30*time.Second, "all lives on m1", func() bool { return len(old.sup.Held()) == n })
	peer := startMemberWith(t, srv.Endpoint(), "m2", logTo)
	time.Sleep(2 * testInterval) // m2 campaigns as second candidate
	old.stop()
	waitFor(t, 10*time.Second, "all lives on m2", func() bool { return len(peer.sup.Held()) == n })

	stopped, spawned := map[string]time.Time{}, map[string]time.Time{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct {
			Time   time.Time `json:"time"`
			Msg    string    `json:"msg"`
			Member string    `json:"member"`
			Name   string    `json:"name"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch {
		case rec.Member == "m1" && strings.HasPrefix(rec.Msg, "life handed off"):
			stopped[rec.Name] = rec.Time
		case rec.Member == "m2" && strings.HasPrefix(rec.Msg, "New life spawned"):
			spawned[rec.Name] = rec.Time
		}
	}
	if len(stopped) != n {
		t.Fatalf("%d lives logged as handed off by m1, want %d", len(stopped), n)
	}
	for name, at := range stopped {
		if sp, ok := spawned[name]; !ok {
			t.Errorf("%s: no spawn line on m2", name)
		} else if sp.Before(at) {
			t.Errorf("%s: m2 logged its start at %s, before m1's handoff line at %s", name, sp.Format("15:04:05.000000"), at.Format("15:04:05.000000"))
		}
	}
}

// slowWriter takes 200 µs for every write.
type slowWriter struct{ w *syncBuffer }

func (s slowWriter) Write(p []byte) (int, error) {
	time.Sleep(200 * time.Microsecond)
	return s.w.Write(p)
}

// syncBuffer is a bytes.Buffer safe for the members' loggers at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A holder whose preferred member does not campaign (yet) probes again
// engine.ProbeAgain later, not at once: the probe's wait holds although it is
// asked for while the probe's batch is still being handled.
func TestHandoffProbeWaitsForAbsentTarget(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	name := ""
	for i := 0; name == ""; i++ {
		if n := fmt.Sprintf("life-%d", i); engine.Candidates(n, []string{"m1", "ghost"}, 2)[0] == "ghost" {
			name = n
		}
	}
	put(t, obs, testKeys.Life(name), "")
	waitFor(t, 10*time.Second, "m1 runs "+name, func() bool { return m1.holds(name) })

	// A member that is preferred for the life but never campaigns for it.
	grant, err := obs.Grant(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = obs.Revoke(context.Background(), grant.ID) })
	if _, err := obs.Put(context.Background(), testKeys.Member("ghost"), "{}", clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	// minHold and viewSettle pass, then m1 probes for ghost's candidacy.
	time.Sleep(engine.ViewSettle + engine.MinHold)
	before := readCounter(m1.sup.m.ElectionTxns)
	time.Sleep(2 * time.Second)
	txns := readCounter(m1.sup.m.ElectionTxns) - before
	t.Logf("%v election Txns in 2s while the preferred member does not campaign", txns)
	if want := 2*time.Second/engine.ProbeAgain + 20; txns > float64(want) { // a probe each probeAgain, and a few batches of anything else
		t.Fatalf("%v election Txns in 2s: the holder probes without waiting", txns)
	}
	if !m1.holds(name) {
		t.Fatal("m1 gave the life up although nobody can take it")
	}
}

// A start applied although its answer was lost (a timeout) is the life's
// start: the retry finds it, and the life runs on from it. Writing a new
// start record from a later clock would set the age shown back by the time
// between the two (heartbeats carry the first record forward meanwhile).
func TestLostStartAnswerRunsFromTheAppliedStart(t *testing.T) {
	sup, cli := writerOnly(t)
	ctx := context.Background()
	sess, err := lease.Open(ctx, cli, lease.Config{TTL: testTTL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sess.Close(context.Background()) })

	const name = "Adam"
	lifeID := put(t, cli, testKeys.Life(name), "")
	eng := sup.eng // driven here by hand, as the election loop would
	eng.SetMembers([]registry.Member{{ID: "m1", Lease: int64(sess.Lease())}})
	eng.OpenSession(int64(sess.Lease()))
	eng.Put(registry.ParseLife(name, lifeID, lifeID, nil))

	// step takes the one ready step, sends it and returns its batch and
	// the answer, unanswered.
	step := func(kind string) (*engine.Batch, *clientv3.TxnResponse) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			eng.NextDue()
			plain, _ := eng.Take()
			if plain != nil {
				ops := eng.Prepare(plain)
				if ops == nil {
					t.Fatalf("the %s does not apply", kind)
				}
				resp, err := cli.Txn(ctx).Then(ops...).Commit()
				if err != nil {
					t.Fatal(err)
				}
				return plain, resp
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s is ready", kind)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	b, resp := step("check")
	eng.Answer(b, resp, nil) // it leads: the start is next
	b, first := step("start")
	firstAt := time.Now()
	eng.Answer(b, nil, context.DeadlineExceeded) // applied, but its answer is lost
	time.Sleep(300 * time.Millisecond)
	b, resp = step("start, again") // the retry, after the backoff
	if resp.Responses[0].GetResponseTxn().GetSucceeded() {
		t.Fatal("the retry was applied over the first start")
	}
	eng.Answer(b, resp, nil)
	if _, held := eng.Held(time.Now())[name]; !held {
		t.Fatal("the life does not run after its start was found applied")
	}
	if age, min := sup.Held()[name], time.Since(firstAt).Milliseconds(); age < min {
		t.Fatalf("age %d ms, want at least %d ms: the time since the applied start", age, min)
	}
	got, err := cli.Get(ctx, testKeys.Age(name))
	if err != nil || len(got.Kvs) != 1 || got.Kvs[0].ModRevision != first.Header.Revision {
		t.Fatalf("age record %v (%v): want the first start's, at revision %d", got, err, first.Header.Revision)
	}
	eng.TakeAllHeld()
}
