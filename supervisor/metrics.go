package supervisor

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the supervisor's Prometheus collectors.
type Metrics struct {
	Held             prometheus.Gauge
	Wanted           prometheus.Gauge
	Invalid          prometheus.Gauge
	Started          prometheus.Counter
	Lost             *prometheus.CounterVec
	Heartbeats       prometheus.Counter
	HeartbeatErrors  prometheus.Counter
	Sessions         prometheus.Counter
	SessionLosses    prometheus.Counter
	Quarantined      prometheus.Counter
	Handoffs         prometheus.Counter
	ElectionTxns     prometheus.Counter
	ElectionErrors   prometheus.Counter
	DirectStarts     prometheus.Counter
	HeartbeatSeconds prometheus.Gauge
	HeartbeatFailing prometheus.Gauge
	RunsAbandoned    prometheus.Counter
	RunsUnreturned   prometheus.Gauge
	// Collected counts the keys the sweep deleted because nothing else
	// would (see collectBeats), by record: "age", "state" (orphaned records
	// of lives no longer wanted) and "heartbeat" (of gone members).
	Collected *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Held:             prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_lives_held", Help: "Lives this member runs now."}),
		Wanted:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_lives_wanted", Help: "Valid life requests this member sees."}),
		Invalid:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_lives_invalid", Help: "Life requests with a bad name or options."}),
		Started:          prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_lives_started_total", Help: "Lives this member started."}),
		Lost:             prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_lives_stopped_total", Help: "Lives this member stopped, by reason."}, []string{"reason"}),
		Heartbeats:       prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_heartbeats_total", Help: "Heartbeats applied: each checkpoints the age of every life the member runs."}),
		HeartbeatErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_heartbeat_errors_total", Help: "Heartbeats not applied: etcd unreachable or slow, or a guard that failed (its member record or heartbeat changed by someone else)."}),
		Sessions:         prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_sessions_total", Help: "Sessions (leases) opened."}),
		SessionLosses:    prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_session_losses_total", Help: "Sessions lost before shutdown."}),
		Quarantined:      prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_age_records_quarantined_total", Help: "Corrupt age records moved to quarantine/."}),
		Handoffs:         prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_handoffs_total", Help: "Lives handed to their preferred member."}),
		ElectionTxns:     prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_election_txns_total", Help: "Election batch transactions sent to etcd."}),
		ElectionErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_election_txn_errors_total", Help: "Election batch transactions that failed to reach etcd."}),
		DirectStarts:     prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_direct_starts_total", Help: "Lives started without a second check, because the watch saw every candidacy in front of ours go."}),
		HeartbeatSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_heartbeat_seconds", Help: "How long the last heartbeat took; above the checkpoint interval, a crash can lose more than an interval."}),
		HeartbeatFailing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_heartbeat_failing", Help: "1 while the member's last heartbeat was not applied: its lives' ages are not checkpointed, and it is not ready."}),
		RunsAbandoned:    prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_runs_abandoned_total", Help: "Runs (the work of a life) given up because they did not return within AbandonAfter of being told to stop at once; each life was given up in this member."}),
		RunsUnreturned:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_runs_abandoned", Help: "Runs given up that have not returned yet: their lives are not run by this member until they do."}),
		Collected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_records_collected_total",
			Help: "Keys the sweep deleted that nothing else would: records (age, state) of lives no longer wanted that no live holder owns, heartbeats of gone members."}, []string{"record"}),
	}
	for _, r := range []string{"age", "state", "heartbeat"} {
		m.Collected.WithLabelValues(r) // every series from 0
	}
	if reg != nil {
		reg.MustRegister(m.Held, m.Wanted, m.Invalid, m.Started, m.Lost, m.Heartbeats, m.HeartbeatErrors, m.Sessions, m.SessionLosses, m.Quarantined, m.Handoffs, m.ElectionTxns, m.ElectionErrors, m.DirectStarts, m.HeartbeatSeconds, m.HeartbeatFailing,
			m.RunsAbandoned, m.RunsUnreturned, m.Collected)
	}
	return m
}
