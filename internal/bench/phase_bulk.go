package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/observe"
)

// bulkName is the name of the i-th life of the bulk phase.
func bulkName(i int) string { return fmt.Sprintf("b%06d", i) }

// bulkSpec is what a bulk phase places and moves.
type bulkSpec struct {
	members  []string // ids of the fresh members
	lives    int
	failover bool // SIGKILL the member holding the most before the SIGTERM
}

// phaseBulk places N lives on 3 fresh members, measures the steady state,
// then kills one member (SIGKILL) and stops another (SIGTERM), timing how
// long until every life they held has a record of another holder.
func (b *bench) phaseBulk(ctx context.Context) error {
	return b.bulk(ctx, bulkSpec{members: []string{"m1", "m2", "m3"}, lives: b.cfg.lives, failover: true})
}

// bulk places spec.lives lives on fresh members, measures the steady
// state, then (with spec.failover) kills the member holding the most
// (SIGKILL), and stops the one holding the most then (SIGTERM), timing how
// long until every life it held has a record of another holder.
func (b *bench) bulk(ctx context.Context, spec bulkSpec) error {
	n := spec.lives
	ms, err := b.startMembers(ctx, spec.members...)
	if err != nil {
		return err
	}
	// Idle: no lives at all.
	if err := sleepCtx(ctx, time.Second); err != nil {
		return err
	}
	var idle []float64
	var idlePSS []float64
	for _, m := range ms {
		rss, err := treeRSS(m.p.pid)
		if err != nil {
			return err
		}
		idle = append(idle, float64(rss))
		if pss, err := treePSS(m.p.pid); err == nil {
			idlePSS = append(idlePSS, float64(pss))
		}
	}
	idleRSS := mean(idle)
	b.rep.set("idle_member_rss_bytes", idleRSS)

	// Bulk put, then wait for every life to have a record.
	cpuOf := func() (members, etcd float64) {
		for _, m := range ms {
			c, _ := treeCPU(m.p.pid)
			members += c
		}
		etcd, _ = observe.CPU(b.etcd.pid)
		return members, etcd
	}
	mc0, ec0 := cpuOf()
	pm0, _ := scrapeMetrics(b.metricsURL)
	probe := startRenewProbe(ctx, b.cli)
	defer probe.stop(b.rep, "place")
	t0 := time.Now()
	if err := bulkPut(ctx, b.cli, n); err != nil {
		return err
	}
	b.rep.set("bulk_put_s", time.Since(t0).Seconds())
	marks := []struct {
		key  string
		frac float64
	}{{"place_50pct_s", 0.5}, {"place_90pct_s", 0.9}, {"place_99pct_s", 0.99}}
	next := 0
	placed := int64(0)
	deadline := time.Now().Add(b.cfg.placeTimeout)
	// Progress: [seconds, lives with a record, lives the members hold,
	// sessions the members lost so far] (the last two from their /metrics).
	var progress [][4]float64
	defer func() { b.rep.set("place_progress", progress) }()
	var lastProgress time.Time
	every := 5 * time.Second
	if b.cfg.quick {
		every = 2 * time.Second
	}
	for {
		c, err := count(ctx, b.cli, agesPrefix+"b")
		if err != nil {
			return err
		}
		placed = c
		if time.Since(lastProgress) >= every {
			lastProgress = time.Now()
			mm := b.memberMetrics("immortald_lives_held", "immortald_session_losses_total")
			progress = append(progress, [4]float64{round(time.Since(t0).Seconds(), 1), float64(c), mm["immortald_lives_held"], mm["immortald_session_losses_total"]})
			fmt.Fprintf(logw, "  %5.1fs: %d lives have a record, members hold %.0f, sessions lost so far %.0f\n",
				time.Since(t0).Seconds(), c, mm["immortald_lives_held"], mm["immortald_session_losses_total"])
		}
		for next < len(marks) && float64(c) >= marks[next].frac*float64(n) {
			b.rep.set(marks[next].key, time.Since(t0).Seconds())
			next++
		}
		if c >= int64(n) {
			b.rep.set("place_all_s", time.Since(t0).Seconds())
			break
		}
		if time.Now().After(deadline) {
			b.rep.set("place_timeout_placed", placed)
			fmt.Fprintf(logw, "  placement timed out: %d of %d lives have a record after %s\n", placed, n, b.cfg.placeTimeout)
			break
		}
		if err := sleepCtx(ctx, b.cfg.pollEvery); err != nil {
			return err
		}
	}
	mc1, ec1 := cpuOf()
	pd := time.Since(t0).Seconds()
	probe.stop(b.rep, "place")
	if pm1, err := scrapeMetrics(b.metricsURL); err == nil {
		b.setEtcdDisk("place_", pm0, pm1, pd)
	}
	b.rep.set("place_per_s", float64(placed)/pd)
	if pm1, err := scrapeMetrics(b.metricsURL); err == nil {
		// The cost model's terms: what placing a life cost etcd.
		b.rep.set("place_watch_events_per_life", delta(pm0, pm1, "etcd_debugging_mvcc_events_total")/float64(n))
		b.rep.set("place_txns_per_life", delta(pm0, pm1, "etcd_mvcc_txn_total")/float64(n))
		b.rep.set("place_puts_per_life", delta(pm0, pm1, "etcd_mvcc_put_total")/float64(n))
	}
	b.rep.set("place_members_cpu_cores", (mc1-mc0)/pd)
	b.rep.set("place_etcd_cpu_cores", (ec1-ec0)/pd)
	fmt.Fprintf(logw, "  placed %d lives in %.1fs (members used %.2f cores, etcd %.2f)\n", placed, pd, (mc1-mc0)/pd, (ec1-ec0)/pd)
	if placed < int64(n) {
		// Nothing after this is a steady state: do not pretend.
		return fmt.Errorf("placement incomplete: %d of %d lives had a record after %s; steady state, failover_all and handoff_all not measured",
			placed, n, b.cfg.placeTimeout)
	}

	if err := b.settleBulk(ctx, "placement"); err != nil {
		return err
	}

	// Steady state: CPU of the members and etcd over a window, RSS sampled
	// every second, etcd counters.
	if err := b.steady(ctx, n, idleRSS, mean(idlePSS)); err != nil {
		return err
	}

	// Failover of everything one member held: SIGKILL.
	if spec.failover {
		if err := b.moveAll(ctx, syscall.SIGKILL, "failover_all"); err != nil {
			return err
		}
		if err := b.settleBulk(ctx, "failover"); err != nil {
			return err
		}
	}
	// Handoff of everything one member held: SIGTERM.
	if err := b.moveAll(ctx, syscall.SIGTERM, "handoff_all"); err != nil {
		return err
	}
	holders, _, err := scanAges(ctx, b.cli, "b")
	if err != nil {
		return err
	}
	b.rep.set("final_holders", holderCounts(holders))
	return nil
}

