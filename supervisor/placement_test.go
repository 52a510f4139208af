package supervisor

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// Scale-out: lives move to a joining member by graceful handoff, each life
// resumes at its final checkpoint, no life moves twice (members join one
// after the other, and a non-preferred candidate may be ahead of the
// preferred one in the line), and the placement ends balanced.
func TestScaleOutHandsLivesToNewMember(t *testing.T) {
	const n = 300
	srv, m1, m2, obs := livesOnTwo(t, n)
	start, _ := obs.Get(context.Background(), "x")
	before := readCounter(m1.sup.m.Handoffs) + readCounter(m2.sup.m.Handoffs)

	m3 := startMember(t, srv.Endpoint(), "m3")
	m4 := startMember(t, srv.Endpoint(), "m4")
	all := []*member{m1, m2, m3, m4}
	waitFor(t, 30*time.Second, "every member near its fair share", func() bool {
		total := 0
		for _, m := range all {
			h := len(m.sup.Held())
			total += h
			if math.Abs(float64(h)-n/4.0) > 0.1*n/4+5 { // within 10% of the fair share (+ a few lives of 300)
				return false
			}
		}
		return total == n
	})
	settled(t, all...)
	handoffs := -before
	for _, m := range all {
		handoffs += readCounter(m.sup.m.Handoffs)
	}
	t.Logf("scale-out 2 -> 4 with %d lives: %v handoffs (minimum about %d)", n, handoffs, n/2)
	if handoffs > 0.75*n {
		t.Errorf("%v handoffs, want close to the minimum of about %d", handoffs, n/2)
	}

	// Every move was a graceful handoff: each new incarnation started at
	// exactly the age of the previous holder's last record.
	now, err := obs.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	prev := map[string]registry.AgeRecord{}
	moves := 0
	movesOf := map[string]int{}
	// The age as etcd shows it (records carried forward by heartbeats) never
	// goes back, not even for a moment during a handoff.
	view := registry.NewAgeView(testKeys)
	_, kvs, err := registry.RangeAll(ctx, obs, testKeys.Prefix(), start.Header.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if err := view.Load(kvs); err != nil {
		t.Fatal(err)
	}
	shown := map[string]registry.AgeRecord{}
	for wr := range obs.Watch(ctx, testKeys.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1)) {
		for _, ev := range wr.Events {
			changes, err := view.Apply(ev)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range changes {
				if c.Deleted {
					continue
				}
				if p, ok := shown[c.Name]; ok && p.LifeID == c.Rec.LifeID && c.Rec.AgeMS < p.AgeMS {
					t.Errorf("%s: age shown went back from %dms (%s, incarnation %d) to %dms (%s, incarnation %d)",
						c.Name, p.AgeMS, p.Holder, p.Incarnation, c.Rec.AgeMS, c.Rec.Holder, c.Rec.Incarnation)
				}
				shown[c.Name] = c.Rec
			}
			if ev.Type != mvccpb.PUT || !strings.HasPrefix(string(ev.Kv.Key), testKeys.Ages()) {
				continue
			}
			rec, err := registry.ParseAgeRecord(ev.Kv.Value)
			if err != nil {
				t.Fatal(err)
			}
			key := string(ev.Kv.Key)
			if p, ok := prev[key]; ok && rec.Incarnation > p.Incarnation {
				moves++
				if movesOf[key]++; movesOf[key] == 2 {
					t.Errorf("%s moved twice (now incarnation %d on %s)", key, rec.Incarnation, rec.Holder)
				}
				if rec.AgeMS != p.AgeMS {
					t.Errorf("%s: incarnation %d on %s resumed at %dms, the last record of %s says %dms",
						key, rec.Incarnation, rec.Holder, rec.AgeMS, p.Holder, p.AgeMS)
				}
			}
			prev[key] = rec
		}
		if wr.Header.Revision >= now.Header.Revision {
			break
		}
	}
	if moves == 0 {
		t.Fatal("no life moved")
	}
}
