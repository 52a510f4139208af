package supervisor

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

// The tests of the sweep's collection of orphaned records (collectBeats).
// Records a crashed holder would leave are written directly, with the
// registry's types, since a real holder deletes its records when it sees
// its life go; the sweep is run by calling collectBeats on the first member
// by id instead of waiting for sweepEvery.

// nobodysKind is a kind no member in these tests runs: its lives wait.
const nobodysKind = `{"kind":"nobodys"}`

// grantLease grants a lease of a minute, as a holder's session would be;
// it is revoked when the test ends, if it is not already.
func grantLease(tb testing.TB, cli *clientv3.Client) int64 {
	tb.Helper()
	g, err := cli.Grant(context.Background(), 60)
	if err != nil {
		tb.Fatalf("grant: %v", err)
	}
	tb.Cleanup(func() { _, _ = cli.Revoke(context.Background(), g.ID) })
	return int64(g.ID)
}

func revokeLease(tb testing.TB, cli *clientv3.Client, l int64) {
	tb.Helper()
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(l)); err != nil {
		tb.Fatalf("revoke %x: %v", l, err)
	}
}

// holderRecords writes the age record, the state record and the child
// record of life lifeID of name as its holder on lease would (lease 0: a
// stopped record). It returns their revision.
func holderRecords(tb testing.TB, cli *clientv3.Client, name string, lifeID, lease int64) int64 {
	tb.Helper()
	now := time.Now()
	age := registry.AgeRecord{LifeID: lifeID, AgeMS: 1500, Incarnation: 1, Holder: "crashed", HolderRev: lifeID + 1, Time: now, Lease: lease}
	st, err := registry.StateRecord{LifeID: lifeID, Holder: "crashed", HolderRev: lifeID + 1, Incarnation: 1, Time: now, Data: []byte("left")}.Marshal()
	child := registry.ChildRecord{LifeID: lifeID, Holder: "crashed", HolderRev: lifeID + 1, Incarnation: 1, Time: now, Child: workload.ChildStatus{State: workload.ChildRunning}}
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := cli.Txn(context.Background()).
		Then(clientv3.OpPut(testKeys.Age(name), string(age.Marshal())), clientv3.OpPut(testKeys.State(name), string(st)),
			clientv3.OpPut(testKeys.Child(name), string(child.Marshal()))).
		Commit()
	if err != nil {
		tb.Fatalf("records of %s: %v", name, err)
	}
	return resp.Header.Revision
}

