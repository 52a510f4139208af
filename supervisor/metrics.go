package supervisor

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the supervisor's Prometheus collectors. One Metrics serves
// one Supervisor at a time (its checkpoint ages are of that Supervisor's
// Runs).
type Metrics struct {
	Held            prometheus.Gauge
	Wanted          prometheus.Gauge
	Invalid         prometheus.Gauge
	Started         prometheus.Counter
	Lost            *prometheus.CounterVec
	Heartbeats      prometheus.Counter
	HeartbeatErrors prometheus.Counter
	Sessions        prometheus.Counter
	SessionLosses   prometheus.Counter
	Quarantined     prometheus.Counter
	Handoffs        prometheus.Counter
	ElectionTxns    prometheus.Counter
	ElectionErrors  prometheus.Counter
	DirectStarts    prometheus.Counter
	// ExpiredRevokes counts the peers' leases this member revoked once
	// their TimeToLive answers proved them expired (see expiry.go).
	ExpiredRevokes   prometheus.Counter
	HeartbeatSeconds prometheus.Gauge
	HeartbeatFailing prometheus.Gauge
	RunsAbandoned    prometheus.Counter
	RunsUnreturned   prometheus.Gauge
	// Collected counts the keys the sweep deleted because nothing else
	// would (see collectBeats), by record: "age", "state", "child"
	// (orphaned records of lives no longer wanted) and "heartbeat" (of gone
	// members).
	Collected *prometheus.CounterVec

	// The work of lives (work.go), by kind: Runs started, Runs ended by
	// cause (see runCause), and Runs running now (started, not ended).
	RunsStarted *prometheus.CounterVec
	RunsStopped *prometheus.CounterVec
	Runs        *prometheus.GaugeVec
	// State writes (the state writer's), by kind: each life's write by
	// result ("applied", "fenced", "error"), the bytes of the records
	// applied, and the time of each Txn from send to answer.
	StateWrites       *prometheus.CounterVec
	StateWriteBytes   *prometheus.CounterVec
	StateWriteSeconds prometheus.Histogram
	// The children of command kinds, by kind: restarts, and exits by
	// outcome ("success", "failure", "signal"). The supervisor does not
	// see children: package execkind reports them through its
	// execkind.Observer, which Metrics is (ChildExited, ChildRestarted).
	ChildRestarts *prometheus.CounterVec
	ChildExits    *prometheus.CounterVec

	// checkpointAges is immortald_checkpoint_age_seconds, computed at
	// scrape time from the Runs that run now.
	checkpointAges *checkpointAges
}

// Causes of the end of a Run: the label cause of
// immortald_runs_stopped_total.
const (
	causeStopped   = "stopped"   // asked to stop gracefully, and returned
	causeDeadline  = "deadline"  // told to stop at once, and returned
	causeReturned  = "returned"  // returned on its own, before any stop
	causeAbandoned = "abandoned" // given up: it did not return in time
	causePanic     = "panic"     // it (or its kind's New) panicked
)

// Outcomes of a child's exit: the label outcome of
// immortald_child_exits_total (the values of execkind's ExitSuccess,
// ExitFailure and ExitSignal).
var childOutcomes = []string{"success", "failure", "signal"}

// ChildExited counts an exit of a child of kind, by outcome (one of
// childOutcomes). With ChildRestarted, it makes m an execkind.Observer.
func (m *Metrics) ChildExited(kind, outcome string) {
	m.ChildExits.WithLabelValues(kind, outcome).Inc()
}

// ChildRestarted counts a restart of a child of kind.
func (m *Metrics) ChildRestarted(kind string) { m.ChildRestarts.WithLabelValues(kind).Inc() }

// initWork makes the series of each kind of work start from 0 (New does
// it for the kinds with a Runner), so that a rate or an alert sees them
// before the first Run.
func (m *Metrics) initWork(kinds []string) {
	for _, k := range kinds {
		m.RunsStarted.WithLabelValues(k)
		m.Runs.WithLabelValues(k)
		m.StateWriteBytes.WithLabelValues(k)
		for _, c := range []string{causeStopped, causeDeadline, causeReturned, causeAbandoned, causePanic} {
			m.RunsStopped.WithLabelValues(k, c)
		}
		for _, r := range []string{writeApplied, writeFenced, writeError} {
			m.StateWrites.WithLabelValues(k, r)
		}
	}
}

// InitChildKinds makes the child series of each command kind start from 0
// (the supervisor does not know which kinds run commands: the member
// does).
func (m *Metrics) InitChildKinds(kinds ...string) {
	for _, k := range kinds {
		m.ChildRestarts.WithLabelValues(k)
		for _, o := range childOutcomes {
			m.ChildExits.WithLabelValues(k, o)
		}
	}
}

// Results of one life's state write: the label result of
// immortald_state_writes_total.
const (
	writeApplied = "applied" // its fence held: the record is written
	writeFenced  = "fenced"  // its fence failed: the Run may write no more
	writeError   = "error"   // the Txn failed (etcd unreachable, slow): written again
)

