package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

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
