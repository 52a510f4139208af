package bench

import (
	"strings"
	"time"
)

// Options are the command line's choices; Run fills in the rest from the
// quick or full sizes.
type Options struct {
	Quick         bool          // small and fast
	Check         bool          // exit 1 unless every target is met
	Out           string        // also write the JSON figures to this file (its directory is made)
	Bins          Binaries      // prebuilt binaries; empty ones are built
	BinDir        string        // where to build the binaries
	Lives         int           // lives of the bulk phase; 0: the default
	BaselineLives int           // lives of the baseline; 0: the default
	Only          string        // the phases to run, comma-separated; empty: all
	Budget        time.Duration // time limit after the build; 0: the default
	LeaseTTL      string        // the members' --lease-ttl
	Keep          bool          // keep etcd's data directory too
	// FailoverTrials is how many SIGKILLs of a member's top-level process
	// the latency phase makes (the failover figures); 0: the default.
	FailoverTrials int
}

type config struct {
	quick   bool
	out     string
	binDir  string
	keepDir bool
	only    string
	bins    Binaries

	lives, baselineLives, scaleLives           int
	baselineLivesForced                        bool // -baseline-lives given: no CPU cap
	startTrials, handoffTrials, failoverTrials int
	memberCrashTrials                          int // SIGKILL of the member process alone
	baselineStartTrials, baselineFailovers     int
	baselineRound                              int
	window, baselineWindow                     time.Duration
	settleExtra, settleQuiet, pollEvery        time.Duration
	placeTimeout, settleTimeout, moveTimeout   time.Duration
	compaction                                 string
	leaseTTL                                   string        // of the members
	budget                                     time.Duration // whole run, after the build
	latencyBudget, baselineBudget, scaleBudget time.Duration // the bulk phase gets the rest
	flapWindow                                 time.Duration // watched after the scale-out balanced
	execLives                                  int           // command lives started at once (exec phase)
	execHandoffTrials, execCrashTrials         int           // SIGTERM; SIGKILL of the member process
	execFailoverTrials                         int           // SIGKILL of the top-level process
	execBudget                                 time.Duration
	baselineDupTrials                          int // etcdctl killed alone, its command left running
	scale1mLives                               int // lives of the scale-1m phase
}

// defaults returns the sizes of a quick or a full run.
func defaults(quick bool) config {
	if quick {
		return config{
			quick: true, lives: 10000, baselineLives: 100, scaleLives: 10000,
			startTrials: 10, handoffTrials: 2, failoverTrials: 2, memberCrashTrials: 3,
			baselineStartTrials: 10, baselineFailovers: 20, baselineRound: 20,
			window: 3 * time.Second, baselineWindow: 2 * time.Second,
			settleExtra: 500 * time.Millisecond, settleQuiet: 1500 * time.Millisecond,
			pollEvery: 100 * time.Millisecond,
			// The scale phase takes about 15 s on a quiet machine; its
			// budget and move timeout leave room for a loaded one (at load
			// 13 here it needed more than 26 s), without changing a bar.
			placeTimeout: 10 * time.Second, settleTimeout: 4 * time.Second, moveTimeout: 12 * time.Second,
			compaction: "5m", leaseTTL: "2s",
			budget: 105 * time.Second, latencyBudget: 30 * time.Second, baselineBudget: 12 * time.Second,
			scaleBudget: 40 * time.Second, flapWindow: 2 * time.Second,
			execLives: 10, execHandoffTrials: 2, execCrashTrials: 2, execFailoverTrials: 0, execBudget: 20 * time.Second,
			baselineDupTrials: 0, // the quick baseline has no time left for them
			scale1mLives:      100000,
		}
	}
	return config{
		lives: 100000, baselineLives: 1000, scaleLives: 10000,
		startTrials: 100, handoffTrials: 20, failoverTrials: 60, memberCrashTrials: 100,
		baselineStartTrials: 100, baselineFailovers: 200, baselineRound: 50,
		window: 10 * time.Second, baselineWindow: 10 * time.Second,
		settleExtra: 3 * time.Second, settleQuiet: 2 * time.Second,
		pollEvery:    250 * time.Millisecond,
		placeTimeout: 5 * time.Minute, settleTimeout: 60 * time.Second, moveTimeout: 2 * time.Minute,
		compaction: "5m", leaseTTL: "2s",
		budget: 27*time.Minute + 30*time.Second, latencyBudget: 18 * time.Minute, baselineBudget: 3*time.Minute + 30*time.Second,
		scaleBudget: 2 * time.Minute, flapWindow: 10 * time.Second,
		execLives: 200, execHandoffTrials: 20, execCrashTrials: 20, execFailoverTrials: 5, execBudget: 4 * time.Minute,
		baselineDupTrials: 20,
		scale1mLives:      1000000,
	}
}

// config is the run o asks for: the quick or full sizes, with o's choices.
// A budget scales every phase's budget with the run's.
func (o Options) config() config {
	cfg := defaults(o.Quick)
	cfg.out, cfg.binDir, cfg.keepDir, cfg.only = o.Out, o.BinDir, o.Keep, o.Only
	cfg.bins = o.Bins
	cfg.leaseTTL = o.LeaseTTL
	if o.Budget > 0 {
		scale := float64(o.Budget) / float64(cfg.budget)
		cfg.budget = o.Budget
		cfg.latencyBudget = time.Duration(float64(cfg.latencyBudget) * scale)
		cfg.baselineBudget = time.Duration(float64(cfg.baselineBudget) * scale)
		cfg.scaleBudget = time.Duration(float64(cfg.scaleBudget) * scale)
		cfg.execBudget = time.Duration(float64(cfg.execBudget) * scale)
	}
	if o.Lives > 0 {
		cfg.lives = o.Lives
	}
	if o.FailoverTrials > 0 {
		cfg.failoverTrials = o.FailoverTrials
	}
	if o.BaselineLives > 0 {
		cfg.baselineLives = o.BaselineLives
		cfg.baselineLivesForced = true
	}
	return cfg
}

// ttl is the members' lease TTL (cfg.leaseTTL; 2 s if it does not parse as
// a positive duration: the members would refuse it anyway).
func (cfg config) ttl() time.Duration {
	ttl, err := time.ParseDuration(cfg.leaseTTL)
	if err != nil || ttl <= 0 {
		return 2 * time.Second
	}
	return ttl
}

// runs reports whether a run of cfg runs the phase name: every phase named
// in -only, or without -only every phase but, in a quick run, the full-only
// ones (and never a phase that runs only when named: see namedOnly).
func (cfg config) runs(name string, fullOnly bool) bool {
	if cfg.only != "" {
		return strings.Contains(","+cfg.only+",", ","+name+",")
	}
	return !namedOnly[name] && (!cfg.quick || !fullOnly)
}

// namedOnly are the phases a run makes only when -only names them.
var namedOnly = map[string]bool{"scale-1m": true}
