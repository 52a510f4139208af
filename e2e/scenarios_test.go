//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestDemo is the original demo: a user puts Adam with etcdctl, reads his age
// from another member, stops his holder; Adam goes on elsewhere with his age,
// and a member that joins later reads the same age.
func TestDemo(t *testing.T) {
	e := setup(t, Options{})
	c, chk := e.c, e.chk
	ids := e.addMembers(3)

	e.etcdctl("put", e.key("lives", "Adam"), "")
	chk.WaitRunning(t, []string{"Adam"}, time.Time{}, 30*time.Second)
	e.waitAge([]string{"Adam"}, 3*time.Second)
	h, _ := chk.Holder("Adam")
	holder := h.Member
	other := ids[0]
	if other == holder {
		other = ids[1]
	}
	lifeID, _ := chk.LifeID("Adam")

	secs := getAgeSeconds(t, c, other, "Adam")
	cp, _ := chk.Latest("Adam")
	if secs < 3 || secs > cp.AgeMS/1000+2 {
		t.Errorf("get-age Adam on %s = %d, want about %d", other, secs, cp.AgeMS/1000)
	}
	st := getAge(t, c, other, "Adam")
	if st.Name != "Adam" || st.State != "running" || st.Holder != holder || st.LifeID != lifeID || st.AgeMS < 3000 || st.Age != st.AgeMS/1000 || st.Incarnation < 1 {
		t.Errorf("get-age Adam -o json on %s = %+v, want running on %s, life %d, age >= 3 s", other, st, holder, lifeID)
	}
	res, err := c.Exec(ctxT(20*time.Second), other, "get-age", "Nobody")
	if err == nil || res.Code == 0 {
		t.Errorf("get-age of an unknown life exited 0: %q", res.Stdout)
	} else if msg := strings.TrimSpace(res.Stderr); msg == "" || strings.Contains(msg, "\n") {
		t.Errorf("get-age of an unknown life: want one line on stderr, got %q", res.Stderr)
	}

	h0, fo, loss, stopTook := e.stopHolder("Adam", holder)
	newHolder := h0.New.Holder

	joined := e.addMembers(1)[0]
	e.waitAge([]string{"Adam"}, time.Duration(h0.Old.AgeMS+1000)*time.Millisecond)
	secs2 := getAgeSeconds(t, c, joined, "Adam")
	cp2, _ := chk.Latest("Adam")
	if secs2 < secs || secs2 < h0.Old.AgeMS/1000 || secs2 > cp2.AgeMS/1000+2 {
		t.Errorf("get-age Adam on the new member %s = %d, want about %d (and >= %d before the stop)", joined, secs2, cp2.AgeMS/1000, secs)
	}
	st2 := getAge(t, c, joined, "Adam")
	// Placement may hand Adam to the new member: any live holder will do.
	if st2.State != "running" || st2.Holder == "" || st2.Holder == holder || st2.LifeID != lifeID || st2.Incarnation <= st.Incarnation {
		t.Errorf("get-age Adam -o json on %s = %+v, want running on a member other than %s, life %d, incarnation > %d", joined, st2, holder, lifeID, st.Incarnation)
	}
	mem := listMembers(t, c, joined)
	if _, ok := mem[holder]; ok {
		t.Errorf("members still lists the stopped %s: %v", holder, mem)
	}
	if _, ok := mem[joined]; !ok {
		t.Errorf("members does not list %s: %v", joined, mem)
	}
	report(t, "demo", "failover_ms", fo.Max, "age_loss_ms", loss.Max, "docker_stop_ms", ms(stopTook),
		"age_before_stop_s", secs, "age_on_new_member_s", secs2, "old_holder", holder, "new_holder", newHolder)
	chk.Check(t)
}

// TestKill: SIGKILL the holder of about 50 lives (150 lives on three
// members, placed by the daemon; the most loaded one dies): its top-level
// process, the watchdog, and with it the container. Each of its lives runs
// again within TTL + 2 s, no age goes down, and each loses at most one
// checkpoint interval: the time since its holder's last heartbeat, which
// carried every one of its lives forward.
func TestKill(t *testing.T) {
	testKill(t, "kill", "L", Cluster.Kill, func(o Options) time.Duration { return o.LeaseTTL + 2*time.Second }, false)
}

