package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/immortald/immortald/internal/observe"
)

// phaseLatency measures, with 3 members and a few probe lives: start
// latency (etcdctl put to the first record), graceful handoff (SIGTERM of a
// holder to the new holder's first record) and crash failover (SIGKILL),
// with the age each loses.
func (b *bench) phaseLatency(ctx context.Context) error {
	if _, err := b.startMembers(ctx, "m1", "m2", "m3"); err != nil {
		return err
	}
	al, err := startAgeLog(ctx, b.cli)
	if err != nil {
		return err
	}

	// Start: one etcdctl put at a time, each to its first record. Figures
	// are published as they come, so a run cut short keeps what it has.
	var startMS, putMS []float64
	var probes []string
	publishStart := func() {
		b.rep.set("start_p50_ms", percentile(startMS, 50))
		b.rep.set("start_p99_ms", percentile(startMS, 99))
		b.rep.set("start_n", len(startMS))
		b.rep.set("start_max_ms", maxOf(startMS))
		b.rep.set("etcdctl_put_p50_ms", percentile(putMS, 50))
	}
	defer publishStart()
	for i := range b.cfg.startTrials {
		name := fmt.Sprintf("s%03d", i)
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, b.bins.Etcdctl, "--endpoints", b.endpoint, "put", livesPrefix+name, "").CombinedOutput()
		putDone := time.Now()
		if err != nil {
			return fmt.Errorf("etcdctl put: %v: %s", err, out)
		}
		var first obs
		err = al.waitUntil(ctx, 15*time.Second, func() bool {
			for _, x := range al.hist[name] {
				if !x.del {
					first = x
					return true
				}
			}
			return false
		})
		if err != nil {
			return fmt.Errorf("life %s never got a record: %w", name, err)
		}
		startMS = append(startMS, ms(first.at.Sub(t0)))
		putMS = append(putMS, ms(putDone.Sub(t0)))
		probes = append(probes, name)
	}

	// Handoff and failover trials on the probe lives.
	var (
		handoffMS, gracefulGapMS, gracefulResumeDiffMS, shutdownMS []float64
		failoverS, crashLossMS                                     []float64
		failoverRevokeS, failoverAfterRevokeMS                     []float64
		memberCrashMS, memberCrashLossMS                           []float64
		handoffTrials, failoverTrials, memberCrashTrials           int
		membersLeft                                                int
		trialErrs                                                  []string
	)
	// Alternate SIGTERM, SIGKILL of the top-level process (the watchdog:
	// its member dies with it, and the lease expires) and SIGKILL of the
	// member process alone (the watchdog revokes its lease), so that a run
	// cut short by its time budget still has some of each.
	var kinds []trialKind
	for i := range max(b.cfg.handoffTrials, b.cfg.failoverTrials, b.cfg.memberCrashTrials) {
		if i < b.cfg.handoffTrials {
			kinds = append(kinds, trialKind{sig: syscall.SIGTERM})
		}
		if i < b.cfg.failoverTrials {
			kinds = append(kinds, trialKind{sig: syscall.SIGKILL})
		}
		if i < b.cfg.memberCrashTrials {
			kinds = append(kinds, trialKind{sig: syscall.SIGKILL, member: true})
		}
	}
	defer func() {
		b.rep.set("handoff_p50_ms", percentile(handoffMS, 50))
		b.rep.set("handoff_p99_ms", percentile(handoffMS, 99))
		b.rep.set("handoff_trials", handoffTrials)
		b.rep.set("handoff_samples", len(handoffMS))
		b.rep.set("failover_p50_s", percentile(failoverS, 50))
		b.rep.set("failover_p99_s", percentile(failoverS, 99))
		b.rep.set("failover_trials", failoverTrials)
		b.rep.set("failover_samples", len(failoverS))
		b.rep.set("failover_revoke_p50_s", percentile(failoverRevokeS, 50))
		b.rep.set("failover_revoke_max_s", maxOf(failoverRevokeS))
		b.rep.set("failover_after_revoke_p50_ms", percentile(failoverAfterRevokeMS, 50))
		b.rep.set("failover_after_revoke_p99_ms", percentile(failoverAfterRevokeMS, 99))
		b.rep.set("age_loss_graceful_ms", maxOf(gracefulGapMS))
		b.rep.set("graceful_resumed_minus_final_age_ms_min", minOf(gracefulResumeDiffMS))
		b.rep.set("graceful_resumed_minus_final_age_ms_max", maxOf(gracefulResumeDiffMS))
		b.rep.set("age_loss_crash_ms", maxOf(crashLossMS))
		b.rep.set("age_loss_crash_p50_ms", percentile(crashLossMS, 50))
		b.rep.set("member_crash_p50_ms", percentile(memberCrashMS, 50))
		b.rep.set("member_crash_p99_ms", percentile(memberCrashMS, 99))
		b.rep.set("member_crash_max_ms", maxOf(memberCrashMS))
		b.rep.set("member_crash_trials", memberCrashTrials)
		b.rep.set("member_crash_samples", len(memberCrashMS))
		b.rep.set("age_loss_member_crash_ms", maxOf(memberCrashLossMS))
		b.rep.set("age_loss_member_crash_p50_ms", percentile(memberCrashLossMS, 50))
		if failoverTrials > 0 {
			b.rep.set("top_kill_members_left", membersLeft)
		}
		b.rep.set("sigterm_exit_p50_ms", percentile(shutdownMS, 50))
		if len(trialErrs) > 0 {
			b.rep.set("trial_errors", trialErrs)
		}
		al.mu.Lock()
		b.rep.set("age_decreases_seen", len(al.decreases))
		if len(al.decreases) > 0 {
			b.rep.set("age_decreases", al.decreases[:min(len(al.decreases), 10)])
		}
		if al.badRecords > 0 {
			b.rep.set("unparsable_age_records", al.badRecords)
		}
		al.mu.Unlock()
	}()
	for i, kind := range kinds {
		sig := kind.sig
		graceful := sig == syscall.SIGTERM
		res, err := b.killTrial(ctx, al, probes, kind, i, i < len(kinds)-1)
		membersLeft += res.memberLeft
		for _, s := range res.samples {
			seen := !s.final.at.IsZero() // a record of the victim's was seen
			if kind.member {
				memberCrashMS = append(memberCrashMS, ms(s.moved))
				if seen {
					atKill := float64(s.final.rec.AgeMS) + ms(res.killAt.Sub(s.final.rec.Time))
					memberCrashLossMS = append(memberCrashLossMS, atKill-float64(s.newFirst.rec.AgeMS))
				}
				continue
			}
			if graceful {
				handoffMS = append(handoffMS, ms(s.moved))
				if seen {
					gracefulGapMS = append(gracefulGapMS, ms(s.newFirst.rec.Time.Sub(s.final.rec.Time)))
					gracefulResumeDiffMS = append(gracefulResumeDiffMS, float64(s.newFirst.rec.AgeMS-s.final.rec.AgeMS))
				}
			} else {
				failoverS = append(failoverS, s.moved.Seconds())
				if s.afterRevoke > 0 {
					failoverAfterRevokeMS = append(failoverAfterRevokeMS, ms(s.afterRevoke))
				}
				if seen {
					atKill := float64(s.final.rec.AgeMS) + ms(res.killAt.Sub(s.final.rec.Time))
					crashLossMS = append(crashLossMS, atKill-float64(s.newFirst.rec.AgeMS))
				}
			}
		}
		if !graceful && !kind.member && res.revoked > 0 {
			failoverRevokeS = append(failoverRevokeS, res.revoked.Seconds())
		}
		if len(res.samples) > 0 {
			switch {
			case kind.member:
				memberCrashTrials++
			case graceful:
				handoffTrials++
			default:
				failoverTrials++
			}
			fmt.Fprintf(logw, "  trial %d: %s %s holding %d probe lives: moved in %s..%s\n", i, kind, res.victim,
				len(res.samples), res.minMoved.Round(time.Millisecond), res.maxMoved.Round(time.Millisecond))
		}
		if graceful && res.exit > 0 {
			shutdownMS = append(shutdownMS, ms(res.exit))
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			trialErrs = append(trialErrs, fmt.Sprintf("trial %d (%s): %v", i, kind, err))
			fmt.Fprintf(logw, "  trial %d (%s) failed: %v\n", i, kind, err)
		}
	}
	return nil
}

