package bench

import (
	"time"
)

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
			pollEvery:    100 * time.Millisecond,
			placeTimeout: 10 * time.Second, settleTimeout: 4 * time.Second, moveTimeout: 8 * time.Second,
			compaction: "5m", leaseTTL: "2s",
			budget: 90 * time.Second, latencyBudget: 30 * time.Second, baselineBudget: 12 * time.Second,
			scaleBudget: 26 * time.Second, flapWindow: 2 * time.Second,
		}
	}
	return config{
		lives: 100000, baselineLives: 1000, scaleLives: 10000,
		startTrials: 100, handoffTrials: 20, failoverTrials: 10, memberCrashTrials: 100,
		baselineStartTrials: 100, baselineFailovers: 200, baselineRound: 50,
		window: 10 * time.Second, baselineWindow: 10 * time.Second,
		settleExtra: 3 * time.Second, settleQuiet: 2 * time.Second,
		pollEvery:    250 * time.Millisecond,
		placeTimeout: 5 * time.Minute, settleTimeout: 60 * time.Second, moveTimeout: 2 * time.Minute,
		compaction: "5m", leaseTTL: "2s",
		budget: 17*time.Minute + 30*time.Second, latencyBudget: 12 * time.Minute, baselineBudget: 3*time.Minute + 30*time.Second,
		scaleBudget: 2 * time.Minute, flapWindow: 10 * time.Second,
	}
}
