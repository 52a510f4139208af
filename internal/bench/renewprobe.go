package bench

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

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