// TestKillMember: SIGKILL of the member process of the holder of about 50
// lives, inside its container: the container's first process, the watchdog,
// sees it die, revokes its lease, and starts it again. Each of its lives runs
// elsewhere well under the TTL (at most half of it: a lease that expired
// could not have moved them so soon), loses at most one checkpoint interval,
// and the checker finds no write of the dead member after its lease ended.
// The restarted member joins again in the same container.
func TestKillMember(t *testing.T) {
	testKill(t, "kill-member", "M", Cluster.KillMember, func(o Options) time.Duration { return o.LeaseTTL / 2 }, true)
}

// testKill kills the most loaded of three members with kill and checks that
// its lives run elsewhere within maxFailover, and, if restarted, that the
// victim runs lives again afterwards.
func testKill(t *testing.T, scenario, prefix string, kill func(Cluster, context.Context, string) error,
	maxFailover func(Options) time.Duration, restarted bool) {
	e := setup(t, Options{})
	c, chk, o := e.c, e.chk, e.o
	ids := e.addMembers(3)
	names := lifeNames(prefix, 150)
	e.putLives(names)
	chk.WaitRunning(t, names, time.Time{}, 60*time.Second)
	e.settle(names, 60*time.Second)
	victim, held := e.mostLoaded(ids)
	e.waitAge(held, 2*time.Second)

	at := time.Now()
	must(t, kill(c, ctxT(time.Minute), victim))
	chk.Note("%s: %s holding %d lives", scenario, victim, len(held))
	hs := chk.WaitHandoffs(t, held, at, o.LeaseTTL+30*time.Second)
	fo, loss := e.handoffStats(hs, victim, maxFailover(o), o.CheckpointInterval+500*time.Millisecond)
	e.settle(names, 60*time.Second)
	alive := without(ids, victim)
	if restarted {
		alive = ids
		logs, err := c.Logs(ctxT(time.Minute), victim)
		must(t, err)
		if !strings.Contains(logs, "revoked the dead member's lease") {
			t.Errorf("%s's watchdog did not log a revoke", victim)
		}
	}
	e.waitExactlyOnce(names, alive, 60*time.Second)
	report(t, scenario, "lives", len(names), "killed_holder_lives", len(held), "failover_ms", fo.Max, "failover_ms_min", fo.Min,
		"failover_ms_avg", fo.Avg, "age_loss_ms", loss.Max, "age_loss_ms_avg", loss.Avg, "lease_ttl_ms", ms(o.LeaseTTL))
	chk.Check(t)
}

func without(ids []string, id string) []string {
	var out []string
	for _, x := range ids {
		if x != id {
			out = append(out, x)
		}
	}
	return out
}

// TestFreeze: the most loaded holder is frozen past its TTL; its peers take
// its lives. Thawed, it stops them at once, none of its writes lands after it
// lost them, and it comes back as a member (placement may then hand it lives
// again, gracefully).
func TestFreeze(t *testing.T) {
	testIsolated(t, "freeze",
		func(c Cluster, id string) error { return c.Freeze(ctxT(time.Minute), id) },
		func(c Cluster, id string) error { return c.Thaw(ctxT(time.Minute), id) })
}

// TestCutOff: the most loaded holder is cut off from etcd (network
// disconnect). It must stop its lives at its safe deadline, before a peer
// takes them; once reconnected it is a healthy member again: ready,
// registered, campaigning.
func TestCutOff(t *testing.T) {
	testIsolated(t, "cutoff",
		func(c Cluster, id string) error { return c.Disconnect(ctxT(time.Minute), id) },
		func(c Cluster, id string) error { return c.Reconnect(ctxT(time.Minute), id) })
}

