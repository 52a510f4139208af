package bench

import (
	"context"
	"fmt"

	"github.com/immortald/immortald/internal/observe"
)

// scale1mMembers is how many members the scale-1m phase places its lives on.
const scale1mMembers = 10

// phaseScale1M places cfg.scale1mLives (1,000,000) lives on 10 fresh
// members against the one etcd, measures the steady state (RSS per life,
// etcd's database, Txns a second, each life's checkpoint interval) and
// hands off the lives of the member holding the most (about 100k) with a
// SIGTERM: the bulk phase's steps at ten times its scale, without its
// SIGKILL. Its figures are the bulk phase's names under scale1m_, with the
// cost model's terms: watch events, Txns and puts per life placed, and
// etcd's database and RSS per life. It runs only when -only names it.
func (b *bench) phaseScale1M(ctx context.Context) error {
	n := b.cfg.scale1mLives
	// What the members, etcd and the bench would need, from the bulk
	// phase's per-life figures on this machine (4 KiB of member RSS and
	// about 3 KiB of etcd's per life, rounded up): say so rather than
	// swap.
	const perLife = 8 << 10
	if avail := observe.MemInfo("MemAvailable"); avail > 0 && float64(n*perLife) > 0.8*float64(avail) {
		fmt.Fprintf(logw, "  scale-1m: %d lives would need about %s; MemAvailable is %s\n", n, iec(float64(n*perLife)), iec(float64(avail)))
		b.rep.set("scale1m_memory_short", true)
	}
	b.rep.set("scale1m_lives", n)
	b.rep.set("scale1m_members", scale1mMembers)
	b.rep.prefix = "scale1m_"
	defer func() { b.rep.prefix = "" }()
	ids := make([]string, scale1mMembers)
	for i := range ids {
		ids[i] = fmt.Sprintf("m%d", i+1)
	}
	if err := b.bulk(ctx, bulkSpec{members: ids, lives: n}); err != nil {
		return err
	}
	if met, err := scrapeMetrics(b.metricsURL); err == nil {
		b.rep.set("etcd_db_bytes_per_life", met["etcd_mvcc_db_total_size_in_bytes"]/float64(n))
		b.rep.set("etcd_keys_total", met["etcd_debugging_mvcc_keys_total"])
	}
	if m, err := observe.ReadMem(b.etcd.pid); err == nil {
		b.rep.set("etcd_rss_bytes_per_life", float64(m.RSS)/float64(n))
	}
	return nil
}
