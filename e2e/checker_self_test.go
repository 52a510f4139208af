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
// checkpoint, a falling age, a wrong life id, garbage, a life nobody runs)
// straight into etcd, and the checker must name each one, and nothing else.
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
	chk.WaitRev(t, last, 10*time.Second)
	waitFor(t, 10*time.Second, "the availability violation", func() (bool, string) {
		return len(chk.Violations()) >= 11, fmt.Sprint(len(chk.Violations()))
	})

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
	}
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