func testIsolated(t *testing.T, scenario string, isolate, restore func(Cluster, string) error) {
	e := setup(t, Options{})
	c, chk, o := e.c, e.chk, e.o
	ids := e.addMembers(3)
	names := lifeNames("F", 30)
	e.putLives(names)
	chk.WaitRunning(t, names, time.Time{}, 60*time.Second)
	e.settle(names, 60*time.Second)
	holder, held := e.mostLoaded(ids)
	others := without(ids, holder)
	e.waitAge(held, 2*time.Second)

	at := time.Now()
	must(t, isolate(c, holder))
	chk.Note("%s: isolated %s holding %d lives", scenario, holder, len(held))
	hs := chk.WaitHandoffs(t, held, at, o.LeaseTTL+30*time.Second)
	fo, loss := e.handoffStats(hs, holder, o.LeaseTTL+2*time.Second, o.CheckpointInterval+500*time.Millisecond)
	// Keep it isolated a little past the takeover, then let it back.
	time.Sleep(o.CheckpointInterval)
	back := time.Now()
	must(t, restore(c, holder))
	chk.Note("%s: restored %s after %v", scenario, holder, back.Sub(at))

	// It must see it lost everything: within a TTL it runs no more lives
	// than etcd says it holds (none, unless placement already gave some
	// back), then it answers ready, registers again and campaigns again.
	must(t, poll(o.LeaseTTL, 100*time.Millisecond, holder+" to stop the lives it lost", func() (bool, string, error) {
		n, found, err := e.livesHeld(holder)
		if err != nil {
			return false, err.Error(), nil
		}
		if !found {
			t.Logf("no immortald_lives_held in /metrics of %s: not checked", holder)
			return true, "", nil
		}
		want := len(chk.HeldBy(holder))
		return n == want, fmt.Sprintf("it runs %d lives, holds %d in etcd", n, want), nil
	}))
	waitReady(t, c, 30*time.Second, holder)
	// How long it took to talk to etcd again: a new session and the wanted
	// lives read (bounded by the etcd client's reconnection settings).
	readyAfter := time.Since(back)
	waitFor(t, 30*time.Second, holder+" to be listed as a member again", func() (bool, string) {
		mem := listMembers(t, c, others[0])
		_, ok := mem[holder]
		return ok, fmt.Sprintf("members: %+v", mem)
	})
	waitFor(t, 30*time.Second, holder+" to campaign again", func() (bool, string) {
		for _, n := range names {
			for _, cd := range chk.Candidates(n) {
				if cd.Member == holder {
					return true, ""
				}
			}
		}
		return false, "no election key of " + holder
	})
	// Give a late write of the old holder every chance to land (the checker
	// flags any), let placement settle, and count every life once.
	e.settle(names, 60*time.Second)
	e.waitExactlyOnce(names, ids, 30*time.Second)
	// One runner: the isolated member must stop its lives at its safe
	// deadline, before any peer can win them. Its log says when (a message
	// outside the CLI contract, so a missing line is noted, not failed).
	takeover := hs[0].New.Time
	for _, h := range hs {
		if h.New.Time.Before(takeover) {
			takeover = h.New.Time
		}
	}
	orderKey, order := "stopped_before_takeover_ms", "unknown"
	logs, err := c.Logs(ctxT(30*time.Second), holder)
	must(t, err)
	if l, ok := firstLog(logs, at, "session lost"); !ok {
		t.Logf("no 'session lost' line in %s's log after the isolation: stop order not checked", holder)
	} else if scenario == "cutoff" {
		order = fmt.Sprint(ms(takeover.Sub(l.Time)))
		if !l.Time.Before(takeover) {
			t.Errorf("%s stopped its lives at %s, after a peer already ran one at %s: two runners at once",
				holder, l.Time.Format("15:04:05.000"), takeover.Format("15:04:05.000"))
		}
	} else {
		// Frozen, it could not stop anything; it must at once when thawed.
		orderKey, order = "stopped_after_thaw_ms", fmt.Sprint(ms(l.Time.Sub(back)))
	}
	report(t, scenario, "lives", len(names), "failover_ms", fo.Max, "failover_ms_avg", fo.Avg,
		"age_loss_ms", loss.Max, "age_loss_ms_avg", loss.Avg, "isolated_ms", ms(back.Sub(at)),
		orderKey, order, "ready_after_restore_ms", ms(readyAfter), "lease_ttl_ms", ms(o.LeaseTTL))
	chk.Check(t)
}