// sample is what one probe life did in one trial.
type sample struct {
	name     string
	final    obs // the victim's last effective age of the life: its record carried by its last heartbeat
	newFirst obs // the new holder's first record, as written
	moved    time.Duration
	// afterRevoke is from the deletion of the victim's candidacies (its
	// lease's revoke or expiry) to newFirst, as the bench's watch saw
	// them; 0 when the deletion was not seen first.
	afterRevoke time.Duration
}

type trialResult struct {
	victim             string
	killAt             time.Time
	exit               time.Duration // signal to process exit
	samples            []sample
	minMoved, maxMoved time.Duration
	memberLeft         int           // 1 if the member process outlived its killed watchdog
	revoked            time.Duration // kill to the deletion of the victim's candidacies (0: not seen)
}

// trialKind is what a trial does to the member that holds probe lives:
// sig to the top-level process (`immortald run`, the watchdog), or, with
// member, SIGKILL to the member process alone.
type trialKind struct {
	sig    syscall.Signal
	member bool
}

func (k trialKind) String() string {
	if k.member {
		return "SIGKILL of the member process"
	}
	return sigName(k.sig)
}

// killTrial waits for the probes to settle, signals the member that holds
// probe lives (rotating among members), measures until every probe it held
// has a record of another holder (and each one's last effective age under
// the victim against the age it resumed at), then (if restart) starts the member again
// with its id.
func (b *bench) killTrial(ctx context.Context, al *ageLog, probes []string, kind trialKind, i int, restart bool) (trialResult, error) {
	sig := kind.sig
	var res trialResult
	if err := b.settle(ctx, al, probes); err != nil {
		return res, fmt.Errorf("probes did not settle: %w", err)
	}
	ms := b.alive()
	al.mu.Lock()
	held := al.holdersLocked(probes)
	per := make(map[string][]string)
	for n, o := range held {
		per[o.rec.Holder] = append(per[o.rec.Holder], n)
	}
	var victim *member
	for k := range ms {
		m := ms[(i+k)%len(ms)]
		if len(per[m.id]) > 0 {
			victim = m
			break
		}
	}
	if victim == nil {
		al.mu.Unlock()
		return res, fmt.Errorf("no alive member holds a probe life")
	}
	names := per[victim.id]
	sort.Strings(names)
	from := make(map[string]int, len(names))
	for _, n := range names {
		from[n] = len(al.hist[n])
	}
	al.mu.Unlock()

	res.victim = victim.id
	if sig == syscall.SIGKILL {
		// settle returns just after a heartbeat, and a member's heartbeats
		// and lease renewals tick from about the same start: a kill at once
		// would always fall at the same point of the renewal cycle (and so
		// always just after a renewal). Crashes come at any time.
		if err := sleepCtx(ctx, b.crashWait()); err != nil {
			return res, err
		}
	}
	memberPID, err := b.memberPID(ctx, victim.id)
	if err != nil {
		return res, err
	}
	res.killAt = time.Now()
	if kind.member {
		err = syscall.Kill(memberPID, syscall.SIGKILL)
	} else {
		err = victim.p.signal(sig)
	}
	if err != nil {
		return res, err
	}
	moved := func(n string) (obs, bool) {
		for _, o := range al.hist[n][from[n]:] {
			if !o.del && !o.beat && o.rec.Holder != victim.id {
				return o, true
			}
		}
		return obs{}, false
	}
	err = al.waitUntil(ctx, 30*time.Second, func() bool {
		for _, n := range names {
			if _, ok := moved(n); !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		return res, fmt.Errorf("lives of %s did not move: %w", victim.id, err)
	}
	al.mu.Lock()
	for _, n := range names {
		nf, _ := moved(n)
		var final obs
		for _, o := range al.hist[n] {
			if o.del || o.rev >= nf.rev {
				break
			}
			if o.rec.Holder == victim.id {
				final = o
			}
		}
		s := sample{name: n, final: final, newFirst: nf, moved: nf.at.Sub(res.killAt)}
		if gone, ok := al.leaseGone[final.rec.Lease]; ok && final.rec.Lease != 0 && gone.After(res.killAt) && !gone.After(nf.at) {
			s.afterRevoke = nf.at.Sub(gone)
			res.revoked = gone.Sub(res.killAt)
		}
		res.samples = append(res.samples, s)
		if res.minMoved == 0 || s.moved < res.minMoved {
			res.minMoved = s.moved
		}
		res.maxMoved = max(res.maxMoved, s.moved)
	}
	al.mu.Unlock()

	if kind.member {
		// Its watchdog revoked the lease and starts the member again.
		return res, b.waitRestarted(ctx, victim, memberPID)
	}
	if !victim.p.wait(20 * time.Second) {
		return res, fmt.Errorf("%s still runs 20s after %s", victim.id, sigName(sig))
	}
	res.exit = victim.p.exitedAt.Sub(res.killAt)
	if sig == syscall.SIGKILL && !observe.Gone(memberPID, 5*time.Second) {
		res.memberLeft = 1 // its watchdog is dead, and it runs on
		fmt.Fprintf(logw, "  trial %d: the member process %d of %s outlived its killed watchdog\n", i, memberPID, victim.id)
	}
	if !restart {
		return res, nil
	}
	if _, err := b.startMember(ctx, victim.id); err != nil {
		return res, fmt.Errorf("restart %s: %w", victim.id, err)
	}
	return res, nil
}

// settle waits until every probe's latest record is from an alive member,
// its effective age is fresh (its holder's heartbeat carried it within 3 s),
// and no probe changed holder for a while: a restarted member may take back
// the lives it is preferred for.
func (b *bench) settle(ctx context.Context, al *ageLog, probes []string) error {
	quiet := b.cfg.settleQuiet
	b.mu.Lock()
	started := b.lastStarted
	b.mu.Unlock()
	return al.waitUntil(ctx, 30*time.Second, func() bool {
		if time.Since(al.lastChange) < quiet || time.Since(started) < quiet {
			return false
		}
		live := make(map[string]bool)
		for _, m := range b.alive() {
			live[m.id] = true
		}
		for _, o := range al.holdersLocked(probes) {
			if !live[o.rec.Holder] || time.Since(o.at) > 3*time.Second {
				return false
			}
		}
		return true
	})
}

// crashWait is a random wait before a SIGKILL, so that it falls at any
// point of the member's cycles: uniform over 3/2 of the lease TTL, which
// is 4 renewal periods (3/8 TTL each) and, at an even TTL in seconds (the
// bench's 2 s), whole checkpoint intervals (1 s). A span that is not a
// multiple of both leaves the kills bunched in part of a cycle: a span of
// one TTL put 16 of 40 kills in the first 0.2 s of a 0.75 s renewal period
// (a run of 2026-12-04), and the failover median 0.1 s too high.
func (b *bench) crashWait() time.Duration {
	return rand.N(b.cfg.ttl() * 3 / 2)
}

func sigName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGKILL:
		return "SIGKILL"
	}
	return strings.ToUpper(s.String())
}
