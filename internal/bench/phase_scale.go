package bench

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// phaseScale measures placement as members come and go, with
// cfg.scaleLives lives:
//  1. one member runs them all;
//  2. a second member starts, and the first gets SIGTERM: every life is
//     handed off gracefully at once (handoff_one_member_ms, and its ratio
//     to step 1's placement: ratio_handoff_to_place_one_member);
//  3. the first comes back, and the member process of the second (which
//     holds every life) is SIGKILLed: its watchdog revokes its lease and
//     the first takes every life (member_crash_one_member_ms); then the
//     second comes back and the lives spread over two members;
//  4. two more members start (scale-out 2 -> 4): how long until every member
//     holds its fair share within 10%, how many lives moved (the minimum is
//     about half), whether any age was lost, whether any life moved twice.
func (b *bench) phaseScale(ctx context.Context) error {
	n := b.cfg.scaleLives
	b.rep.set("scale_lives", n)
	if _, err := b.startMember(ctx, "s1"); err != nil {
		return err
	}
	tr, err := startTracker(ctx, b.cli)
	if err != nil {
		return err
	}
	defer func() {
		tr.stop()
		tr.report(b.rep)
	}()

	// 1. One member runs every life.
	t0 := time.Now()
	if err := bulkPut(ctx, b.cli, n); err != nil {
		return err
	}
	if err := tr.waitFor(ctx, b.cfg.placeTimeout, func() bool { return tr.placedOn(n, "s1") }); err != nil {
		return fmt.Errorf("placing %d lives on one member: %w", n, err)
	}
	placed := time.Since(t0)
	b.rep.set("scale_place_one_member_s", placed.Seconds())

	// 2. SIGTERM of the member that holds them all, with a ready peer. (s2
	// is not restarted by its watchdog in step 3: the bench does that.)
	if _, err := b.startMember(ctx, "s2", "--restart-member=false"); err != nil {
		return err
	}
	b.mu.Lock()
	s1 := b.members["s1"]
	b.mu.Unlock()
	tr.resetMoves()
	t0 = time.Now()
	if err := s1.p.signal(syscall.SIGTERM); err != nil {
		return err
	}
	if err := tr.waitFor(ctx, b.cfg.moveTimeout, func() bool { return tr.placedOn(n, "s2") }); err != nil {
		return fmt.Errorf("handing %d lives from s1 to s2: %w", n, err)
	}
	handoff := time.Since(t0)
	b.rep.set("handoff_one_member_ms", ms(handoff))
	b.rep.set("handoff_one_member_lives", n)
	b.rep.set("ratio_handoff_to_place_one_member", round(handoff.Seconds()/placed.Seconds(), 3))
	mv := tr.moveStats()
	b.rep.set("handoff_one_member_age_lost_ms_max", mv.lostMax)
	fmt.Fprintf(logw, "  scale: SIGTERM of the member holding all %d lives: all on its peer in %s\n", n, time.Since(t0).Round(time.Millisecond))
	if !s1.p.wait(30 * time.Second) {
		return fmt.Errorf("s1 still runs 30s after SIGTERM")
	}

	// 3. It comes back, and the member process of s2, which holds them
	// all, is SIGKILLed: its watchdog revokes its lease (and exits, with
	// --restart-member=false) and s1 takes every life at once.
	if _, err := b.startMember(ctx, "s1"); err != nil {
		return err
	}
	b.mu.Lock()
	s2 := b.members["s2"]
	b.mu.Unlock()
	pid, err := b.memberPID(ctx, "s2")
	if err != nil {
		return err
	}
	tr.resetMoves()
	t0 = time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	if err := tr.waitFor(ctx, b.cfg.moveTimeout, func() bool { return tr.placedOn(n, "s1") }); err != nil {
		return fmt.Errorf("moving %d lives from the killed member process of s2 to s1: %w (holders %v)", n, err, tr.holders())
	}
	b.rep.set("member_crash_one_member_ms", ms(time.Since(t0)))
	mv = tr.moveStats()
	b.rep.set("member_crash_one_member_age_lost_ms_max", mv.lostMax)
	fmt.Fprintf(logw, "  scale: SIGKILL of the member process holding all %d lives: all on its peer in %s, age lost at most %.0f ms\n",
		n, time.Since(t0).Round(time.Millisecond), mv.lostMax)
	if !s2.p.wait(30 * time.Second) {
		return fmt.Errorf("the watchdog of s2 still runs 30s after its member died (--restart-member=false)")
	}

	// s2 comes back: two members share the lives.
	t0 = time.Now()
	if _, err := b.startMember(ctx, "s2"); err != nil {
		return err
	}
	two := []string{"s1", "s2"}
	if err := tr.waitFor(ctx, b.cfg.moveTimeout, func() bool { return tr.balanced(n, two, 0.10) }); err != nil {
		return fmt.Errorf("balancing over 2 members: %w (holders %v)", err, tr.holders())
	}
	b.rep.set("scaleout_1_to_2_s", time.Since(t0).Seconds())
	// The last few moves of this step must not count against the next.
	if err := tr.waitFor(ctx, b.cfg.moveTimeout, func() bool { return tr.quietFor(b.cfg.settleQuiet) }); err != nil {
		return fmt.Errorf("waiting for moves to end: %w", err)
	}

	// 4. Scale-out from 2 to 4.
	four := []string{"s1", "s2", "s3", "s4"}
	tr.resetMoves()
	t0 = time.Now()
	if _, err := b.startMembers(ctx, "s3", "s4"); err != nil {
		return err
	}
	if err := tr.waitFor(ctx, b.cfg.moveTimeout, func() bool { return tr.balanced(n, four, 0.10) }); err != nil {
		return fmt.Errorf("balancing over 4 members: %w (holders %v)", err, tr.holders())
	}
	b.rep.set("scaleout_2_to_4_s", time.Since(t0).Seconds())
	// Then watch a while longer: a life that moves again is flapping.
	if err := sleepCtx(ctx, b.cfg.flapWindow); err != nil {
		return err
	}
	mv = tr.moveStats()
	b.rep.set("scaleout_2_to_4_moves", mv.moves)
	b.rep.set("scaleout_2_to_4_moves_min", n/2)
	b.rep.set("scaleout_2_to_4_lives_moved_twice", mv.twice)
	b.rep.set("scaleout_2_to_4_age_lost_ms_max", mv.lostMax)
	b.rep.set("scaleout_2_to_4_holders", tr.holders())
	b.rep.set("scaleout_2_to_4_share_dev_max", tr.shareDev(n, four))
	fmt.Fprintf(logw, "  scale: 2 -> 4 members with %d lives: balanced within 10%% in %.2fs, %d moves (minimum about %d), %d lives moved twice\n",
		n, b.rep.vals["scaleout_2_to_4_s"], mv.moves, n/2, mv.twice)
	return nil
}