// TestEtcdMemberDown: SIGKILL the etcd leader, one member of three. The
// quorum stays, so no life changes holder and none loses age.
func TestEtcdMemberDown(t *testing.T) {
	// Losing the etcd leader costs an election (1-2 s with etcd's default
	// 1 s election timeout) before renewals and checkpoints go through again;
	// a 2 s lease cannot ride that out, and then holders rightly give their
	// lives up. The promise under test is that the quorum keeps them, so the
	// lease is given room: 5 s, the daemon's default.
	e := setup(t, Options{LeaseTTL: 5 * time.Second})
	c, chk, o := e.c, e.chk, e.o
	e.addMembers(3)
	names := lifeNames("E", 30)
	e.putLives(names)
	chk.WaitRunning(t, names, time.Time{}, 60*time.Second)
	e.settle(names, 60*time.Second)
	e.waitAge(names, 2*time.Second)
	before := map[string]Checkpoint{}
	for _, n := range names {
		before[n], _ = chk.Latest(n)
	}

	// The leader by default: the hard case. IMMORTALD_E2E_ETCD_VICTIM=follower
	// kills a follower instead, to tell an election's cost from a dead
	// connection's.
	victim := e.etcdLeader()
	wasLeader := true
	if os.Getenv("IMMORTALD_E2E_ETCD_VICTIM") == "follower" {
		for _, n := range c.EtcdMembers() {
			if n != victim {
				victim, wasLeader = n, false
				break
			}
		}
	}
	at := time.Now()
	must(t, c.EtcdKill(ctxT(time.Minute), victim))
	chk.Note("killed etcd member %s (leader: %v)", victim, wasLeader)
	newLeader := e.etcdLeader(victim)
	election := time.Since(at)
	chk.WaitRunning(t, names, time.Now().Add(3*o.CheckpointInterval), 30*time.Second)
	must(t, c.EtcdStart(ctxT(time.Minute), victim))
	chk.Note("started etcd %s again", victim)
	must(t, poll(60*time.Second, 200*time.Millisecond, victim+" to rejoin", func() (bool, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := c.Client().Status(ctx, c.EtcdEndpoint(victim))
		if err != nil {
			return false, err.Error(), nil
		}
		return st.Leader != 0, "", nil
	}))
	chk.WaitRunning(t, names, time.Now().Add(2*o.CheckpointInterval), 30*time.Second)

	changes, maxGap := 0, time.Duration(0)
	for _, n := range names {
		prev := before[n]
		for _, cp := range chk.History(n) {
			if cp.Rev <= before[n].Rev {
				continue
			}
			if cp.HolderRev != before[n].HolderRev {
				changes++
				t.Errorf("%s changed holder with one etcd member down: %s (key rev %d) -> %s (key rev %d) at rev %d",
					n, before[n].Holder, before[n].HolderRev, cp.Holder, cp.HolderRev, cp.Rev)
				break
			}
			maxGap = max(maxGap, cp.Time.Sub(prev.Time))
			prev = cp
		}
	}
	if maxGap > 2*o.CheckpointInterval+time.Second {
		// Not a broken promise by itself (the holders kept their leases and
		// their lives), but a holder crash inside such a gap would lose more
		// than one checkpoint interval. Reported, not failed.
		t.Logf("WARNING: checkpoints stalled for %v with one etcd member down (interval %v)", maxGap.Round(time.Millisecond), o.CheckpointInterval)
	}
	report(t, "etcd-member-down", "killed", victim, "was_leader", wasLeader, "new_leader", newLeader,
		"leader_election_ms", ms(election), "holder_changes", changes, "failover_ms", 0, "age_loss_ms", 0,
		"max_checkpoint_gap_ms", ms(maxGap), "lease_ttl_ms", ms(o.LeaseTTL))
	chk.Check(t)
}

