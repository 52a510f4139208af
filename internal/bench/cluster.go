package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/immortald/immortald/registry"
)

// The keyspace the bench drives, under immortald's default prefix.
const (
	prefix      = "/immortals/"
	livesPrefix = prefix + "lives/"
	agesPrefix  = prefix + "ages/"
	elecPrefix  = prefix + "elections/"
	membersPfx  = prefix + "members/"
	lockPrefix  = "/baseline/" // etcdctl lock names of the baseline
)

// bench is one run: the binaries, the etcd process, the members.
type bench struct {
	cfg     config
	ps      *procSet
	ports   portPicker
	workDir string // etcd data; removed at the end
	logDir  string // process logs; kept
	bins    Binaries
	rep     *report

	etcd       *proc
	endpoint   string // host:port of etcd's client URL
	metricsURL string
	cli        *clientv3.Client

	mu          sync.Mutex
	members     map[string]*member // by id, alive or not
	gens        map[string]int
	lastStarted time.Time // when a member last became ready
	quiesced    []float64 // seconds waited for etcd between phases
}

// Binaries are the programs a run starts: immortald, etcd and etcdctl.
type Binaries struct{ Immortald, Etcd, Etcdctl string }

// member is one immortald process.
type member struct {
	id   string
	http string // host:port of /readyz and /metrics
	p    *proc
	log  string
}

