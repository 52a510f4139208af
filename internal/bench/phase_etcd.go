package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// capPrefix holds the keys of the etcd capacity phase; the phase deletes it.
const capPrefix = "/bench/cap/"

// phaseEtcd measures what the etcd process alone applies on this machine,
// with as many lives' keys as the bulk phase: fenced per-life age writes
// (125 nested Txns of 3 compares and a put, 8 in flight), and plain puts in
// Txns of 125. It is context, not a bar. Before heartbeats this was the
// ceiling of the checkpoints (one fenced write per life per interval); now a
// member checkpoints all its lives with one write per interval, and a life's
// record gets a fenced write like these only when it starts, is handed off
// or stops: so it is the ceiling of placing, failing over and handing off
// many lives at once (place_all_s, failover_all_s, handoff_all_ms, whose
// election batches also carry the candidacies and their reads).
func (b *bench) phaseEtcd(ctx context.Context) error {
	n := b.cfg.lives - b.cfg.lives%125
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_, _ = b.cli.Delete(dctx, capPrefix, clientv3.WithPrefix())
	}()
	key := func(kind string, i int) string { return fmt.Sprintf("%s%s/%06d", capPrefix, kind, i) }
	// Each life: an election key, a request key and an age record.
	revs := make([]int64, n)
	const per = 40 // 3 puts each: 120 ops, under --max-txn-ops
	if err := parallel(ctx, n/per, 8, func(j int) error {
		var ops []clientv3.Op
		for i := j * per; i < (j+1)*per && i < n; i++ {
			ops = append(ops, clientv3.OpPut(key("e", i), "m"), clientv3.OpPut(key("l", i), ""), clientv3.OpPut(key("a", i), "{}"))
		}
		r, err := b.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return err
		}
		for i := j * per; i < (j+1)*per && i < n; i++ {
			revs[i] = r.Header.Revision
		}
		return nil
	}); err != nil {
		return fmt.Errorf("setting up %d lives' keys: %w", n, err)
	}
	rec := `{"life_id":1234567,"age_ms":1234567,"incarnation":3,"holder":"m1","holder_rev":1234567,"time":"2026-11-25T21:00:00.123456Z"}`
	for _, shape := range []string{"fenced", "plain"} {
		var applied atomic.Int64
		end := time.Now().Add(b.cfg.window)
		err := parallel(ctx, 8, 8, func(w int) error {
			for batch := w; time.Now().Before(end); batch = (batch + 8) % (n / 125) {
				ops := make([]clientv3.Op, 0, 125)
				for i := batch * 125; i < (batch+1)*125; i++ {
					put := clientv3.OpPut(key("a", i), rec)
					if shape == "plain" {
						ops = append(ops, put)
						continue
					}
					ops = append(ops, clientv3.OpTxn(
						[]clientv3.Cmp{
							clientv3.Compare(clientv3.CreateRevision(key("e", i)), "=", revs[i]),
							clientv3.Compare(clientv3.CreateRevision(key("l", i)), "=", revs[i]),
							clientv3.Compare(clientv3.ModRevision(key("a", i)), ">", 0),
						},
						[]clientv3.Op{put},
						[]clientv3.Op{clientv3.OpGet(key("e", i)), clientv3.OpGet(key("l", i)), clientv3.OpGet(key("a", i))},
					))
				}
				if _, err := b.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					return err
				}
				applied.Add(125)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s writes: %w", shape, err)
		}
		rate := float64(applied.Load()) / b.cfg.window.Seconds()
		b.rep.set("etcd_alone_"+shape+"_puts_per_s", rate)
		fmt.Fprintf(logw, "  etcd alone, %d lives' keys: %.0f %s per-life age writes/s\n", n, rate, shape)
	}
	fmt.Fprintf(logw, "  (context, not a bar: the old per-life checkpoint model's ceiling; now a life's record is written only when it starts, is handed off or stops, so the ceiling of moving many lives at once)\n")
	return nil
}