// TestEtcdOutage: every etcd member stops for 20 s, then starts again.
// Afterwards every wanted life runs exactly once and no age went down.
func TestEtcdOutage(t *testing.T) {
	e := setup(t, Options{})
	c, chk, o := e.c, e.chk, e.o
	ids := e.addMembers(3)
	names := lifeNames("O", 30)
	e.putLives(names)
	chk.WaitRunning(t, names, time.Time{}, 60*time.Second)
	e.settle(names, 60*time.Second)
	e.waitAge(names, 2*time.Second)

	const outage = 20 * time.Second
	chk.Suspend()
	t0 := time.Now()
	must(t, parallel(c.EtcdMembers(), func(n string) error { return c.EtcdStop(ctxT(time.Minute), n) }))
	chk.Note("every etcd member stopped")
	// While etcd is gone, every member must stop being ready.
	notReady := map[string]bool{}
	for time.Since(t0) < outage {
		for _, id := range ids {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if ok, _ := c.Ready(ctx, id); !ok {
				notReady[id] = true
			}
			cancel()
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, id := range ids {
		if !notReady[id] {
			t.Errorf("%s stayed ready through a %v etcd outage", id, outage)
		}
	}
	t1 := time.Now()
	must(t, parallel(c.EtcdMembers(), func(n string) error { return c.EtcdStart(ctxT(time.Minute), n) }))
	chk.Note("every etcd member started again")
	must(t, waitEtcd(c.Client(), 60*time.Second))
	etcdBack := time.Since(t1)
	// From the moment etcd serves again, the usual bound holds.
	chk.Resume()
	chk.WaitRunning(t, names, t1, o.LeaseTTL+60*time.Second)
	recovered := time.Since(t1)
	waitReady(t, c, 30*time.Second, ids...)
	// Exactly once: every member's own count of the lives it runs matches
	// what etcd says it holds, and the member records add up to every life.
	e.settle(names, 60*time.Second)
	e.waitExactlyOnce(names, ids, 30*time.Second)
	var losses, resumes []int64
	for _, n := range names {
		var old, first *Checkpoint
		for _, cp := range chk.History(n) {
			if cp.Time.Before(t0) {
				old = &cp
			} else if cp.Time.After(t1) && first == nil {
				first = &cp
			}
		}
		if old != nil && first != nil {
			exp := old.AgeMS + max(0, t0.Sub(old.Time).Milliseconds())
			losses = append(losses, max(0, exp-first.AgeMS))
			resumes = append(resumes, first.Time.Sub(t1).Milliseconds())
		}
	}
	waitFor(t, 30*time.Second, "member records to count each life once", func() (bool, string) {
		mem := listMembers(t, c, ids[0])
		total := 0
		for _, m := range mem {
			total += m.Lives
		}
		return total == len(names), fmt.Sprintf("members hold %d lives in all: %+v", total, mem)
	})
	for n, st := range listLives(t, c, ids[0]) {
		if st.State != "running" {
			t.Errorf("ls: %s is %s, want running (%+v)", n, st.State, st)
		}
	}
	ls, rs := summarize(losses), summarize(resumes)
	report(t, "etcd-outage", "lives", len(names), "outage_ms", ms(t1.Sub(t0)), "etcd_back_ms", ms(etcdBack),
		"failover_ms", rs.Max, "recovery_ms", ms(recovered), "age_loss_ms", ls.Max, "age_loss_ms_avg", ls.Avg)
	chk.Check(t)
}

// TestRollingRestart: every member in turn is stopped (SIGTERM) and started
// again. Every life survives, and each graceful handoff loses next to no age.
func TestRollingRestart(t *testing.T) {
	e := setup(t, Options{})
	c, chk := e.c, e.chk
	ids := e.addMembers(3)
	names := lifeNames("R", 30)
	e.putLives(names)
	chk.WaitRunning(t, names, time.Time{}, 60*time.Second)
	e.settle(names, 60*time.Second)
	e.waitAge(names, time.Second)

	var all []Handoff
	var stops []int64
	for i, id := range ids {
		held := chk.HeldBy(id)
		at := time.Now()
		must(t, c.Stop(ctxT(time.Minute), id))
		stops = append(stops, ms(time.Since(at)))
		chk.Note("stopped %s holding %d lives", id, len(held))
		if len(held) > 0 {
			hs := chk.WaitHandoffs(t, held, at, 30*time.Second)
			all = append(all, hs...)
		}
		nid, err := c.Start(ctxT(time.Minute), id)
		must(t, err)
		ids[i] = nid
		waitReady(t, c, 60*time.Second, nid)
		e.settle(names, 60*time.Second)
	}
	e.waitExactlyOnce(names, ids, 30*time.Second)
	// Graceful: the member stops its lives, writes one final heartbeat (the
	// final checkpoint of them all, applied before its lease is revoked) and
	// the revoke hands each life over at once; the successor resumes at the
	// record carried forward to that heartbeat. Loss is in those effective
	// terms. "Near zero" gets 200 ms for this 2-core machine.
	fo, loss := e.handoffStats(all, "", 3*time.Second, 200*time.Millisecond)
	st := summarize(stops)
	report(t, "rolling-restart", "lives", len(names), "handoffs", len(all), "failover_ms", fo.Max, "failover_ms_avg", fo.Avg,
		"age_loss_ms", loss.Max, "age_loss_ms_avg", loss.Avg, "docker_stop_ms_max", st.Max)
	chk.Check(t)
}

// TestBadInput: bad names, bad options and garbage in an age record come in
// through the front door. Bad requests are shown invalid and never started,
// the garbage is kept under quarantine/, and every other life goes on.
func TestBadInput(t *testing.T) {
	e := setup(t, Options{})
	c, chk := e.c, e.chk
	ids := e.addMembers(3)
	good := []string{"G1", "G2", "G3"}
	e.etcdctl("put", e.key("lives", "G1"), "")
	e.etcdctl("put", e.key("lives", "G2"), "")
	e.etcdctl("put", e.key("lives", "G3"), `{"labels":{"team":"e2e"}}`)
	bad := map[string]string{
		"bad name":               "",
		strings.Repeat("x", 129): "",
		"a/b":                    "",
		"opts-unknown":           `{"nope":1}`,
		"opts-notjson":           "not json",
	}
	for name, value := range bad {
		e.etcdctl("put", e.key("lives", name), value)
	}
	// The CLI, run inside a member as an operator would (kubectl exec on
	// kind), refuses a bad name itself: exit 2, naming the rule.
	res, err := c.Exec(ctxT(20*time.Second), ids[0], "start", "bad name")
	if err == nil || res.Code != 2 || !strings.Contains(res.Stderr, "bad life name") {
		t.Errorf("immortald start 'bad name' in %s: exit %d, stderr %q, want exit 2 naming the bad name", ids[0], res.Code, res.Stderr)
	}
	res, err = c.Exec(ctxT(20*time.Second), ids[0], "start", "G9", "--no-such-flag")
	if err == nil || res.Code != 2 {
		t.Errorf("immortald start G9 --no-such-flag in %s: exit %d, stderr %q, want exit 2", ids[0], res.Code, res.Stderr)
	}
	chk.WaitRunning(t, good, time.Time{}, 30*time.Second)
	waitFor(t, 20*time.Second, "ls to show every bad request invalid", func() (bool, string) {
		ls := listLives(t, c, ids[0])
		for name := range bad {
			st, ok := ls[name]
			if !ok || st.State != "invalid" || st.Error == "" {
				return false, fmt.Sprintf("%.20q: %+v", name, st)
			}
		}
		for _, name := range good {
			if ls[name].State != "running" {
				return false, fmt.Sprintf("%s: %+v", name, ls[name])
			}
		}
		return true, ""
	})
	// Touch nothing else: no campaign, no age record for a bad request.
	for name := range bad {
		for _, section := range []string{"elections", "ages"} {
			resp, err := c.Client().Get(ctxT(10*time.Second), e.key(section, name), clientv3.WithPrefix(), clientv3.WithCountOnly())
			must(t, err)
			if resp.Count != 0 {
				t.Errorf("%s/%.20q has %d keys; a bad request must not be touched", section, name, resp.Count)
			}
		}
	}

	// Garbage into the age record of a running life.
	const garbage = "}{ this is not an age record"
	chk.AllowGarbage("G1")
	before, _ := chk.Latest("G1")
	gAt := time.Now()
	e.etcdctl("put", e.key("ages", "G1"), garbage)
	chk.Note("garbage put into ages/G1")
	quarantined := true
	if err := poll(15*time.Second, 100*time.Millisecond, "the garbage to be kept under quarantine/G1", func() (bool, string, error) {
		b, ok := chk.Quarantined("G1")
		return ok && string(b) == garbage, fmt.Sprintf("quarantine/G1 = %q", b), nil
	}); err != nil {
		quarantined = false
		t.Error(err)
	}
	// The daemon keeps serving every other life, and all members stay up.
	chk.WaitRunning(t, []string{"G2", "G3"}, time.Now().Add(2*time.Second), 20*time.Second)
	waitReady(t, c, 10*time.Second, ids...)
	st := getAge(t, c, ids[1], "G1")
	if st.Error == "" && st.State != "invalid" {
		t.Errorf("get-age G1 -o json after garbage in ages/G1 = %+v; want an error about it", st)
	}
	after, _ := chk.Latest("G1")
	g1Running := after.Time.After(gAt)
	ls := listLives(t, c, ids[2])
	if ls["G3"].State != "running" || ls["G2"].State != "running" {
		t.Errorf("ls after the garbage: G2 %+v, G3 %+v; want both running", ls["G2"], ls["G3"])
	}
	// Options of a running life turn bad: it stops, shown invalid, and
	// keeps its age; fixed, it runs again from that age (the checker fails
	// any decrease), under the same life id.
	g2, _ := chk.Latest("G2")
	badAt := time.Now()
	e.etcdctl("put", e.key("lives", "G2"), `{"nope":1}`)
	waitFor(t, 20*time.Second, "G2 to be shown invalid", func() (bool, string) {
		st := getAge(t, c, ids[0], "G2")
		return st.State == "invalid" && st.Error != "", fmt.Sprintf("%+v", st)
	})
	waitFor(t, 20*time.Second, "G2 to stop", func() (bool, string) {
		cp, _ := chk.Latest("G2")
		return time.Since(cp.Seen) > 2*e.o.CheckpointInterval, fmt.Sprintf("last checkpoint %v ago", time.Since(cp.Seen))
	})
	stopped, _ := chk.Latest("G2")
	e.etcdctl("put", e.key("lives", "G2"), "")
	chk.WaitRunning(t, []string{"G2"}, time.Now(), 20*time.Second)
	resumed := chk.History("G2")
	var g2first Checkpoint
	for _, cp := range resumed {
		if cp.Rev > stopped.Rev {
			g2first = cp
			break
		}
	}
	if g2first.LifeID != g2.LifeID || g2first.AgeMS < stopped.AgeMS || stopped.AgeMS < g2.AgeMS {
		t.Errorf("G2 resumed at %+v after being stopped at %+v (running at %+v before)", g2first, stopped, g2)
	}
	if d := stopped.Time.Sub(badAt); d > 2*time.Second {
		t.Errorf("G2 was still checkpointed %v after its options turned bad", d.Round(time.Millisecond))
	}

	// Each member says once in its log that a bad request was refused.
	mentions := map[string]int{}
	for _, id := range ids {
		logs, err := c.Logs(ctxT(30*time.Second), id)
		must(t, err)
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "opts-unknown") {
				mentions[id]++
			}
		}
		if n := mentions[id]; n == 0 || n > 2 {
			t.Errorf("%s's log has %d lines about the bad request opts-unknown; want it said once", id, n)
		}
	}
	report(t, "bad-input", "invalid_shown", len(bad), "quarantined", quarantined,
		"g2_age_kept_ms", stopped.AgeMS, "g2_resumed_ms", g2first.AgeMS,
		"g1_state", st.State, "g1_error", fmt.Sprintf("%q", st.Error), "g1_age_before_ms", before.AgeMS,
		"g1_age_after_ms", after.AgeMS, "g1_running_after", g1Running, "log_mentions_opts_unknown", fmt.Sprint(mentions))
	chk.Check(t)
}
