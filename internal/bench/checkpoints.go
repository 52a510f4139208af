package bench

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// A member checkpoints every life it runs with one heartbeat per interval,
// heartbeats/<lease-hex>; a life's age record is written only when it
// starts and stops. So "how often is each life's age checkpointed" is how
// often each member's heartbeat is applied.

// heartbeatMetrics are the members' heartbeat counters the steady state reads.
var heartbeatMetrics = []string{"immortald_heartbeats_total", "immortald_heartbeat_errors_total", "immortald_heartbeat_seconds"}

// checkpointWatch counts, over a window, what etcd applies of the
// checkpoints: every heartbeat (by member, with its clock) and every write
// of an age record.
type checkpointWatch struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	beats    map[string][]int64 // clock_ms of each heartbeat applied, by member
	beatPuts int
	agePuts  int
	ageDels  int
	unparsed int
	watchErr error
}

func (b *bench) startCheckpointWatch(ctx context.Context) (*checkpointWatch, error) {
	resp, err := b.cli.Get(ctx, "/bench/rev", clientv3.WithSerializable())
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	cw := &checkpointWatch{cancel: cancel, done: make(chan struct{}), beats: make(map[string][]int64)}
	wch := watchAges(wctx, b.cli, resp.Header.Revision+1)
	go func() {
		defer close(cw.done)
		for wr := range wch {
			if err := wr.Err(); err != nil {
				cw.mu.Lock()
				if wctx.Err() == nil {
					cw.watchErr = err
				}
				cw.mu.Unlock()
				return
			}
			cw.mu.Lock()
			for _, ev := range wr.Events {
				cw.addLocked(ev)
			}
			cw.mu.Unlock()
		}
	}()
	return cw, nil
}

func (cw *checkpointWatch) addLocked(ev *clientv3.Event) {
	key := string(ev.Kv.Key)
	if _, ok := keys.HeartbeatLease(key); ok {
		if ev.Type != mvccpb.PUT {
			return
		}
		cw.beatPuts++
		hb, err := registry.ParseHeartbeat(ev.Kv.Value)
		if err != nil {
			cw.unparsed++
			return
		}
		cw.beats[hb.Member] = append(cw.beats[hb.Member], hb.ClockMS)
		return
	}
	if strings.HasPrefix(key, agesPrefix) {
		if ev.Type == mvccpb.PUT {
			cw.agePuts++
		} else {
			cw.ageDels++
		}
	}
}

// stop ends the watch; the first call counts.
func (cw *checkpointWatch) stop() {
	cw.cancel()
	<-cw.done
}

// setCheckpoints reports the steady state's checkpoints: heartbeats applied
// per member per second (the members' counters), the interval between a
// member's consecutive heartbeats (from their clocks as etcd applied them:
// how often each life's age was checkpointed), and the etcd writes the
// checkpoints cost.
func (b *bench) setCheckpoints(ms []*member, hb0, hb1 map[string]map[string]float64, cw *checkpointWatch, win float64) {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if cw.watchErr != nil {
		b.rep.set("checkpoint_watch_error", cw.watchErr.Error())
	}
	per := make(map[string]any)
	worstRate, worstCounted, worstMean, worstGap := math.Inf(1), 0.0, 0.0, 0.0
	var errs float64
	var beatSecsMax float64
	var missing []string
	for _, m := range ms {
		a, ok0 := hb0[m.id]
		z, ok1 := hb1[m.id]
		applied := math.NaN()
		if ok0 && ok1 {
			applied = delta(a, z, "immortald_heartbeats_total")
			errs += delta(a, z, "immortald_heartbeat_errors_total")
			beatSecsMax = math.Max(beatSecsMax, z["immortald_heartbeat_seconds"])
		}
		// The mean and the longest interval between consecutive
		// heartbeats applied in the window, by their clocks. With fewer
		// than two, the window itself bounds the interval from below.
		clocks := cw.beats[m.id]
		sort.Slice(clocks, func(i, j int) bool { return clocks[i] < clocks[j] })
		meanS, gapS := win, win
		if len(clocks) >= 2 {
			meanS = float64(clocks[len(clocks)-1]-clocks[0]) / 1000 / float64(len(clocks)-1)
			gapS = 0
			for i := 1; i < len(clocks); i++ {
				gapS = math.Max(gapS, float64(clocks[i]-clocks[i-1])/1000)
			}
		} else {
			missing = append(missing, m.id)
		}
		counted := math.NaN()
		if applied > 0 {
			counted = win / applied
		}
		per[m.id] = map[string]any{
			"heartbeats_applied":     applied,
			"heartbeats_watched":     len(clocks),
			"heartbeat_interval_s":   round(meanS, 3),
			"heartbeat_gap_max_s":    round(gapS, 3),
			"window_over_heartbeats": round(counted, 3),
		}
		worstRate = math.Min(worstRate, applied/win)
		worstMean = math.Max(worstMean, meanS)
		worstGap = math.Max(worstGap, gapS)
		if !math.IsNaN(counted) {
			worstCounted = math.Max(worstCounted, counted)
		} else {
			worstCounted = math.Max(worstCounted, win)
		}
	}
	b.rep.set("heartbeats_per_member_per_s_min", worstRate)
	// The bar's figure: the worst member's mean interval between applied
	// heartbeats. window / heartbeats (checkpoint_interval_window_s) says
	// the same, but a 3 s window holds 2 to 4 beats of a 1 s ticker by
	// where its ends fall, so it is off by up to a third in a quick run.
	b.rep.set("checkpoint_interval_effective_s", worstMean)
	b.rep.set("checkpoint_interval_window_s", worstCounted)
	b.rep.set("checkpoint_gap_max_s", worstGap)
	b.rep.set("checkpoints_by_member", per)
	if len(missing) > 0 {
		b.rep.set("checkpoint_members_under_two_heartbeats", missing)
	}
	b.rep.set("heartbeat_errors_in_window", errs)
	b.rep.set("heartbeat_seconds_max", beatSecsMax)
	// What the checkpoints cost etcd: every heartbeat and every age
	// record write it applied in the window (none of the latter in a
	// steady state: records change only when lives start or stop).
	b.rep.set("checkpoint_etcd_writes_per_s", float64(cw.beatPuts+cw.agePuts)/win)
	b.rep.set("heartbeat_puts_per_s", float64(cw.beatPuts)/win)
	b.rep.set("age_record_puts_in_window", cw.agePuts)
	if cw.ageDels > 0 {
		b.rep.set("age_record_deletes_in_window", cw.ageDels)
	}
	if cw.unparsed > 0 {
		b.rep.set("heartbeats_unparsable", cw.unparsed)
	}
	fmt.Fprintf(logw, "  checkpoints: %.2f heartbeats/s per member (worst), each life every %.2fs (worst member; longest gap %.2fs), %.1f etcd writes/s for them, %d age record writes\n",
		worstRate, worstMean, worstGap, float64(cw.beatPuts+cw.agePuts)/win, cw.agePuts)
}
