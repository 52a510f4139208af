package bench

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/observe"
)

// heldScript runs under `etcdctl lock` once the lock is held: it says so on
// the shared pipe (with its contender tag) and then idles forever.
const heldScript = `echo held "$0" "$ETCD_LOCK_KEY"; exec sleep 2147483647`

// restartDelay is how long a contender whose etcdctl exited waits before it
// is started again, as a pod with restartPolicy Always would be.
const restartDelay = time.Second

// heldEvent is one command that started under the lock.
type heldEvent struct {
	tag string
	at  time.Time
}

// heldLog records when each contender's command started, from the lines
// the commands print on one shared pipe.
type heldLog struct {
	mu     sync.Mutex
	byTag  map[string]time.Time
	byLife map[int][]heldEvent
	notify chan struct{}
}

func newHeldLog() *heldLog {
	return &heldLog{byTag: make(map[string]time.Time), byLife: make(map[int][]heldEvent), notify: make(chan struct{})}
}

// parseTag splits a contender tag b<life>.<contender>.<generation>.
func parseTag(tag string) (life, contender, gen int, ok bool) {
	f := strings.Split(strings.TrimPrefix(tag, "b"), ".")
	if !strings.HasPrefix(tag, "b") || len(f) != 3 {
		return 0, 0, 0, false
	}
	var err [3]error
	life, err[0] = strconv.Atoi(f[0])
	contender, err[1] = strconv.Atoi(f[1])
	gen, err[2] = strconv.Atoi(f[2])
	return life, contender, gen, err[0] == nil && err[1] == nil && err[2] == nil
}

func (h *heldLog) read(r *os.File) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		now := time.Now()
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "held" {
			continue
		}
		life, _, _, ok := parseTag(f[1])
		if !ok {
			continue
		}
		h.mu.Lock()
		if _, seen := h.byTag[f[1]]; !seen {
			h.byTag[f[1]] = now
			h.byLife[life] = append(h.byLife[life], heldEvent{tag: f[1], at: now})
		}
		close(h.notify)
		h.notify = make(chan struct{})
		h.mu.Unlock()
	}
}

// waitUntil waits until cond (called with h.mu held) is true.
func (h *heldLog) waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	return waitNotified(ctx, timeout, 0, func() (bool, <-chan struct{}, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		return cond(), h.notify, nil
	})
}

// slot is one contender of one life: an `etcdctl lock` process, started
// again when it exits unless the bench killed it.
type slot struct {
	life, c int
	mu      sync.Mutex
	gen     int
	p       *proc
	tag     string
	stopped bool // killed by the bench: not restarted
}

func (s *slot) current() (*proc, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p, s.tag
}

// kill kills the slot's process group for good.
func (s *slot) kill() {
	s.mu.Lock()
	s.stopped = true
	p := s.p
	s.mu.Unlock()
	if p != nil {
		p.killGroup()
	}
}

// baseline runs the contenders of the do-it-yourself design.
type baseline struct {
	b     *bench
	ctx   context.Context
	out   *os.File // write end of the shared pipe
	errf  *os.File
	wg    sync.WaitGroup
	mu    sync.Mutex
	exits int
}

// spawn starts the slot's next process.
func (bl *baseline) spawn(s *slot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return fmt.Errorf("slot stopped")
	}
	s.gen++
	tag := fmt.Sprintf("b%d.%d.%d", s.life, s.c, s.gen)
	p, err := bl.b.ps.start("etcdctl lock "+tag, bl.out, bl.errf,
		bl.b.bins.Etcdctl, "--endpoints", bl.b.endpoint, "lock", "--ttl", "2",
		fmt.Sprintf("%s%d", lockPrefix, s.life), "--", "sh", "-c", heldScript, tag)
	if err != nil {
		return err
	}
	s.p, s.tag = p, tag
	return nil
}

