package bench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// tracker follows ages/ and heartbeats/ with one watch, folded by a
// registry.AgeView: the last record of every life, and the moves since
// resetMoves (a record of a new incarnation by another holder), with the age
// each move resumed at against the old holder's last effective age (its
// record carried forward by its heartbeat). A heartbeat changes the age of
// every life its member holds, thousands at this scale, but nothing the
// tracker keeps: it only updates the view, and the tracker reads a life's
// effective age when its record is written again.
type tracker struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	view      *registry.AgeView
	lastMv    time.Time // when the last move was seen
	last      map[string]registry.AgeRecord
	moved     map[string]int // moves per life since resetMoves
	moves     int
	lostMax   float64  // ms: the largest (last effective age of the old holder - resumed age)
	decreased int      // records below the life's effective age before them, same life id
	decMax    int64    // ms: the largest such step down
	decreases []string // the first 10 of them
	bad       int      // values that did not parse
	err       error    // the watch ended
}

type moveStats struct {
	moves, twice int
	lostMax      float64
}

func startTracker(ctx context.Context, cli *clientv3.Client) (*tracker, error) {
	// The listing goes through add, like the events after it.
	kvs, rev, err := listAges(ctx, cli)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	t := &tracker{cancel: cancel, done: make(chan struct{}), view: registry.NewAgeView(keys),
		last: make(map[string]registry.AgeRecord), moved: make(map[string]int)}
	for _, kv := range kvs {
		t.add(&clientv3.Event{Type: mvccpb.PUT, Kv: kv})
	}
	wch := watchAges(wctx, cli, rev+1)
	go func() {
		defer close(t.done)
		for wr := range wch {
			if err := wr.Err(); err != nil {
				t.mu.Lock()
				t.err = err
				t.mu.Unlock()
				return
			}
			for _, ev := range wr.Events {
				t.add(ev)
			}
		}
	}()
	return t, nil
}

func (t *tracker) stop() {
	t.cancel()
	<-t.done
}

// report sets what the tracker saw that no figure asks for: ages that went
// down, values that did not parse.
func (t *tracker) report(r *report) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r.set("scale_age_decreases_seen", t.decreased)
	if t.decreased > 0 {
		r.set("scale_age_decrease_max_ms", t.decMax)
		r.set("scale_age_decreases", t.decreases)
	}
	if t.bad > 0 {
		r.set("scale_unparsable_values", t.bad)
	}
}

func (t *tracker) add(ev *clientv3.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := string(ev.Kv.Key)
	if !strings.HasPrefix(key, agesPrefix) {
		// A heartbeat (or an election key, which the view ignores).
		if _, err := t.view.Apply(ev); err != nil {
			t.bad++
		}
		return
	}
	name := strings.TrimPrefix(key, agesPrefix)
	prev, had := t.view.Get(name) // carried forward to its holder's latest heartbeat
	if _, err := t.view.Apply(ev); err != nil {
		t.bad++
		return
	}
	if ev.Type != mvccpb.PUT {
		return // a deleted record keeps its last holder in last
	}
	rec, err := registry.ParseAgeRecord(ev.Kv.Value) // as written: the age a move resumed at
	if err != nil {
		return
	}
	if had && rec.LifeID == prev.LifeID {
		now, _ := t.view.Get(name) // the new record carried forward, as prev is
		switch {
		case rec.Incarnation > prev.Incarnation && rec.Holder != prev.Holder:
			t.moves++
			t.moved[name]++
			t.lastMv = time.Now()
			t.lostMax = math.Max(t.lostMax, float64(prev.AgeMS-rec.AgeMS))
		case now.AgeMS < prev.AgeMS:
			t.decreased++
			t.decMax = max(t.decMax, prev.AgeMS-now.AgeMS)
			if len(t.decreases) >= 10 {
				break
			}
			t.decreases = append(t.decreases, fmt.Sprintf("%s: %d ms (%s, inc %d, lease %x) after %d ms (%s, inc %d, lease %x)",
				name, now.AgeMS, rec.Holder, rec.Incarnation, rec.Lease, prev.AgeMS, prev.Holder, prev.Incarnation, prev.Lease))
		}
	}
	t.last[name] = rec
}

func (t *tracker) resetMoves() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.moves, t.lostMax = 0, 0
	clear(t.moved)
}

func (t *tracker) moveStats() moveStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := moveStats{moves: t.moves, lostMax: t.lostMax}
	for _, k := range t.moved {
		if k > 1 {
			s.twice++
		}
	}
	return s
}

// quietFor reports whether no life has moved for d.
func (t *tracker) quietFor(d time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return time.Since(t.lastMv) >= d
}

// holders counts the lives by the holder of their last record.
func (t *tracker) holders() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int)
	for _, r := range t.last {
		out[r.Holder]++
	}
	return out
}

// placedOn reports whether n lives have a record, all by holder.
func (t *tracker) placedOn(n int, holder string) bool {
	h := t.holders()
	return h[holder] == n
}

// shareDev is the largest relative distance of a member's count from its
// fair share n/len(ids).
func (t *tracker) shareDev(n int, ids []string) float64 {
	h := t.holders()
	fair := float64(n) / float64(len(ids))
	dev := 0.0
	for _, id := range ids {
		dev = math.Max(dev, math.Abs(float64(h[id])-fair)/fair)
	}
	return round(dev, 4)
}

// balanced reports whether the n lives are all held by members of ids, each
// within tol of its fair share.
func (t *tracker) balanced(n int, ids []string, tol float64) bool {
	h := t.holders()
	total := 0
	for id, c := range h {
		if slices.Contains(ids, id) {
			total += c
		}
	}
	return total == n && t.shareDev(n, ids) <= tol
}

// waitFor polls cond until it holds, timeout passes, ctx ends or the
// watch fails.
func (t *tracker) waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		t.mu.Lock()
		err := t.err
		t.mu.Unlock()
		if err != nil {
			return fmt.Errorf("watch on ages/ and heartbeats/: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}