// bulkPut puts lives/b000000.. in Txns of 128 puts (etcd's default
// --max-txn-ops), 4 at a time.
func bulkPut(ctx context.Context, cli *clientv3.Client, n int) error {
	const per = 128
	var failed atomic.Int64
	err := parallel(ctx, (n+per-1)/per, 4, func(j int) error {
		ops := make([]clientv3.Op, 0, per)
		for i := j * per; i < min((j+1)*per, n); i++ {
			ops = append(ops, clientv3.OpPut(livesPrefix+bulkName(i), ""))
		}
		// A user retries what etcd refuses for its own backpressure
		// ("too many requests": its apply lags its commit by 5000).
		var err error
		for try := 0; try < 20 && ctx.Err() == nil; try++ {
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err = cli.Txn(tctx).Then(ops...).Commit()
			cancel()
			if err == nil || !errors.Is(err, rpctypes.ErrTooManyRequests) {
				break
			}
			_ = sleepCtx(ctx, time.Duration(100*(try+1))*time.Millisecond)
		}
		if err != nil {
			failed.Add(1)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("bulk put: %d txns failed: %w", failed.Load(), err)
	}
	return nil
}

// settleBulk waits until the election keys stop changing in number (every
// candidate has campaigned) and then a little more.
func (b *bench) settleBulk(ctx context.Context, what string) error {
	t0 := time.Now()
	deadline := t0.Add(b.cfg.settleTimeout)
	var last int64 = -1
	stable := 0
	for stable < 3 {
		c, err := count(ctx, b.cli, elecPrefix)
		if err != nil {
			return err
		}
		if c == last {
			stable++
		} else {
			stable, last = 0, c
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(logw, "  settle after %s: election keys still changing after %s (%d)\n", what, b.cfg.settleTimeout, c)
			break
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
	b.rep.set("settle_after_"+what+"_s", time.Since(t0).Seconds())
	b.rep.set("election_keys_after_"+what, last)
	return sleepCtx(ctx, b.cfg.settleExtra)
}

// steady measures the members and etcd over cfg.window.
func (b *bench) steady(ctx context.Context, n int, idleRSS, idlePSS float64) error {
	ms := b.alive()
	cpu0 := make([]float64, len(ms))
	for i, m := range ms {
		c, err := treeCPU(m.p.pid)
		if err != nil {
			return err
		}
		cpu0[i] = c
	}
	etcdCPU0, _ := observe.CPU(b.etcd.pid)
	met0, err := scrapeMetrics(b.metricsURL)
	if err != nil {
		return err
	}
	hb0 := b.memberMetricsEach(heartbeatMetrics...)
	cw, err := b.startCheckpointWatch(ctx)
	if err != nil {
		return err
	}
	defer cw.stop()
	t0 := time.Now()
	rss := make([][]float64, len(ms))
	pss := make([][]float64, len(ms))
	for time.Since(t0) < b.cfg.window {
		for i, m := range ms {
			if v, err := treeRSS(m.p.pid); err == nil {
				rss[i] = append(rss[i], float64(v))
			}
			if p, err := treePSS(m.p.pid); err == nil {
				pss[i] = append(pss[i], float64(p))
			}
		}
		if err := sleepCtx(ctx, min(time.Second, b.cfg.window-time.Since(t0))); err != nil {
			return err
		}
	}
	var cpu float64
	for i, m := range ms {
		c, err := treeCPU(m.p.pid)
		if err != nil {
			return err
		}
		cpu += c - cpu0[i]
	}
	etcdCPU1, _ := observe.CPU(b.etcd.pid)
	met1, err := scrapeMetrics(b.metricsURL)
	if err != nil {
		return err
	}
	hb1 := b.memberMetricsEach(heartbeatMetrics...)
	win := time.Since(t0).Seconds()
	cw.stop()
	etcdRSS, _ := observe.ReadMem(b.etcd.pid)

	holders, _, err := scanAges(ctx, b.cli, "b")
	if err != nil {
		return err
	}
	counts := holderCounts(holders)
	var totalRSS, totalPSS float64
	per := make(map[string]any)
	for i, m := range ms {
		r := percentile(rss[i], 50)
		p := percentile(pss[i], 50)
		totalRSS += r
		totalPSS += p
		per[m.id] = map[string]any{"lives": counts[m.id], "rss_bytes": r, "pss_bytes": p}
	}
	k := float64(n) / 1000
	b.rep.set("cpu_window_s", win)
	b.rep.set("holders_at_steady_state", counts)
	b.rep.set("members_at_steady_state", per)
	b.rep.set("rss_bytes_per_life", (totalRSS-float64(len(ms))*idleRSS)/float64(n))
	b.rep.set("pss_bytes_per_life", (totalPSS-float64(len(ms))*idlePSS)/float64(n))
	b.rep.set("member_rss_bytes_max", maxOf(flatten(rss)))
	b.rep.set("cpu_per_1k_lives", cpu/win/k)
	b.rep.set("members_cpu_cores", cpu/win)
	b.rep.set("etcd_cpu_per_1k_lives", (etcdCPU1-etcdCPU0)/win/k)
	b.rep.set("etcd_cpu_cores", (etcdCPU1-etcdCPU0)/win)
	b.rep.set("etcd_rss_bytes", float64(etcdRSS.RSS))
	b.rep.set("etcd_txn_per_s", delta(met0, met1, "etcd_mvcc_txn_total")/win)
	b.rep.set("etcd_txn_per_s_source", "etcd_mvcc_txn_total (mvcc transactions of more than one operation, reads included)")
	b.rep.set("etcd_proposals_committed_per_s", delta(met0, met1, "etcd_server_proposals_committed_total")/win)
	b.rep.set("etcd_puts_per_s", delta(met0, met1, "etcd_mvcc_put_total")/win)
	b.setCheckpoints(ms, hb0, hb1, cw, win)
	b.setEtcdDisk("steady_", met0, met1, win)
	b.rep.set("etcd_db_total_size_bytes", met1["etcd_mvcc_db_total_size_in_bytes"])
	b.rep.set("etcd_db_in_use_bytes", met1["etcd_mvcc_db_total_size_in_use_in_bytes"])
	fmt.Fprintf(logw, "  steady state over %.1fs: members %.2f cores, etcd %.2f cores, %.0f txn/s, %.0f puts/s\n",
		win, cpu/win, (etcdCPU1-etcdCPU0)/win, delta(met0, met1, "etcd_mvcc_txn_total")/win, delta(met0, met1, "etcd_mvcc_put_total")/win)
	return nil
}

// moveAll signals the alive member holding the most bulk lives and times
// until every one of them has a record of another holder.
func (b *bench) moveAll(ctx context.Context, sig syscall.Signal, fig string) error {
	holders, rev, err := scanAges(ctx, b.cli, "b")
	if err != nil {
		return err
	}
	counts := holderCounts(holders)
	var victim *member
	for _, m := range b.alive() {
		if victim == nil || counts[m.id] > counts[victim.id] {
			victim = m
		}
	}
	if victim == nil || counts[victim.id] == 0 {
		return fmt.Errorf("%s: no alive member holds a life", fig)
	}
	want := make(map[string]bool)
	for n, h := range holders {
		if h == victim.id {
			want[n] = true
		}
	}
	b.rep.set(fig+"_victim_lives", len(want))
	b.rep.set(fig+"_members_before", len(b.alive()))

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := b.cli.Watch(wctx, agesPrefix+"b", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	probe := startRenewProbe(ctx, b.cli)
	defer probe.stop(b.rep, fig)
	killAt := time.Now()
	if err := victim.p.signal(sig); err != nil {
		return err
	}
	lat := make([]float64, 0, len(want))
	var doneAt time.Time
	timeout := time.NewTimer(b.cfg.moveTimeout)
	defer timeout.Stop()
	left := len(want)
loop:
	for left > 0 {
		select {
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				return fmt.Errorf("%s: watch ended: %v", fig, wr.Err())
			}
			now := time.Now()
			for _, ev := range wr.Events {
				if ev.Type != mvccpb.PUT {
					continue
				}
				name := strings.TrimPrefix(string(ev.Kv.Key), agesPrefix)
				if !want[name] {
					continue
				}
				if h := holderOf(ev.Kv.Value); h != "" && h != victim.id {
					delete(want, name)
					lat = append(lat, now.Sub(killAt).Seconds())
					left--
					doneAt = now
				}
			}
		case <-timeout.C:
			fmt.Fprintf(logw, "  %s: %d lives of %s still without a new holder after %s\n", fig, left, victim.id, b.cfg.moveTimeout)
			b.rep.set(fig+"_unmoved_at_timeout", left)
			b.rep.set(fig+"_unmoved_examples", b.describe(ctx, want, 3))
			break loop
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	cancel()
	if left == 0 {
		d := doneAt.Sub(killAt)
		if sig == syscall.SIGTERM {
			b.rep.set(fig+"_ms", ms(d))
		} else {
			b.rep.set(fig+"_s", d.Seconds())
		}
	}
	b.rep.set(fig+"_life_p50_s", percentile(lat, 50))
	b.rep.set(fig+"_life_p99_s", percentile(lat, 99))
	if victim.p.wait(30 * time.Second) {
		b.rep.set(fig+"_victim_exit_ms", ms(victim.p.exitedAt.Sub(killAt)))
	} else {
		fmt.Fprintf(logw, "  %s: %s still runs 30s after %s\n", fig, victim.id, sigName(sig))
	}
	fmt.Fprintf(logw, "  %s: %s %s holding %d lives: all moved in %s\n", fig, sigName(sig), victim.id, len(lat)+left, doneAt.Sub(killAt).Round(time.Millisecond))
	return nil
}

// describe returns, for up to n of the names, what etcd holds for them:
// the age record and the election candidates.
func (b *bench) describe(ctx context.Context, names map[string]bool, n int) []string {
	var out []string
	for name := range names {
		if len(out) == n {
			break
		}
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		age, err1 := b.cli.Get(gctx, agesPrefix+name)
		el, err2 := b.cli.Get(gctx, elecPrefix+name+"/", clientv3.WithPrefix())
		cancel()
		if err1 != nil || err2 != nil {
			out = append(out, fmt.Sprintf("%s: %v %v", name, err1, err2))
			continue
		}
		d := name + ": age="
		if len(age.Kvs) > 0 {
			d += string(age.Kvs[0].Value)
		} else {
			d += "none"
		}
		d += " candidates="
		for _, kv := range el.Kvs {
			d += fmt.Sprintf("[%s=%s rev %d]", strings.TrimPrefix(string(kv.Key), elecPrefix+name+"/"), kv.Value, kv.CreateRevision)
		}
		out = append(out, d)
	}
	return out
}

func holderCounts(h map[string]string) map[string]int {
	out := make(map[string]int)
	for _, v := range h {
		out[v]++
	}
	return out
}
