package supervisor

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchGen watches the keys under prefix from rev while gen lasts, and
// gives each response to handle. When the watch breaks (compaction, a lost
// etcd leader) it takes the current revision, calls resync to catch up on
// what it may have missed, and watches again from there.
func (s *Supervisor) watchGen(gen *generation, prefix string, rev int64, handle func(clientv3.WatchResponse), resync func(), opts ...clientv3.OpOption) {
	for gen.ctx.Err() == nil {
		wch := s.cfg.Client.Watch(clientv3.WithRequireLeader(gen.ctx), prefix,
			append([]clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(rev)}, opts...)...)
		for wr := range wch {
			if wr.Err() != nil {
				break
			}
			handle(wr)
			rev = wr.Header.Revision + 1
		}
		if gen.ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(gen.ctx), s.batchTimeout())
		resp, err := s.cfg.Client.Get(ctx, prefix, clientv3.WithCountOnly())
		cancel()
		if err != nil {
			if gen.ctx.Err() == nil {
				s.log.Warn("cannot read etcd's revision to watch again; will retry", "prefix", prefix, "err", err)
			}
			select {
			case <-gen.ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		resync()
		rev = resp.Header.Revision + 1
	}
}
