package registry_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
)

// A StatusWatch's members (records, leases, heartbeats), a life's fencing
// token and quarantine, and how a run stopped: a holder that deletes its
// election key while its member record stays let the life go (HolderLive);
// a holder whose lease is revoked (its record and key go in one revision)
// did not.
func TestStatusWatchMembersDetailAndHolderLive(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t, "/immortals/")
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

	// m1 and m2 run one life each, on their leases, with a heartbeat.
	leases := map[string]clientv3.LeaseID{"m1": grantMinute(t, cli), "m2": grantMinute(t, cli)}
	tokens := map[string]int64{}
	for id, life := range map[string]string{"m1": "Adam", "m2": "Eve"} {
		l := leases[id]
		mustPut(t, cli, keys.Member(id), string(registry.MemberRecord{ID: id, Address: id + ":8080", PID: 7, Kinds: []string{"counter"}}.Marshal()), clientv3.WithLease(l))
		lifeID := mustPut(t, cli, keys.Life(life), "")
		tokens[life] = mustPut(t, cli, keys.Candidacy(life, int64(l)), "", clientv3.WithLease(l))
		mustPut(t, cli, keys.Age(life), string(registry.AgeRecord{LifeID: lifeID, AgeMS: 1000, Incarnation: 1, Holder: id, HolderRev: tokens[life], Time: at, Lease: int64(l), ClockMS: 10}.Marshal()))
		mustPut(t, cli, keys.Heartbeat(int64(l)), string(registry.Heartbeat{Member: id, ClockMS: 510, Time: at.Add(500 * time.Millisecond)}.Marshal()))
	}
	mustPut(t, cli, keys.Member("bad"), "not json")
	mustPut(t, cli, keys.Quarantine("Eve"), "bytes of a corrupt record")

	w, err := registry.WatchStatus(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.List()
	ms := w.Members()
	if len(ms) != 3 || ms[0].Record.ID != "bad" || ms[0].Corrupt == "" || ms[1].Record.ID != "m1" || ms[2].Record.ID != "m2" {
		t.Fatalf("Members = %+v, want bad (corrupt), m1, m2", ms)
	}
	if m := ms[1]; m.Lease != int64(leases["m1"]) || m.Record.Address != "m1:8080" || m.Beat == nil || m.Beat.ClockMS != 510 || m.BeatRev == 0 {
		t.Errorf("m1 = %+v, want its lease, record and heartbeat", m)
	}
	if d := w.Detail("Adam"); d.FencingToken != tokens["Adam"] || d.Quarantined {
		t.Errorf("Detail(Adam) = %+v, want token %d, not quarantined", d, tokens["Adam"])
	}
	if d := w.Detail("Eve"); d.FencingToken != tokens["Eve"] || !d.Quarantined {
		t.Errorf("Detail(Eve) = %+v, want token %d, quarantined", d, tokens["Eve"])
	}
	if d := w.Detail("Nobody"); d != (registry.LifeDetail{}) {
		t.Errorf("Detail(Nobody) = %+v, want zero", d)
	}

	stopped := func(name string) registry.StatusChange {
		t.Helper()
		for {
			changes, err := w.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range changes {
				if c.Status.Name == name && c.Event == registry.EventStopped {
					return c
				}
			}
		}
	}
	// m1 resigns Adam and stays.
	mustDelete(t, cli, keys.Candidacy("Adam", int64(leases["m1"])))
	if c := stopped("Adam"); !c.HolderLive {
		t.Errorf("Adam stopped by a resign: %+v, want HolderLive", c)
	}
	if d := w.Detail("Adam"); d.FencingToken != 0 {
		t.Errorf("Detail(Adam) after the stop = %+v, want no token", d)
	}
	// m2's lease ends.
	if _, err := cli.Revoke(ctx, leases["m2"]); err != nil {
		t.Fatal(err)
	}
	if c := stopped("Eve"); c.HolderLive {
		t.Errorf("Eve stopped by a revoke: %+v, want not HolderLive", c)
	}
	if ms := w.Members(); len(ms) != 2 || ms[1].Record.ID != "m1" {
		t.Errorf("Members after the revoke = %+v, want bad and m1", ms)
	}
}
