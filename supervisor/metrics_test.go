package supervisor

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func readCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

func readGauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	_ = g.Write(&m)
	return m.GetGauge().GetValue()
}

func readHistogramCount(h prometheus.Histogram) uint64 {
	var m dto.Metric
	_ = h.Write(&m)
	return m.GetHistogram().GetSampleCount()
}

// checkpointAge is the value of immortald_checkpoint_age_seconds{kind} in
// m as a scrape would see it; ok is false when it has no such series.
func checkpointAge(m *Metrics, kind string) (age float64, ok bool) {
	ch := make(chan prometheus.Metric, 16)
	go func() { m.checkpointAges.Collect(ch); close(ch) }()
	for pm := range ch {
		var d dto.Metric
		_ = pm.Write(&d)
		for _, l := range d.GetLabel() {
			if l.GetName() == "kind" && l.GetValue() == kind {
				age, ok = d.GetGauge().GetValue(), true
			}
		}
	}
	return age, ok
}