// checkpointAges collects immortald_checkpoint_age_seconds{kind}: for each
// kind, the time since the last applied state write of the Run of that
// kind whose last one is the oldest, among the Runs running now that have
// had one applied. A kind without such a Run has no series.
type checkpointAges struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	runs map[*lifeRun]struct{} // the Runs running now
}

func newCheckpointAges() *checkpointAges {
	return &checkpointAges{
		desc: prometheus.NewDesc("immortald_checkpoint_age_seconds",
			"Time since the last applied state write of the Run of the kind whose last one is the oldest, among the Runs running now that have had one. It grows while a Run writes nothing new (a command child's state is written on change only), or its writes do not reach etcd.",
			[]string{"kind"}, nil),
		runs: make(map[*lifeRun]struct{}),
	}
}

func (c *checkpointAges) add(r *lifeRun) {
	c.mu.Lock()
	c.runs[r] = struct{}{}
	c.mu.Unlock()
}

func (c *checkpointAges) remove(r *lifeRun) {
	c.mu.Lock()
	delete(c.runs, r)
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *checkpointAges) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *checkpointAges) Collect(ch chan<- prometheus.Metric) {
	oldest := map[string]int64{} // by kind, unix nanoseconds
	c.mu.Lock()
	for r := range c.runs {
		t := r.lastApplied.Load()
		if t == 0 {
			continue
		}
		if o, ok := oldest[r.kind]; !ok || t < o {
			oldest[r.kind] = t
		}
	}
	c.mu.Unlock()
	now := time.Now()
	for kind, t := range oldest {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, max(0, now.Sub(time.Unix(0, t)).Seconds()), kind)
	}
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
		ExpiredRevokes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_expired_lease_revokes_total", Help: "Leases of other members this member revoked once etcd's answers proved them expired, before etcd's own revoke (its leader looks every 500 ms)."}),
		HeartbeatSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_heartbeat_seconds", Help: "How long the last heartbeat took; above the checkpoint interval, a crash can lose more than an interval."}),
		HeartbeatFailing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_heartbeat_failing", Help: "1 while the member's last heartbeat was not applied: its lives' ages are not checkpointed, and it is not ready."}),
		RunsAbandoned:    prometheus.NewCounter(prometheus.CounterOpts{Name: "immortald_runs_abandoned_total", Help: "Runs (the work of a life) given up because they did not return within AbandonAfter of being told to stop at once; each life was given up in this member."}),
		RunsUnreturned:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "immortald_runs_abandoned", Help: "Runs given up that have not returned yet: their lives are not run by this member until they do."}),
		Collected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_records_collected_total",
			Help: "Keys the sweep deleted that nothing else would: records (age, state) of lives no longer wanted that no live holder owns, heartbeats of gone members."}, []string{"record"}),
	}
	m.RunsStarted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_runs_started_total",
		Help: "Runs (the work of a life of a kind with a Runner) started, by kind."}, []string{"kind"})
	m.RunsStopped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_runs_stopped_total",
		Help: "Runs ended, by kind and cause: stopped (asked to stop gracefully), deadline (told to stop at once), returned (on its own), abandoned (given up: it did not return in time), panic."}, []string{"kind", "cause"})
	m.Runs = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immortald_runs",
		Help: "Runs running now (started, not ended), by kind."}, []string{"kind"})
	m.StateWrites = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_state_writes_total",
		Help: "State record writes of the lives' Runs (checkpoints and statuses), by kind and result: applied, fenced (the holder no longer holds the life), error (the Txn failed; written again)."}, []string{"kind", "result"})
	m.StateWriteBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_state_write_bytes_total",
		Help: "Bytes of the state records applied, by kind."}, []string{"kind"})
	m.StateWriteSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "immortald_state_write_seconds",
		Help:    "Time of each Txn of the state writer (a batch of lives' state writes), from send to answer.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}) // 1 ms to 8 s: a Txn is bounded by the batch timeout
	m.ChildRestarts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_child_restarts_total",
		Help: "Children of command kinds restarted after they exited on their own (or failed to start), by kind."}, []string{"kind"})
	m.ChildExits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immortald_child_exits_total",
		Help: "Children of command kinds that exited, on their own or stopped, by kind and outcome: success (exit code 0), failure (another code), signal (killed by one)."}, []string{"kind", "outcome"})
	m.checkpointAges = newCheckpointAges()
	for _, r := range []string{"age", "state", "child", "heartbeat"} {
		m.Collected.WithLabelValues(r) // every series from 0
	}
	if reg != nil {
		reg.MustRegister(m.Held, m.Wanted, m.Invalid, m.Started, m.Lost, m.Heartbeats, m.HeartbeatErrors, m.Sessions, m.SessionLosses, m.Quarantined, m.Handoffs, m.ElectionTxns, m.ElectionErrors, m.DirectStarts, m.ExpiredRevokes, m.HeartbeatSeconds, m.HeartbeatFailing,
			m.RunsAbandoned, m.RunsUnreturned, m.Collected,
			m.RunsStarted, m.RunsStopped, m.Runs, m.StateWrites, m.StateWriteBytes, m.StateWriteSeconds, m.ChildRestarts, m.ChildExits, m.checkpointAges)
	}
	return m
}