// start starts the slot's first process, then keeps it running.
func (bl *baseline) start(s *slot) error {
	if err := bl.spawn(s); err != nil {
		return err
	}
	bl.wg.Add(1)
	go func() {
		defer bl.wg.Done()
		for {
			p, _ := s.current()
			select {
			case <-p.done:
			case <-bl.ctx.Done():
				return
			}
			s.mu.Lock()
			stopped := s.stopped
			s.mu.Unlock()
			if stopped {
				return
			}
			bl.mu.Lock()
			bl.exits++
			bl.mu.Unlock()
			if sleepCtx(bl.ctx, restartDelay) != nil || bl.spawn(s) != nil {
				return
			}
		}
	}()
	return nil
}

// phaseBaseline runs the do-it-yourself design against the same etcd: each
// life is its own `etcdctl lock --ttl 2 <name> <command>` process, two
// contenders per life, so that failover exists. A contender whose etcdctl
// exits (for example "session is expired" while it waits) is started again
// after a second, as Kubernetes would restart its pod.
func (b *bench) phaseBaseline(ctx context.Context) error {
	lives := b.cfg.baselineLives
	// Each etcdctl keeps ~4.5 MiB of its own (RssAnon) and shares its text.
	const perProc = 6 << 20
	if avail := observe.MemInfo("MemAvailable"); avail > 0 {
		maxLives := int(float64(avail) * 0.6 / (2 * perProc))
		if lives > maxLives {
			fmt.Fprintf(logw, "  baseline: %d lives would need ~%s of memory; MemAvailable is %s: running %d lives\n",
				lives, iec(float64(lives*2*perProc)), iec(float64(avail)), maxLives)
			b.rep.set("baseline_lives_capped_from", lives)
			lives = maxLives
		}
	}
	b.rep.set("baseline_lives", lives)

	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	hl := newHeldLog()
	go hl.read(r)
	errPath := filepath.Join(b.logDir, "baseline-etcdctl.log")
	errf, err := os.Create(errPath)
	if err != nil {
		w.Close()
		return err
	}
	defer errf.Close()

	sctx, stopSlots := context.WithCancel(ctx)
	bl := &baseline{b: b, ctx: sctx, out: w, errf: errf}
	slots := make([][2]*slot, lives)
	for i := range slots {
		slots[i] = [2]*slot{{life: i, c: 0}, {life: i, c: 1}}
	}
	defer func() {
		stopSlots()
		for _, ss := range slots {
			ss[0].kill()
			ss[1].kill()
		}
		bl.wg.Wait()
		w.Close()
		bl.mu.Lock()
		b.rep.set("baseline_contender_restarts", bl.exits)
		bl.mu.Unlock()
		if reasons := countLines(errPath, 5); len(reasons) > 0 {
			b.rep.set("baseline_etcdctl_errors", reasons)
		}
	}()

	// Start latency: one life at a time, from process start to its command
	// running under the lock; its second contender starts right after.
	var startMS []float64
	defer func() {
		b.rep.set("baseline_start_p50_ms", percentile(startMS, 50))
		b.rep.set("baseline_start_p99_ms", percentile(startMS, 99))
		b.rep.set("baseline_start_n", len(startMS))
	}()
	seq := min(lives, b.cfg.baselineStartTrials)
	for i := range seq {
		s0 := slots[i][0]
		if err := bl.start(s0); err != nil {
			return err
		}
		p, tag := s0.current()
		if err := hl.waitUntil(ctx, 15*time.Second, func() bool { _, ok := hl.byTag[tag]; return ok }); err != nil {
			return fmt.Errorf("baseline life %d: its command never started: %w", i, err)
		}
		hl.mu.Lock()
		startMS = append(startMS, ms(hl.byTag[tag].Sub(p.started)))
		hl.mu.Unlock()
		if err := bl.start(slots[i][1]); err != nil {
			return err
		}
	}

	// Each etcdctl costs CPU all the time (its runtime, its session's
	// keepalives). More of them than the machine can run starves etcd, and
	// then every session expires and nothing is measured (a 2-core machine
	// cannot run 2000 of them). Unless -baseline-lives was given, keep their
	// total below half the machine, measured on the contenders running now.
	if lives > seq && seq > 0 && ctx.Err() == nil {
		lives = b.baselineCPUCap(ctx, slots[:seq], lives)
		slots = slots[:lives]
	}

	// The rest, both contenders at once, a few processes at a time: either
	// may win; the other is the one that takes over.
	t0 := time.Now()
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	// Starting the processes is most of this phase's time. With a time
	// budget, stop starting new lives at 40% of what is left, and measure
	// the lives started by then.
	spawnUntil := time.Time{}
	if dl, ok := ctx.Deadline(); ok {
		spawnUntil = t0.Add(time.Until(dl) * 40 / 100)
	}
	started := lives
	for i := seq; i < lives && ctx.Err() == nil; i++ {
		if !spawnUntil.IsZero() && time.Now().After(spawnUntil) {
			started = i
			break
		}
		for c := range 2 {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := bl.start(slots[i][c]); err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if started < lives {
		fmt.Fprintf(logw, "  baseline: time budget: measuring the %d lives started by now, of %d\n", started, lives)
		b.rep.set("baseline_lives_planned", lives)
		b.rep.set("baseline_lives", started)
		lives = started
		slots = slots[:lives]
	}
	fmt.Fprintf(logw, "  baseline: %d etcdctl processes started in %.1fs\n", 2*lives, time.Since(t0).Seconds())
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	go func() {
		for range progress.C {
			hl.mu.Lock()
			n := len(hl.byLife)
			hl.mu.Unlock()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			keys, _ := count(cctx, b.cli, lockPrefix)
			cancel()
			bl.mu.Lock()
			exits := bl.exits
			bl.mu.Unlock()
			fmt.Fprintf(logw, "  baseline: %.0fs: %d of %d lives have held their lock, %d lock keys, %d etcdctl restarts\n",
				time.Since(t0).Seconds(), n, lives, keys, exits)
		}
	}()
	holdWait := 3 * time.Minute
	if dl, ok := ctx.Deadline(); ok {
		holdWait = min(holdWait, time.Until(dl)*25/100)
	}
	err = hl.waitUntil(ctx, holdWait, func() bool { return len(hl.byLife) >= lives })
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		hl.mu.Lock()
		n := len(hl.byLife)
		hl.mu.Unlock()
		fmt.Fprintf(logw, "  baseline: only %d of %d lives ever held their lock after %s; measuring those\n", n, lives, holdWait.Round(time.Second))
		b.rep.set("baseline_lives_never_held", lives-n)
	}
	// Every second contender is queued when the lock prefix holds 2 keys
	// per life. Under load some never are: see lockState.
	var last int64 = -1
	keysUntil := time.Now().Add(30 * time.Second)
	if b.cfg.quick {
		keysUntil = time.Now().Add(2 * time.Second)
	}
	for stable := 0; stable < 10 && time.Now().Before(keysUntil); {
		c, err := count(ctx, b.cli, lockPrefix)
		if err != nil {
			return err
		}
		if c >= int64(2*lives) {
			break
		}
		if c == last {
			stable++
		} else {
			stable, last = 0, c
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	progress.Stop()
	b.rep.set("baseline_spawn_s", time.Since(t0).Seconds())
	fmt.Fprintf(logw, "  baseline: lock keys settled after %.1fs\n", time.Since(t0).Seconds())
	if err := sleepCtx(ctx, b.cfg.settleExtra); err != nil {
		return err
	}

	// RSS of every etcdctl and its command, two contenders per life.
	pids := func() (all []int, etcdctls int) {
		for _, ss := range slots {
			for _, s := range ss {
				p, _ := s.current()
				if p == nil || p.exited() {
					continue
				}
				etcdctls++
				all = append(all, p.pid)
				all = append(all, observe.Children(p.pid)...)
			}
		}
		return all, etcdctls
	}
	var rss, anon, pss float64
	all, nctl := pids()
	for _, pid := range all {
		if m, err := observe.ReadMem(pid); err == nil {
			rss += float64(m.RSS)
			anon += float64(m.Anon)
		}
		if p, err := observe.PSS(pid); err == nil {
			pss += float64(p)
		}
	}
	b.rep.set("baseline_rss_bytes_per_life", rss/float64(lives))
	b.rep.set("baseline_pss_bytes_per_life", pss/float64(lives))
	b.rep.set("baseline_rss_anon_bytes_per_life", anon/float64(lives))
	b.rep.set("baseline_processes", len(all))
	b.rep.set("baseline_etcdctl_processes", nctl)

	// Split brain: a contender whose session expired while it ran its
	// command keeps running it (etcdctl lock does not watch its session
	// once the command runs), and the other contender takes the lock too.
	keys, runners, err := b.lockState(ctx, slots, hl)
	if err != nil {
		return err
	}
	var healthy []int // one runner and one queued contender
	two := 0
	for i := range lives {
		if runners[i] >= 2 {
			two++
		}
		if keys[i] == 2 && runners[i] == 1 {
			healthy = append(healthy, i)
		}
	}
	b.rep.set("baseline_lives_with_two_runners", two)
	b.rep.set("baseline_lives_healthy", len(healthy))
	if two > 0 {
		fmt.Fprintf(logw, "  baseline: %d lives have two commands running at once (a holder whose session expired keeps running)\n", two)
	}

	// Failover: SIGKILL the holder's process group (etcdctl and its
	// command: the pod dies) of lives with one runner and one queued
	// contender; time until a command of the life runs again.
	rand.Shuffle(len(healthy), func(i, j int) { healthy[i], healthy[j] = healthy[j], healthy[i] })
	order := healthy[:min(len(healthy), b.cfg.baselineFailovers)]
	var failS, revokeS, afterRevokeMS []float64
	publish := func() {
		b.rep.set("baseline_failover_p50_s", percentile(failS, 50))
		b.rep.set("baseline_failover_p99_s", percentile(failS, 99))
		b.rep.set("baseline_failover_n", len(failS))
		b.rep.set("baseline_failover_revoke_p50_s", percentile(revokeS, 50))
		b.rep.set("baseline_failover_revoke_max_s", maxOf(revokeS))
		b.rep.set("baseline_failover_after_revoke_p50_ms", percentile(afterRevokeMS, 50))
		b.rep.set("baseline_failover_after_revoke_p99_ms", percentile(afterRevokeMS, 99))
	}
	// When each life's lock key of a killed holder went (its lease's
	// expiry), as a watch of the lock keys sees it.
	gone, stopGone := b.watchLockDeletes(ctx)
	defer stopGone()
	for start := 0; start < len(order); start += b.cfg.baselineRound {
		round := order[start:min(start+b.cfg.baselineRound, len(order))]
		killAt := make(map[int]time.Time, len(round))
		for _, life := range round {
			holder := b.baselineHolder(hl, slots[life])
			if holder == nil {
				continue
			}
			killAt[life] = time.Now()
			holder.kill()
			// Spread the kills over etcd's lease-expiry tick (500ms).
			if err := sleepCtx(ctx, time.Duration(rand.IntN(20))*time.Millisecond); err != nil {
				return err
			}
		}
		after := func(life int) (time.Time, bool) {
			for _, e := range hl.byLife[life] {
				if e.at.After(killAt[life]) {
					return e.at, true
				}
			}
			return time.Time{}, false
		}
		err := hl.waitUntil(ctx, 30*time.Second, func() bool {
			for life := range killAt {
				if _, ok := after(life); !ok {
					return false
				}
			}
			return true
		})
		hl.mu.Lock()
		missing := 0
		for life, k := range killAt {
			if t, ok := after(life); ok {
				failS = append(failS, t.Sub(k).Seconds())
				if g, ok := gone.first(life, k); ok && !g.After(t) {
					revokeS = append(revokeS, g.Sub(k).Seconds())
					afterRevokeMS = append(afterRevokeMS, ms(t.Sub(g)))
				}
			} else {
				missing++
			}
		}
		hl.mu.Unlock()
		if missing > 0 {
			fmt.Fprintf(logw, "  baseline failover: %d of %d lives had no new holder: %v\n", missing, len(killAt), err)
			b.rep.set("baseline_failover_missing", missing)
		}
		publish()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}

	// CPU, after the failovers: the killed holders are gone, so the CPU of
	// the etcdctl processes left is scaled to two per life.
	all, nctl = pids()
	cpu0 := make(map[int]float64, len(all))
	for _, pid := range all {
		if c, err := observe.CPU(pid); err == nil {
			cpu0[pid] = c
		}
	}
	etcdCPU0, _ := observe.CPU(b.etcd.pid)
	met0, _ := scrapeMetrics(b.metricsURL)
	w0 := time.Now()
	if err := sleepCtx(ctx, b.cfg.baselineWindow); err != nil {
		return err
	}
	var cpu float64
	for pid, c0 := range cpu0 {
		if c, err := observe.CPU(pid); err == nil {
			cpu += c - c0
		}
	}
	etcdCPU1, _ := observe.CPU(b.etcd.pid)
	met1, _ := scrapeMetrics(b.metricsURL)
	win := time.Since(w0).Seconds()
	k := float64(lives) / 1000
	if nctl > 0 {
		b.rep.set("baseline_cpu_per_1k_lives", cpu/win/float64(nctl)*2*1000)
	}
	b.rep.set("baseline_cpu_etcdctl_processes", nctl)
	b.rep.set("baseline_etcd_cpu_per_1k_lives", (etcdCPU1-etcdCPU0)/win/k)
	b.rep.set("baseline_etcd_cpu_cores", (etcdCPU1-etcdCPU0)/win)
	b.rep.set("baseline_etcd_proposals_committed_per_s", delta(met0, met1, "etcd_server_proposals_committed_total")/win)
	b.rep.set("baseline_cpu_window_s", win)

	// Tear down: kill every process group and revoke their leases, so etcd
	// is quiet for the next phase.
	stopSlots()
	for _, ss := range slots {
		ss[0].kill()
		ss[1].kill()
	}
	b.revokeLocks(ctx)

	// Duplicates, last (a run short of time keeps the figures above), on
	// lives of their own: under load the ones above may no longer have one
	// holder and one queued contender each.
	return b.baselineDuplicates(ctx, bl, hl, 1_000_000)
}

// lockDeletes is when a watch of the lock keys saw each life's keys
// deleted.
type lockDeletes struct {
	mu sync.Mutex
	at map[int][]time.Time
}

// first returns the first deletion of a key of life after t.
func (d *lockDeletes) first(life int, t time.Time) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, g := range d.at[life] {
		if g.After(t) {
			return g, true
		}
	}
	return time.Time{}, false
}

// watchLockDeletes records the deletions of lock keys until stop.
func (b *bench) watchLockDeletes(ctx context.Context) (*lockDeletes, func()) {
	ctx, stop := context.WithCancel(ctx)
	d := &lockDeletes{at: make(map[int][]time.Time)}
	wch := b.cli.Watch(ctx, lockPrefix, clientv3.WithPrefix(), clientv3.WithFilterPut())
	go func() {
		for wr := range wch {
			now := time.Now()
			d.mu.Lock()
			for _, ev := range wr.Events {
				name, _, _ := strings.Cut(strings.TrimPrefix(string(ev.Kv.Key), lockPrefix), "/")
				if life, err := strconv.Atoi(name); err == nil {
					d.at[life] = append(d.at[life], now)
				}
			}
			d.mu.Unlock()
		}
	}()
	return d, stop
}

// revokeLocks revokes the lease of every lock key of the baseline.
func (b *bench) revokeLocks(ctx context.Context) {
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := b.cli.Get(gctx, lockPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return
	}
	seen := make(map[clientv3.LeaseID]bool)
	for _, kv := range resp.Kvs {
		id := clientv3.LeaseID(kv.Lease)
		if id != 0 && !seen[id] {
			seen[id] = true
			_, _ = b.cli.Revoke(gctx, id)
		}
	}
}

// baselineDuplicates starts baselineDupTrials lives of two contenders each
// (numbered from first), and once each has a holder and a queued contender,
// SIGKILLs the holder's etcdctl process alone (a crash of the lock holder's
// process, as an OOM kill would be, not of its whole pod). It waits until the
// other contender runs the command, and counts the lives whose old command
// still runs then: etcdctl lock does not take its command with it when it
// dies, so once its lease expires the life runs twice. The orphans are
// killed afterwards.
func (b *bench) baselineDuplicates(ctx context.Context, bl *baseline, hl *heldLog, first int) error {
	n := b.cfg.baselineDupTrials
	if n == 0 {
		return nil
	}
	slots := make([][2]*slot, n)
	for i := range slots {
		slots[i] = [2]*slot{{life: first + i, c: 0}, {life: first + i, c: 1}}
	}
	var killed []int // the killed etcdctls: their process groups hold the commands left running
	defer func() {
		for _, ss := range slots {
			ss[0].kill()
			ss[1].kill()
		}
		for _, g := range killed {
			_ = syscall.Kill(-g, syscall.SIGKILL)
		}
		b.revokeLocks(ctx)
	}()
	held := func(s *slot) bool { // hl.mu held
		_, tag := s.current()
		_, ok := hl.byTag[tag]
		return ok
	}
	allHeld := func(c int) func() bool {
		return func() bool {
			for _, ss := range slots {
				if !held(ss[c]) {
					return false
				}
			}
			return true
		}
	}
	// The first contenders, each to its lock; then the second ones, queued.
	for _, ss := range slots {
		if err := bl.spawn(ss[0]); err != nil {
			return err
		}
	}
	if err := hl.waitUntil(ctx, 30*time.Second, allHeld(0)); err != nil {
		return fmt.Errorf("duplicate trials: the first contenders do not all hold their locks: %w", err)
	}
	for _, ss := range slots {
		if err := bl.spawn(ss[1]); err != nil {
			return err
		}
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if c, err := count(ctx, b.cli, lockPrefix); err == nil && c >= int64(2*n) {
			break
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	commands := make([][]int, n)
	for i, ss := range slots {
		p, _ := ss[0].current()
		commands[i] = observe.Children(p.pid)
		if p.signal(syscall.SIGKILL) == nil {
			killed = append(killed, p.pid)
		}
	}
	err := hl.waitUntil(ctx, 30*time.Second, allHeld(1))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	taken, dups := 0, 0
	for i, ss := range slots {
		hl.mu.Lock()
		ok := held(ss[1])
		hl.mu.Unlock()
		if !ok {
			continue
		}
		taken++
		for _, pid := range commands[i] {
			if !observe.Gone(pid, 0) {
				dups++
				break
			}
		}
	}
	if taken < n {
		fmt.Fprintf(logw, "  baseline duplicates: %d of %d lives had no new holder: %v\n", n-taken, n, err)
	}
	fmt.Fprintf(logw, "  baseline duplicates: the holder's etcdctl SIGKILLed alone in %d lives: %d ran their command twice\n", taken, dups)
	b.rep.set("baseline_dup_trials", taken)
	b.rep.set("baseline_duplicates", dups)
	return nil
}

// baselineCPUCap measures the CPU of the running etcdctl processes over a
// few seconds and returns how many lives fit in a quarter of the machine's
// cores. Past that, on a 2-core machine, etcd answers late, sessions (TTL
// 2s) expire, etcdctl exits, its restarts cost more CPU, and the baseline
// collapses before anything is measured (seen at 257 lives: after 225 s,
// 63 lives had never held their lock). The measurement needs enough
// processes running for long enough; with fewer, lives is kept.
func (b *bench) baselineCPUCap(ctx context.Context, running [][2]*slot, lives int) int {
	if len(running) < 50 {
		return lives
	}
	var pids []int
	for _, ss := range running {
		for _, s := range ss {
			if p, _ := s.current(); p != nil && !p.exited() {
				pids = append(pids, p.pid)
			}
		}
	}
	c0 := make(map[int]float64, len(pids))
	for _, pid := range pids {
		if c, err := observe.CPU(pid); err == nil {
			c0[pid] = c
		}
	}
	w0 := time.Now()
	if sleepCtx(ctx, 3*time.Second) != nil || len(c0) == 0 {
		return lives
	}
	var cpu float64
	for pid, c := range c0 {
		if c1, err := observe.CPU(pid); err == nil {
			cpu += c1 - c
		}
	}
	perProc := cpu / time.Since(w0).Seconds() / float64(len(c0))
	b.rep.set("baseline_etcdctl_idle_cpu_cores_each", perProc)
	if perProc <= 0 {
		return lives
	}
	const share = 0.25
	need := 2 * perProc * float64(lives)
	fit := int(share * float64(runtime.NumCPU()) / (2 * perProc))
	if fit >= lives {
		return lives
	}
	if b.cfg.baselineLivesForced {
		fmt.Fprintf(logw, "  baseline: %d lives need ~%.1f cores of etcdctl alone on this %d-core machine; running them anyway (-baseline-lives)\n",
			lives, need, runtime.NumCPU())
		return lives
	}
	fit = max(fit, len(running))
	why := fmt.Sprintf("%d lives would need ~%.1f CPU cores for their etcdctl processes alone (2 per life at %.4f each, measured on %d running); capped to %.0f%% of %d cores",
		lives, need, perProc, len(c0), share*100, runtime.NumCPU())
	fmt.Fprintf(logw, "  baseline: %s: running %d lives\n", why, fit)
	b.rep.set("baseline_lives_capped_from", lives)
	b.rep.set("baseline_cap_reason", why)
	b.rep.set("baseline_lives", fit)
	return fit
}

// lockState returns, per life, how many lock keys etcd holds and how many
// of its contenders run their command (printed "held" and still run).
func (b *bench) lockState(ctx context.Context, slots [][2]*slot, hl *heldLog) (keys, runners []int, err error) {
	keys = make([]int, len(slots))
	runners = make([]int, len(slots))
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := b.cli.Get(gctx, lockPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, nil, err
	}
	for _, kv := range resp.Kvs {
		name, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), lockPrefix), "/")
		if i, err := strconv.Atoi(name); err == nil && i < len(keys) {
			keys[i]++
		}
	}
	hl.mu.Lock()
	defer hl.mu.Unlock()
	for i, ss := range slots {
		for _, s := range ss {
			p, tag := s.current()
			if _, held := hl.byTag[tag]; held && p != nil && !p.exited() {
				runners[i]++
			}
		}
	}
	return keys, runners, nil
}

// baselineHolder returns the slot of life whose running process printed
// the life's latest "held" line.
func (b *bench) baselineHolder(hl *heldLog, ss [2]*slot) *slot {
	hl.mu.Lock()
	defer hl.mu.Unlock()
	ev := hl.byLife[ss[0].life]
	if len(ev) == 0 {
		return nil
	}
	last := ev[len(ev)-1].tag
	for _, s := range ss {
		p, tag := s.current()
		if tag == last && p != nil && !p.exited() {
			return s
		}
	}
	return nil
}

// countLines returns the n most frequent lines of a file, with counts.
func countLines(path string, n int) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	counts := make(map[string]int)
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			counts[line]++
		}
	}
	type lc struct {
		line string
		n    int
	}
	var all []lc
	for l, c := range counts {
		all = append(all, lc{l, c})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || (all[i].n == all[j].n && all[i].line < all[j].line) })
	var out []string
	for _, x := range all[:min(n, len(all))] {
		out = append(out, fmt.Sprintf("%d x %s", x.n, x.line))
	}
	return out
}
