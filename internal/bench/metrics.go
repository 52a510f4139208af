package bench

import (
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/immortald/immortald/internal/observe"
)

// scrapeMetrics reads the unlabelled samples of a Prometheus text endpoint.
func scrapeMetrics(url string) (map[string]float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return observe.ParseMetrics(resp.Body)
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

// memberMetricsEach scrapes the given samples of every alive member's
// /metrics, by member id; a member that does not answer is left out.
func (b *bench) memberMetricsEach(names ...string) map[string]map[string]float64 {
	out := make(map[string]map[string]float64)
	for _, m := range b.alive() {
		met, err := scrapeMetrics("http://" + m.http + "/metrics")
		if err != nil {
			continue
		}
		mm := make(map[string]float64, len(names))
		for _, n := range names {
			if v, ok := met[n]; ok {
				mm[n] = v
			}
		}
		out[m.id] = mm
	}
	return out
}

// setEtcdDisk reports etcd's WAL fsyncs and backend commits between two
// scrapes: how many per second, and how long they took on average.
func (b *bench) setEtcdDisk(pfx string, m0, m1 map[string]float64, secs float64) {
	for _, h := range []struct{ name, metric string }{
		{"wal_fsync", "etcd_disk_wal_fsync_duration_seconds"},
		{"backend_commit", "etcd_disk_backend_commit_duration_seconds"},
	} {
		n := delta(m0, m1, h.metric+"_count")
		sum := delta(m0, m1, h.metric+"_sum")
		b.rep.set(pfx+"etcd_"+h.name+"_per_s", n/secs)
		if n > 0 {
			b.rep.set(pfx+"etcd_"+h.name+"_mean_ms", sum/n*1000)
		}
	}
}

func delta(a, b map[string]float64, k string) float64 {
	x, ok1 := a[k]
	y, ok2 := b[k]
	if !ok1 || !ok2 {
		return math.NaN()
	}
	return y - x
}