// modRev is the ModRevision of key, 0 when it is missing.
func modRev(tb testing.TB, cli *clientv3.Client, key string) int64 {
	tb.Helper()
	resp, err := cli.Get(context.Background(), key, clientv3.WithKeysOnly())
	if err != nil {
		tb.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}

// sweepUntil runs m's collection until cond holds. m must be the first
// member by id; until its watch of members/ says so, collectBeats does
// nothing, hence the loop.
func sweepUntil(tb testing.TB, m *member, what string, cond func() bool) {
	tb.Helper()
	waitFor(tb, 10*time.Second, what, func() bool {
		m.sup.collectBeats(context.Background())
		return cond()
	})
}

// gone reports whether none of keys exists.
func gone(tb testing.TB, cli *clientv3.Client, keys ...string) func() bool {
	return func() bool {
		for _, k := range keys {
			if modRev(tb, cli, k) != 0 {
				return false
			}
		}
		return true
	}
}

// sweepRan runs m's collection until it has collected the heartbeat of a
// gone member that ran nothing: proof that the sweep ran on m, so that
// what it left, it kept.
func sweepRan(tb testing.TB, m *member, obs *clientv3.Client) {
	tb.Helper()
	idle := grantLease(tb, obs)
	put(tb, obs, testKeys.Heartbeat(idle), string(registry.Heartbeat{Member: "idle", Time: time.Now()}.Marshal()))
	revokeLease(tb, obs, idle)
	sweepUntil(tb, m, "the idle member's heartbeat collected", gone(tb, obs, testKeys.Heartbeat(idle)))
}

func collected(m *member, record string) float64 {
	return readCounter(m.sup.m.Collected.WithLabelValues(record))
}

// A holder that crashed before its first heartbeat leaves a running record
// on a lease that no heartbeat names, and its state: kept while the life is
// wanted (a successor resumes from them), collected once it is deleted.
func TestCollectHolderCrashedBeforeFirstHeartbeat(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	life := put(t, obs, testKeys.Life("Cain"), nobodysKind) // waits: nobody runs the kind
	l := grantLease(t, obs)
	rev := holderRecords(t, obs, "Cain", life, l)
	revokeLease(t, obs, l)

	beats := collected(m1, "heartbeat")
	sweepRan(t, m1, obs)
	if modRev(t, obs, testKeys.Age("Cain")) != rev || modRev(t, obs, testKeys.State("Cain")) != rev || modRev(t, obs, testKeys.Child("Cain")) != rev {
		t.Fatal("the records of a wanted life were touched")
	}

	ages, states := collected(m1, "age"), collected(m1, "state")
	del(t, obs, testKeys.Life("Cain"))
	sweepUntil(t, m1, "Cain's age and state collected", gone(t, obs, testKeys.Age("Cain"), testKeys.State("Cain"), testKeys.Child("Cain")))
	if a, s := collected(m1, "age")-ages, collected(m1, "state")-states; a != 1 || s != 1 {
		t.Fatalf("collected %v ages and %v states, want 1 each", a, s)
	}
	if n := collected(m1, "heartbeat") - beats; n != 1 {
		t.Fatalf("collected %v heartbeats, want 1", n)
	}
}

// stopForGood runs name on m until it holds it, then makes its request
// invalid: m stops it and writes its final, stopped record (no lease),
// which it keeps for when the request is fixed. It returns the life id.
func stopForGood(tb testing.TB, m *member, obs *clientv3.Client, name string) int64 {
	tb.Helper()
	put(tb, obs, testKeys.Life(name), "")
	waitFor(tb, 10*time.Second, name+" held", func() bool { return m.holds(name) })
	put(tb, obs, testKeys.Life(name), `{"command":"x"}`)
	var rec registry.AgeRecord
	waitFor(tb, 10*time.Second, name+" stopped", func() bool {
		var ok bool
		rec, ok = ageRecord(tb, obs, name)
		return ok && !rec.Running() && !m.holds(name)
	})
	return rec.LifeID
}

// A life that stopped for good (its request invalid) keeps a stopped
// record; once the request is deleted, nobody holds it and nobody deletes
// it but the sweep.
func TestCollectStoppedRecordOfDeletedLife(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	stopForGood(t, m1, obs, "Abel")
	del(t, obs, testKeys.Life("Abel"))
	sweepUntil(t, m1, "Abel's stopped record collected", gone(t, obs, testKeys.Age("Abel")))
}

// Deleted and put again, the name is a new life: the stopped record of the
// old one is collected while the new one waits for a member of its kind,
// and the new life then starts as any new life does, its records kept.
func TestCollectStoppedRecordOfRecreatedLife(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	old := stopForGood(t, m1, obs, "Seth")
	del(t, obs, testKeys.Life("Seth"))
	life := put(t, obs, testKeys.Life("Seth"), `{"kind":"note"}`) // m1 does not run it
	sweepUntil(t, m1, "the old life's record collected", gone(t, obs, testKeys.Age("Seth")))

	runs := make(chan *noteRun, 1)
	m2 := startMemberWith(t, srv.Endpoint(), "m2", withKinds(noteKind("m2", runs)))
	r := nextRun(t, runs, 10*time.Second)
	if r.inc != 1 || r.restored != "" {
		t.Fatalf("the new life started at incarnation %d with state %q, want 1 and none", r.inc, r.restored)
	}
	st := waitState(t, obs, "Seth", fmt.Sprintf("m2 %d", r.token))
	rec, ok := ageRecord(t, obs, "Seth")
	if !ok || rec.LifeID != life || rec.LifeID == old || rec.Holder != "m2" || !rec.Running() {
		t.Fatalf("record %+v, want one of life %d running on m2", rec, life)
	}
	ageRev, stRev := modRev(t, obs, testKeys.Age("Seth")), modRev(t, obs, testKeys.State("Seth"))
	m1.sup.collectBeats(context.Background())
	if modRev(t, obs, testKeys.Age("Seth")) != ageRev || modRev(t, obs, testKeys.State("Seth")) != stRev || !m2.holds("Seth") {
		t.Fatalf("the new life's records were touched by the sweep (state was %+v)", st)
	}
}

// A state record of an earlier life, with no age record (its age was
// deleted, its state delete was not applied), is collected once its
// request is gone.
func TestCollectStateOfOldLifeWithoutAge(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	life := put(t, obs, testKeys.Life("Enos"), nobodysKind)
	holderRecords(t, obs, "Enos", life, 0)
	del(t, obs, testKeys.Age("Enos"))
	del(t, obs, testKeys.Life("Enos"))
	states := collected(m1, "state")
	sweepUntil(t, m1, "Enos's state collected", gone(t, obs, testKeys.State("Enos"), testKeys.Child("Enos")))
	if n := collected(m1, "state") - states; n != 1 {
		t.Fatalf("collected %v states, want 1", n)
	}
}

// A child record whose state record is gone (a member of a version before
// child records deletes states/<name> alone; or a hand did) is collected
// once its life is not wanted; while the life is wanted, it stays.
func TestCollectChildRecordWithoutState(t *testing.T) {
	srv := etcdtest.MustStart(t)
	m1 := startMember(t, srv.Endpoint(), "m1")
	obs := etcdtest.MustClient(t, srv.Endpoint())
	life := put(t, obs, testKeys.Life("Irad"), nobodysKind)
	holderRecords(t, obs, "Irad", life, 0)
	del(t, obs, testKeys.State("Irad"))
	sweepRan(t, m1, obs)
	if modRev(t, obs, testKeys.Child("Irad")) == 0 {
		t.Fatal("the child record of a wanted life was collected")
	}
	del(t, obs, testKeys.Life("Irad"))
	children := collected(m1, "child")
	sweepUntil(t, m1, "Irad's age and child record collected", gone(t, obs, testKeys.Age("Irad"), testKeys.Child("Irad")))
	if n := collected(m1, "child") - children; n != 1 {
		t.Fatalf("collected %v child records, want 1", n)
	}
}

// What the sweep must never delete: the records of a wanted life (running
// on a live member, or left by a crashed holder, or stopped), and records
// of a deleted life that a live holder still owns (on a live member's
// lease, or on a lease etcd still keeps). Once that lease is revoked, its
// records are orphans.
func TestCollectKeepsWantedAndHeldRecords(t *testing.T) {
	srv := etcdtest.MustStart(t)
	runs := make(chan *noteRun, 1)
	m1 := startMemberWith(t, srv.Endpoint(), "m1", withKinds(noteKind("m1", runs)))
	m2 := startMember(t, srv.Endpoint(), "m2")
	obs := etcdtest.MustClient(t, srv.Endpoint())

	put(t, obs, testKeys.Life("job"), `{"kind":"note"}`) // runs on m1, with state
	r := nextRun(t, runs, 10*time.Second)
	waitState(t, obs, "job", fmt.Sprintf("m1 %d", r.token))
	// A wanted life whose holder crashed before its first heartbeat.
	crashed := grantLease(t, obs)
	holderRecords(t, obs, "Cain", put(t, obs, testKeys.Life("Cain"), nobodysKind), crashed)
	revokeLease(t, obs, crashed)
	// A wanted life that stopped (a handoff's final record, say).
	holderRecords(t, obs, "Abel", put(t, obs, testKeys.Life("Abel"), nobodysKind), 0)
	// Deleted lives whose holders are alive: one on m2's lease, one on a
	// lease of no registered member that etcd still keeps.
	holderRecords(t, obs, "ghost", 2, memberLease(t, obs, m2.id))
	pending := grantLease(t, obs)
	holderRecords(t, obs, "pending", 3, pending)

	var keys []string
	for _, name := range []string{"job", "Cain", "Abel", "ghost", "pending"} {
		keys = append(keys, testKeys.Age(name), testKeys.State(name))
	}
	revs := make(map[string]int64, len(keys))
	for _, k := range keys {
		if revs[k] = modRev(t, obs, k); revs[k] == 0 {
			t.Fatalf("%s is missing", k)
		}
	}
	sweepRan(t, m1, obs)
	m1.sup.collectBeats(context.Background()) // and once more
	for _, k := range keys {
		if got := modRev(t, obs, k); got != revs[k] {
			t.Errorf("%s: revision %d after the sweep, want %d (untouched)", k, got, revs[k])
		}
	}
	if !m1.holds("job") {
		t.Error("m1 lost job")
	}

	revokeLease(t, obs, pending)
	sweepUntil(t, m1, "pending's records collected once its lease is gone",
		gone(t, obs, testKeys.Age("pending"), testKeys.State("pending"), testKeys.Child("pending")))
	if modRev(t, obs, testKeys.Age("ghost")) != revs[testKeys.Age("ghost")] {
		t.Error("the record on m2's lease was touched")
	}
}
