package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/immortald/immortald/internal/observe"
)

// logw receives progress lines; the table and the JSON go to stdout.
var logw io.Writer = os.Stderr

// Run runs the benchmark as o says: it prints the table, the targets and,
// last, the JSON line on stdout, and returns the exit code. Ctrl-C (or
// SIGTERM) stops every process and reports what was measured; a second one
// quits at once.
func Run(o Options) int {
	cfg := o.config()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ps := newProcSet()
	defer ps.killAll()
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	interrupted := make(chan struct{})
	go func() {
		s := <-sigc
		fmt.Fprintf(os.Stderr, "\nimmortalbench: %s: stopping every process and reporting what was measured (again to quit at once)\n", s)
		close(interrupted)
		cancel()
		<-sigc
		ps.killAll()
		os.Exit(130)
	}()

	rep := newReport()
	code := measure(ctx, cfg, ps, rep)
	select {
	case <-interrupted:
		rep.set("interrupted", true)
		code = 130
	default:
	}

	rep.printTable(os.Stdout)
	if f, ok := rep.vals["member_log_findings"].([]logFinding); ok && len(f) > 0 {
		fmt.Println("\n== warnings and errors in the members' logs")
		for _, x := range f {
			fmt.Printf("  %5d x %-8s %s\n        first at %s\n", x.Count, x.Level, x.Msg, x.First)
		}
	}
	if f, ok := rep.vals["etcd_log_findings"].([]etcdFinding); ok && len(f) > 0 {
		fmt.Println("\n== warnings and errors in etcd's log")
		for _, x := range f {
			took := ""
			if x.MaxTook > 0 {
				took = fmt.Sprintf(" (longest %.0f ms)", x.MaxTook)
			}
			fmt.Printf("  %5d x %-5s %s%s, first at %s\n", x.Count, x.Level, x.Msg, took, x.First)
		}
	}
	if failed := checkBars(os.Stdout, rep, bars(cfg), cfg.only != ""); len(failed) > 0 {
		rep.set("targets_failed", failed)
		if o.Check && code == 0 {
			code = 1
		}
	}
	js, err := rep.JSON()
	if err != nil {
		fmt.Fprintf(os.Stderr, "immortalbench: %v\n", err)
		return 1
	}
	fmt.Println()
	fmt.Println(string(js))
	if cfg.out != "" {
		err := os.MkdirAll(filepath.Dir(cfg.out), 0o755)
		if err == nil {
			err = os.WriteFile(cfg.out, append(js, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "immortalbench: %v\n", err)
			return 1
		}
	}
	return code
}

// measure runs every phase and fills rep. It returns the exit code.
func measure(ctx context.Context, cfg config, ps *procSet, rep *report) int {
	mode := "full"
	if cfg.quick {
		mode = "quick"
	}
	rep.set("mode", mode)
	rep.set("lives", cfg.lives)
	rep.set("baseline_lives", cfg.baselineLives)
	rep.set("cores", runtime.NumCPU())
	rep.set("cpu_model", observe.CPUModel())
	rep.set("mem_total_bytes", observe.MemInfo("MemTotal"))
	rep.set("date", time.Now().UTC().Format(time.RFC3339))
	rep.set("go_version", runtime.Version())
	rep.set("command_line", strings.Join(append([]string{"immortalbench"}, os.Args[1:]...), " "))
	rep.set("lease_ttl", cfg.leaseTTL)
	rep.set("checkpoint_interval", "1s (immortald default)")
	var errs []string
	fail := func(what string, err error) {
		errs = append(errs, fmt.Sprintf("%s: %v", what, err))
		fmt.Fprintf(logw, "immortalbench: %s: %v\n", what, err)
	}
	defer func() {
		if len(errs) > 0 {
			rep.set("errors", errs)
		}
	}()

	t0 := time.Now()
	bins, err := build(ctx, cfg)
	rep.set("build_s", time.Since(t0).Seconds())
	if err != nil {
		fail("build", err)
		return 1
	}
	rep.set("etcd_version", versionOf(bins.Etcd, "--version", "etcd Version:"))
	rep.set("immortald_version", versionOf(bins.Immortald, "version", ""))

	workDir, err := os.MkdirTemp("", "immortalbench-")
	if err != nil {
		fail("workdir", err)
		return 1
	}
	logDir := filepath.Join(workDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		fail("workdir", err)
		return 1
	}
	rep.set("log_dir", logDir)
	fmt.Fprintf(logw, "immortalbench: %s run; logs in %s\n", mode, logDir)
	b := &bench{cfg: cfg, ps: ps, workDir: workDir, logDir: logDir, bins: bins, rep: rep,
		members: make(map[string]*member), gens: make(map[string]int)}
	defer func() {
		ps.killAll()
		if b.cli != nil {
			_ = b.cli.Close()
		}
		if !cfg.keepDir {
			_ = os.RemoveAll(filepath.Join(workDir, "etcd-data"))
		}
		findings, err := scanMemberLogs(logDir)
		if err != nil {
			fail("member logs", err)
		}
		if len(findings) > 0 {
			rep.set("member_log_findings", findings)
		}
		if ef, err := scanEtcdLog(filepath.Join(logDir, "etcd.log")); err == nil && len(ef) > 0 {
			rep.set("etcd_log_findings", ef)
		}
	}()

	benchStart := time.Now()
	rep.set("loadavg_start", observe.LoadAvg())
	if err := b.startEtcd(ctx); err != nil {
		fail("etcd", err)
		return 1
	}
	phases := []struct {
		name     string
		fn       func(context.Context) error
		budget   time.Duration // 0: the rest of the run's
		fullOnly bool          // skipped by a quick run unless named in -only
	}{
		{"latency", b.phaseLatency, cfg.latencyBudget, false},
		{"baseline", b.phaseBaseline, cfg.baselineBudget, false},
		{"exec", b.phaseExec, cfg.execBudget, true},
		{"scale", b.phaseScale, cfg.scaleBudget, false},
		{"bulk", b.phaseBulk, 0, false},
		{"etcd", b.phaseEtcd, 0, true},
		{"scale-1m", b.phaseScale1M, 0, true},
	}
	var skipped []string
	for _, ph := range phases {
		if !cfg.runs(ph.name, ph.fullOnly) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		// A phase ends at its budget, or at the run's; what it measured
		// by then is reported.
		end := benchStart.Add(cfg.budget)
		if ph.budget > 0 && time.Now().Add(ph.budget).Before(end) {
			end = time.Now().Add(ph.budget)
		}
		pctx, pcancel := context.WithDeadline(ctx, end)
		fmt.Fprintf(logw, "immortalbench: phase %s (%.1fs in, load average %s)\n", ph.name, time.Since(benchStart).Seconds(), observe.LoadAvg())
		rep.set("phase_"+ph.name+"_loadavg", observe.LoadAvg())
		p0 := time.Now()
		err := ph.fn(pctx)
		switch {
		case err != nil && pctx.Err() != nil && ctx.Err() == nil:
			skipped = append(skipped, fmt.Sprintf("phase %s stopped at its time budget after %.1fs: %v", ph.name, time.Since(p0).Seconds(), err))
			fmt.Fprintf(logw, "immortalbench: %s\n", skipped[len(skipped)-1])
		case err != nil:
			fail("phase "+ph.name, err)
		}
		pcancel()
		rep.set("phase_"+ph.name+"_s", time.Since(p0).Seconds())
		// Whatever a phase left running goes before the next one.
		b.reset(ctx)
	}
	if len(skipped) > 0 {
		rep.set("skipped", skipped)
	}
	rep.set("loadavg_end", observe.LoadAvg())
	rep.set("ratio_rss_per_life", ratio(rep, "baseline_rss_bytes_per_life", "rss_bytes_per_life"))
	rep.set("ratio_failover_p99", ratio(rep, "failover_p99_s", "baseline_failover_p99_s"))
	rep.set("ratio_failover_p50", ratio(rep, "failover_p50_s", "baseline_failover_p50_s"))
	rep.set("bench_s", time.Since(benchStart).Seconds())
	if len(errs) > 0 || ctx.Err() != nil {
		return 1
	}
	return 0
}