// startEtcd starts one etcd process on free loopback ports and connects.
func (b *bench) startEtcd(ctx context.Context) error {
	cport, err := b.ports.pick()
	if err != nil {
		return err
	}
	pport, err := b.ports.pick()
	if err != nil {
		return err
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", cport)
	peer := fmt.Sprintf("http://127.0.0.1:%d", pport)
	logf, err := os.Create(filepath.Join(b.logDir, "etcd.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{
		b.bins.Etcd,
		"--name", "bench",
		"--data-dir", filepath.Join(b.workDir, "etcd-data"),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "bench=" + peer,
		"--quota-backend-bytes", strconv.FormatInt(8<<30, 10),
		// Compact every 5 minutes, as the Kubernetes API server does. With
		// one write per life per second (the design before heartbeats),
		// 100k lives made millions of revisions of history a minute and
		// the bench compacted every 10 s; now history grows with moves
		// only, and a compaction every 10 s (about 14 ms each, stalling
		// applies) was itself the slowest handoff trials.
		"--auto-compaction-mode", "periodic",
		"--auto-compaction-retention", b.cfg.compaction,
	}
	p, err := b.ps.start("etcd", logf, logf, args...)
	if err != nil {
		return err
	}
	b.etcd = p
	b.endpoint = fmt.Sprintf("127.0.0.1:%d", cport)
	b.metricsURL = client + "/metrics"
	b.rep.set("etcd_args", strings.Join(args[1:], " "))

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{b.endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return err
	}
	b.cli = cli
	deadline := time.Now().Add(30 * time.Second)
	for {
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(gctx, "health")
		cancel()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("etcd exited: %v (see %s)", p.waitErr, filepath.Join(b.logDir, "etcd.log"))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not serving after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startMember starts `immortald run` with id (and extra flags) and waits
// until it is ready.
func (b *bench) startMember(ctx context.Context, id string, extra ...string) (*member, error) {
	port, err := b.ports.pick()
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.gens[id]++
	gen := b.gens[id]
	b.mu.Unlock()
	logPath := filepath.Join(b.logDir, fmt.Sprintf("%s.%d.log", id, gen))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	m := &member{id: id, http: fmt.Sprintf("127.0.0.1:%d", port), log: logPath}
	argv := []string{b.bins.Immortald, "run",
		"--id", id,
		"--etcd-endpoints", b.endpoint,
		"--http-addr", m.http,
		"--lease-ttl", b.cfg.leaseTTL,
		"--log-format", "json"}
	m.p, err = b.ps.start("immortald "+id, logf, logf, append(argv, extra...)...)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.members[id] = m
	b.mu.Unlock()
	if err := b.waitReady(ctx, m, 30*time.Second); err != nil {
		return m, err
	}
	b.mu.Lock()
	b.lastStarted = time.Now()
	b.mu.Unlock()
	return m, nil
}

// startMembers starts members with the given ids at once and waits for all.
func (b *bench) startMembers(ctx context.Context, ids ...string) ([]*member, error) {
	out := make([]*member, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = b.startMember(ctx, id)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// waitReady polls /readyz until it answers 200.
func (b *bench) waitReady(ctx context.Context, m *member, timeout time.Duration) error {
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get("http://" + m.http + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if m.p.exited() {
			return fmt.Errorf("member %s exited before it was ready: %v (log %s)", m.id, m.p.waitErr, m.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("member %s not ready after %s (log %s)", m.id, timeout, m.log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// alive returns the members whose process runs, sorted by id.
func (b *bench) alive() []*member {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*member
	for _, m := range b.members {
		if !m.p.exited() {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// reset kills every member, revokes every lease and deletes the keys of
// both designs, so that the next phase starts on a quiet etcd.
func (b *bench) reset(ctx context.Context) {
	for _, m := range b.alive() {
		m.p.killGroup()
		m.p.wait(5 * time.Second)
	}
	if ctx.Err() != nil || b.cli == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if ls, err := b.cli.Leases(rctx); err == nil {
		for _, l := range ls.Leases {
			_, _ = b.cli.Revoke(rctx, l.ID)
		}
	}
	_, _ = b.cli.Delete(rctx, prefix, clientv3.WithPrefix())
	_, _ = b.cli.Delete(rctx, lockPrefix, clientv3.WithPrefix())
	b.quiesce(ctx)
}

// quiesce waits (a bounded time) until etcd has applied what it committed
// and answers a write quickly, so that one phase's aftermath does not count
// against the next. It reports how long it waited.
func (b *bench) quiesce(ctx context.Context) {
	maxWait := time.Minute
	if b.cfg.quick {
		maxWait = 3 * time.Second
	}
	t0 := time.Now()
	for time.Since(t0) < maxWait && ctx.Err() == nil {
		met, err := scrapeMetrics(b.metricsURL)
		backlog := met["etcd_server_proposals_committed_total"] - met["etcd_server_proposals_applied_total"]
		p0 := time.Now()
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, perr := b.cli.Put(pctx, "/bench/quiesce", "")
		cancel()
		if err == nil && perr == nil && backlog < 10 && time.Since(p0) < 50*time.Millisecond {
			break
		}
		_ = sleepCtx(ctx, 200*time.Millisecond)
	}
	b.quiesced = append(b.quiesced, round(time.Since(t0).Seconds(), 2))
	b.rep.set("quiesce_between_phases_s", b.quiesced)
}

// keys is the keyspace the bench drives, for the registry's helpers.
var keys = func() registry.Keys {
	k, err := registry.NewKeys(prefix)
	if err != nil {
		panic(err)
	}
	return k
}()

// watchAges watches, from rev, the one key range that holds ages/ and
// heartbeats/ (and elections/, which lies between them and which AgeView
// ignores): one stream, so a heartbeat and the age records written after it
// arrive in the order etcd applied them. Two watches would not order a
// stopping member's last heartbeat before its successors' first records.
func watchAges(ctx context.Context, cli *clientv3.Client, rev int64) clientv3.WatchChan {
	return cli.Watch(ctx, agesPrefix, clientv3.WithRange(clientv3.GetPrefixRangeEnd(keys.Heartbeats())), clientv3.WithRev(rev))
}

// listAges reads ages/ and heartbeats/ at one revision and returns their
// keys with that revision: the listing a watch of both (watchAges) goes on
// from.
func listAges(ctx context.Context, cli *clientv3.Client) ([]*mvccpb.KeyValue, int64, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(agesPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(keys.Heartbeats(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, 0, err
	}
	kvs := append(resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs...)
	return kvs, resp.Header.Revision, nil
}

// obs is one effective age of a life as the bench's watch saw it: its age
// record as written, or carried forward by its holder's heartbeat (beat).
type obs struct {
	rec  registry.AgeRecord
	at   time.Time // when the watch delivered it
	rev  int64
	del  bool
	beat bool // from a heartbeat, not from a write of the record
}

// ageLog keeps every effective age of every life (each write of its record
// and each heartbeat that carried it forward), with the time the bench saw
// it, from one watch on ages/ and heartbeats/. It is for the small-scale
// trials: a heartbeat adds one entry per life its member holds.
type ageLog struct {
	mu         sync.Mutex
	view       *registry.AgeView
	hist       map[string][]obs
	lastChange time.Time // the last time a life's holder changed
	notify     chan struct{}
	err        error
	decreases  []string // a life's effective age went down within one life id
	badRecords int
}

func startAgeLog(ctx context.Context, cli *clientv3.Client) (*ageLog, error) {
	kvs, rev, err := listAges(ctx, cli)
	if err != nil {
		return nil, err
	}
	view := registry.NewAgeView(keys)
	if err := view.Load(kvs); err != nil {
		return nil, err
	}
	l := &ageLog{view: view, hist: make(map[string][]obs), notify: make(chan struct{}), lastChange: time.Now()}
	wch := watchAges(clientv3.WithRequireLeader(ctx), cli, rev+1)
	go func() {
		for wr := range wch {
			now := time.Now()
			if err := wr.Err(); err != nil {
				l.mu.Lock()
				l.err = err
				l.broadcastLocked()
				l.mu.Unlock()
				return
			}
			l.mu.Lock()
			for _, ev := range wr.Events {
				l.addLocked(ev, now)
			}
			l.broadcastLocked()
			l.mu.Unlock()
		}
		l.mu.Lock()
		if l.err == nil && ctx.Err() == nil {
			l.err = errors.New("watch on ages/ and heartbeats/ closed")
		}
		l.broadcastLocked()
		l.mu.Unlock()
	}()
	return l, nil
}

func (l *ageLog) addLocked(ev *clientv3.Event, now time.Time) {
	changes, err := l.view.Apply(ev)
	if err != nil {
		l.badRecords++
		return
	}
	for _, c := range changes {
		o := obs{rec: c.Rec, at: now, rev: ev.Kv.ModRevision, del: c.Deleted, beat: c.Beat}
		if !o.beat && !o.del {
			// A write of the record: keep it as written (the age a life
			// resumed at, at the time it started), not carried forward by
			// a heartbeat its holder wrote before it.
			if rec, err := registry.ParseAgeRecord(ev.Kv.Value); err == nil {
				o.rec = rec
			}
		}
		h := l.hist[c.Name]
		if !o.del {
			if prev, ok := lastRecord(h); ok {
				if prev.rec.Holder != o.rec.Holder {
					l.lastChange = now
				}
				// The carried age: a record written again from its start
				// (a repair) is not a decrease.
				if prev.rec.LifeID == c.Rec.LifeID && c.Rec.AgeMS < prev.rec.AgeMS {
					l.decreases = append(l.decreases, fmt.Sprintf("%s: %d ms (%s, inc %d%s) after %d ms (%s, inc %d%s)",
						c.Name, c.Rec.AgeMS, c.Rec.Holder, c.Rec.Incarnation, beatNote(o.beat), prev.rec.AgeMS, prev.rec.Holder, prev.rec.Incarnation, beatNote(prev.beat)))
				}
			} else {
				l.lastChange = now
			}
		}
		l.hist[c.Name] = append(h, o)
	}
}

func beatNote(beat bool) string {
	if beat {
		return ", by heartbeat"
	}
	return ""
}

func lastRecord(h []obs) (obs, bool) {
	for i := len(h) - 1; i >= 0; i-- {
		if !h[i].del {
			return h[i], true
		}
	}
	return obs{}, false
}

func (l *ageLog) broadcastLocked() {
	close(l.notify)
	l.notify = make(chan struct{})
}

// waitUntil waits until cond (called with l.mu held) is true, re-checking
// on every watch event and every 25ms.
func (l *ageLog) waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		l.mu.Lock()
		ok, err, ch := cond(), l.err, l.notify
		l.mu.Unlock()
		if ok {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("timed out after %s", timeout)
		case <-ch:
		case <-tick.C:
		}
	}
}

// holders returns the holder of each life's latest record.
func (l *ageLog) holdersLocked(names []string) map[string]obs {
	out := make(map[string]obs, len(names))
	for _, n := range names {
		if o, ok := lastRecord(l.hist[n]); ok {
			out[n] = o
		}
	}
	return out
}

// scanAges reads every age record under agesPrefix+sub, page by page, at one
// revision, and returns the holder of each life and that revision.
func scanAges(ctx context.Context, cli *clientv3.Client, sub string) (map[string]string, int64, error) {
	pfx := agesPrefix + sub
	end := clientv3.GetPrefixRangeEnd(pfx)
	from := pfx
	var rev int64
	out := make(map[string]string)
	for {
		// Serializable: one etcd member, and the bench should not add
		// read-index rounds to the load it measures.
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(5000), clientv3.WithSerializable()}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			out[strings.TrimPrefix(string(kv.Key), agesPrefix)] = holderOf(kv.Value)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// holderOf returns the holder field of an age record value.
func holderOf(v []byte) string {
	var r struct {
		Holder string `json:"holder"`
	}
	if json.Unmarshal(v, &r) != nil {
		return ""
	}
	return r.Holder
}

// count returns how many keys are under pfx.
func count(ctx context.Context, cli *clientv3.Client, pfx string) (int64, error) {
	resp, err := cli.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

// renewProbe renews a lease of its own every 200ms and records how long
// each renewal takes, to tell a slow etcd from a slow member.
type renewProbe struct {
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	lat    []float64 // ms
	fails  int
}

func startRenewProbe(ctx context.Context, cli *clientv3.Client) *renewProbe {
	pctx, cancel := context.WithCancel(ctx)
	p := &renewProbe{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		g, err := cli.Grant(pctx, 30)
		if err != nil {
			p.fails++
			return
		}
		defer func() {
			rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = cli.Revoke(rctx, g.ID)
			rcancel()
		}()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
			t0 := time.Now()
			kctx, kcancel := context.WithTimeout(pctx, 5*time.Second)
			_, err := cli.KeepAliveOnce(kctx, g.ID)
			kcancel()
			if pctx.Err() != nil {
				return
			}
			if err != nil {
				p.fails++
				continue
			}
			p.lat = append(p.lat, ms(time.Since(t0)))
		}
	}()
	return p
}

// stop ends the probe and reports its figures under pfx.
// It may be called more than once; the first call counts.
func (p *renewProbe) stop(r *report, pfx string) {
	p.once.Do(func() {
		p.cancel()
		<-p.done
		r.set(pfx+"_etcd_renew_p50_ms", percentile(p.lat, 50))
		r.set(pfx+"_etcd_renew_max_ms", maxOf(p.lat))
		if p.fails > 0 {
			r.set(pfx+"_etcd_renew_failures", p.fails)
		}
	})
}

// memberMetrics sums the given samples of every alive member's /metrics.
func (b *bench) memberMetrics(names ...string) map[string]float64 {
	out := make(map[string]float64)
	for _, m := range b.alive() {
		met, err := scrapeMetrics("http://" + m.http + "/metrics")
		if err != nil {
			continue
		}
		for _, n := range names {
			out[n] += met[n]
		}
	}
	return out
}

// memberPID reads the pid of id's member process from its record,
// members/<id> (`immortald members -o json`): under `immortald run`, the
// watchdog's child.
func (b *bench) memberPID(ctx context.Context, id string) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := b.cli.Get(rctx, membersPfx+id)
	if err != nil {
		return 0, err
	}
	if len(resp.Kvs) == 0 {
		return 0, fmt.Errorf("no member record of %s", id)
	}
	var m registry.MemberRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.PID == 0 {
		return 0, fmt.Errorf("member record of %s has no pid: %s", id, resp.Kvs[0].Value)
	}
	return m.PID, nil
}

// waitRestarted waits until m's watchdog has started a new member process
// in place of old, and the new one is registered and ready.
func (b *bench) waitRestarted(ctx context.Context, m *member, old int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if pid, err := b.memberPID(ctx, m.id); err == nil && pid != old {
			break
		}
		if m.p.exited() {
			return fmt.Errorf("the watchdog of %s exited: %v (log %s)", m.id, m.p.waitErr, m.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no new member process of %s 30s after the old one died (log %s)", m.id, m.log)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	if err := b.waitReady(ctx, m, 30*time.Second); err != nil {
		return err
	}
	b.mu.Lock()
	b.lastStarted = time.Now()
	b.mu.Unlock()
	return nil
}
