//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestChecker proves the invariant checker is not vacuous: with no daemon at
// all, the test writes what a broken daemon would (a stale holder's
// checkpoint, a falling age, a wrong life id, garbage, a life nobody runs,
// and with heartbeats: an age that goes back only once the heartbeat is
// folded in, a heartbeat applied after its member is gone, one that counts
// time the life did not run) straight into etcd, and the checker must name
// each one, and nothing else.
func TestChecker(t *testing.T) {
	c := newCluster(t, Options{})
	cli := c.Client()
	const p = "/selftest/"
	chk := startChecker(t, cli, p, time.Second, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	put := func(key, val string, opts ...clientv3.OpOption) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, p+key, val, opts...)
		must(t, err)
		return resp.Header.Revision
	}
	grant := func() clientv3.LeaseID {
		t.Helper()
		l, err := cli.Grant(ctx, 60)
		must(t, err)
		return l.ID
	}
	age := func(lifeID, ageMS, inc int64, holder string, holderRev int64) string {
		b, _ := json.Marshal(Checkpoint{LifeID: lifeID, AgeMS: ageMS, Incarnation: inc, Holder: holder, HolderRev: holderRev, Time: time.Now()})
		return string(b)
	}
	// A running record (on lease, from clock) and a heartbeat, as the daemon
	// writes them; times are t0 plus the clock, as on a real member.
	t0 := time.Now()
	running := func(lifeID, ageMS, inc int64, holder string, holderRev int64, lease clientv3.LeaseID, clock int64) string {
		b, _ := json.Marshal(Checkpoint{LifeID: lifeID, AgeMS: ageMS, Incarnation: inc, Holder: holder, HolderRev: holderRev,
			Time: t0.Add(time.Duration(clock) * time.Millisecond), Lease: int64(lease), ClockMS: clock})
		return string(b)
	}
	beat := func(member string, clock int64) string {
		b, _ := json.Marshal(heartbeat{Member: member, ClockMS: clock, Time: t0.Add(time.Duration(clock) * time.Millisecond)})
		return string(b)
	}
	hb := func(l clientv3.LeaseID) string { return fmt.Sprintf("heartbeats/%x", int64(l)) }

	life := put("lives/X", "")
	a, b := grant(), grant()
	ra := put(fmt.Sprintf("elections/X/%x", a), "mA", clientv3.WithLease(a))
	rb := put(fmt.Sprintf("elections/X/%x", b), "mB", clientv3.WithLease(b))
	put("ages/X", age(life, 1000, 1, "mA", ra)) // fine
	put("ages/X", age(life, 2000, 1, "mA", ra)) // fine
	put("ages/X", age(life, 2100, 1, "mB", rb)) // 1: mB is only a candidate
	put("ages/X", age(life, 1500, 1, "mA", ra)) // 2: age goes down
	put("ages/X", age(life, 2200, 1, "mB", ra)) // 3: holder field is not the key's member
	_, err := cli.Revoke(ctx, a)                // mA's session ends: mB holds X
	must(t, err)
	put("ages/X", age(life, 2300, 1, "mA", ra))   // 4: mA writes after losing X
	put("ages/X", age(life, 2300, 1, "mB", rb))   // 5: new holder, same incarnation
	put("ages/X", age(life, 2400, 2, "mB", rb))   // fine
	put("ages/X", age(life+1, 2500, 3, "mB", rb)) // 6: not the current life id
	put("ages/X", "garbage")                      // 7: does not parse
	put("ages/Z", age(life, 1, 1, "mB", rb))      // 8: not wanted, 9: no election key
	put("lives/bad name", "")                     // invalid: never expected to run
	last := put("lives/Y", "")                    // 10: wanted, and nobody runs it
	put("ages/X", age(life, 3000, 3, "mB", rb))   // fine
	put("ages/X", age(life, 4000, 3, "mB", rb))   // fine

	// Heartbeats: W runs on mC's lease, then on mD's.
	lifeW := put("lives/W", "")
	lc, ld := grant(), grant()
	put("members/mC", "{}", clientv3.WithLease(lc))
	put("members/mD", "{}", clientv3.WithLease(ld))
	rc := put(fmt.Sprintf("elections/W/%x", lc), "mC", clientv3.WithLease(lc))
	rd := put(fmt.Sprintf("elections/W/%x", ld), "mD", clientv3.WithLease(ld))
	put("ages/W", running(lifeW, 1000, 1, "mC", rc, lc, 100)) // fine: 1000 ms
	put(hb(lc), beat("mC", 2100))                             // fine: W is 3000 ms
	put("ages/W", running(lifeW, 1000, 1, "mC", rc, lc, 100)) // fine: the same record again (a repair) is still 3000 ms
	put(hb(lc), beat("mD", 2200))                             // 11: stale: mD's member record is on another lease
	put(hb(lc), beat("mC", 2600))                             // fine, and the last beat before the revoke: W is 3500 ms
	_, err = cli.Revoke(ctx, lc)                              // mC ends: members/mC and its key go, mD holds W
	must(t, err)
	put(hb(lc), beat("mC", 2700)) // 12: stale: members/mC is gone
	// 13: mD resumes from the raw record, not carried forward to mC's last
	// heartbeat: above the record's 1000 ms, below W's 3500 ms.
	put("ages/W", running(lifeW, 3000, 2, "mD", rd, ld, 50))
	put(hb(ld), beat("mD", 1050)) // fine: W is 4000 ms
	put(hb(ld), beat("mD", 1000)) // 14: the clock goes back
	// 15: a beat that counts 60 s that W did not run (its time says 1 s).
	put(hb(ld), fmt.Sprintf(`{"member":"mD","clock_ms":61050,"time":%q}`, t0.Add(2050*time.Millisecond).Format(time.RFC3339Nano)))
	// 16: the heartbeat W's record counts on is deleted while W runs.
	delResp, err := cli.Delete(ctx, p+hb(ld))
	must(t, err)
	last = max(last, delResp.Header.Revision)
	// V runs on mE's lease; its election key goes (mE lost V) while mE's
	// member record stays: 17: mE's next beat must not make V older.
	lifeV := put("lives/V", "")
	le := grant()
	put("members/mE", "{}", clientv3.WithLease(le))
	re := put(fmt.Sprintf("elections/V/%x", le), "mE", clientv3.WithLease(le))
	put("ages/V", running(lifeV, 500, 1, "mE", re, le, 100)) // fine
	put(hb(le), beat("mE", 600))                             // fine: V is 1000 ms
	_, err = cli.Delete(ctx, p+fmt.Sprintf("elections/V/%x", le))
	must(t, err)
	last = max(last, put(hb(le), beat("mE", 1100)))

	chk.WaitRev(t, last, 10*time.Second)

	want := []string{
		"checkpoint of X by mB with holder_rev " + fmt.Sprint(rb) + ", but the holder at that revision is mA",
		"age of X went down from 2000 ms",
		`checkpoint of X names holder "mB", but the holder key`,
		"checkpoint of X by mA with holder_rev " + fmt.Sprint(ra) + ", but the holder at that revision is mB",
		"new holder mB (key rev " + fmt.Sprint(rb) + ") of X kept incarnation 1",
		fmt.Sprintf("checkpoint of X for life id %d by mB, but the current life id is %d", life+1, life),
		`ages/X holds a record that does not parse`,
		"checkpoint of Z (life",
		"checkpoint of Z by mB (holder_rev " + fmt.Sprint(rb) + ", age 1) while no election key exists",
		"life Y (id",
		"life X (id", // no checkpoint for a second since the last one
		fmt.Sprintf("stale heartbeat heartbeats/%x by mD (clock 2200 ms): members/mD is on lease %x", int64(lc), int64(ld)),
		fmt.Sprintf("stale heartbeat heartbeats/%x by mC (clock 2700 ms): members/mC is gone", int64(lc)),
		"age of W went down from 3500 ms",
		fmt.Sprintf("heartbeat clock of heartbeats/%x by mD went back from 1050 ms", int64(ld)),
		"age of W grew by 1m0s (4000 -> 64000 ms, heartbeat by mD)",
		fmt.Sprintf("heartbeats/%x deleted while the record of W still runs on it", int64(ld)),
		"life W (id", // no checkpoint for a second since the last one
		"heartbeat of mE (lease " + fmt.Sprintf("%x", int64(le)) + ") carries V forward to 1500 ms, but mE's holder key (rev " + fmt.Sprint(re) + ") is not the holder",
		"life V (id", // no checkpoint for a second since the last one
	}
	waitFor(t, 10*time.Second, "the availability violations", func() (bool, string) {
		return len(chk.Violations()) >= len(want), fmt.Sprint(len(chk.Violations()))
	})
	got := chk.Violations()
	for _, v := range got {
		t.Logf("violation: %s", v)
	}
	for _, w := range want {
		found := false
		for _, v := range got {
			if strings.Contains(v, w) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("the checker did not report %q", w)
		}
	}
	for _, v := range got {
		ok := false
		for _, w := range want {
			if strings.Contains(v, w) {
				ok = true
			}
		}
		if !ok { // a false alarm
			t.Errorf("unexpected violation: %s", v)
		}
	}
	if strings.Contains(strings.Join(got, "\n"), "bad name") {
		t.Errorf("an invalid life was flagged for not running")
	}
	report(t, "checker-selftest", "violations", len(got), "expected", len(want))
}
