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

// TestEtcdMemberIsolated: one etcd member of three is cut off from its peers
// for 18 s while it still answers clients (its peer network is disconnected,
// its client network is not). The two others are a quorum the whole time.
// Three immortald members list all three etcd endpoints, a fourth only the
// two healthy ones; every one reaches that quorum, so none may lose its
// session, and no life may go unheld longer than the TTL plus a campaign
// round (3 s of slack for this 2-core machine). The isolated member is made
// the etcd leader first (etcdctl move-leader), or is a follower.
func TestEtcdMemberIsolated(t *testing.T) {
	if os.Getenv("IMMORTALD_E2E_BACKEND") == "kind" {
		t.Skip("needs a peer network of its own for etcd: docker backend only")
	}
	t.Run("leader", func(t *testing.T) { testEtcdMemberIsolated(t, true) })
	t.Run("follower", func(t *testing.T) { testEtcdMemberIsolated(t, false) })
}

func testEtcdMemberIsolated(t *testing.T, leader bool) {
	const isolation = 18 * time.Second
	e := setup(t, Options{LeaseTTL: 5 * time.Second, PeerNetwork: true})
	c, chk, o := e.c, e.chk, e.o
	victim := c.EtcdMembers()[2]
	ids := e.addMembers(3)
	healthyOnly, err := c.(*dockerCluster).addMembers(ctxT(3*time.Minute), 1, without(c.EtcdMembers(), victim))
	must(t, err)
	waitReady(t, c, 60*time.Second, healthyOnly...)
	chk.Note("member %v lists only the etcd members other than %s", healthyOnly, victim)
	ids = append(ids, healthyOnly...)
	names := lifeNames("I", 30)
	e.putLives(names)
	chk.WaitRunning(t, names, time.Time{}, 60*time.Second)
	e.settle(names, 60*time.Second)
	e.waitAge(names, 2*time.Second)

	// The victim leads, or follows, as an operator would arrange it.
	switch cur := e.etcdLeader(); {
	case leader && cur != victim:
		e.moveEtcdLeader(victim, names)
	case !leader && cur == victim:
		e.moveEtcdLeader(c.EtcdMembers()[0], names)
	}
	before := map[string]int{}
	for _, id := range ids {
		before[id] = e.sessionLosses(id)
	}

	at := time.Now()
	must(t, c.EtcdCutPeers(ctxT(time.Minute), victim))
	chk.Note("cut etcd member %s (leader: %v) off from its peers", victim, leader)
	time.Sleep(isolation - time.Since(at))
	back := time.Now()
	must(t, c.EtcdJoinPeers(ctxT(time.Minute), victim))
	chk.Note("etcd member %s rejoined its peers after %v", victim, back.Sub(at).Round(time.Millisecond))

	// The victim is back once it follows a leader and serves, from its own
	// log, a write made after the rejoin.
	vcli, err := newEtcdClient([]string{c.EtcdEndpoint(victim)})
	must(t, err)
	defer vcli.Close()
	mark, err := c.Client().Put(ctxT(30*time.Second), "/e2e/rejoin", back.String())
	must(t, err)
	must(t, poll(60*time.Second, 100*time.Millisecond, victim+" to catch up", func() (bool, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := vcli.Status(ctx, c.EtcdEndpoint(victim))
		if err != nil {
			return false, err.Error(), nil
		}
		if st.Leader == 0 || st.RaftAppliedIndex == 0 {
			return false, "no leader", nil
		}
		g, err := vcli.Get(ctx, "/e2e/rejoin", clientv3.WithSerializable())
		if err != nil {
			return false, err.Error(), nil
		}
		return len(g.Kvs) == 1 && g.Kvs[0].ModRevision >= mark.Header.Revision, "behind", nil
	}))
	rejoin := time.Since(back)
	// Whatever the rejoin stirs up (a leader change, streams moving back)
	// has a TTL to show, then every life must run.
	time.Sleep(o.LeaseTTL)
	chk.WaitRunning(t, names, time.Now().Add(2*o.CheckpointInterval), 30*time.Second)

	lost := 0
	for _, id := range ids {
		if n := e.sessionLosses(id) - before[id]; n > 0 {
			lost += n
			t.Errorf("%s lost its session %d times while a quorum of etcd was reachable (%s cut off from its peers)", id, n, victim)
		}
	}
	// Unheld: from the last checkpoint of a holder to the first of the
	// next. Gaps under one holder are checkpoints that stalled.
	changes := 0
	var unheld, gap time.Duration
	for _, n := range names {
		hist := chk.History(n)
		for i := 1; i < len(hist); i++ {
			prev, cp := hist[i-1], hist[i]
			if !cp.Time.After(at) {
				continue
			}
			d := cp.Time.Sub(prev.Time)
			gap = max(gap, d)
			if cp.HolderRev != prev.HolderRev {
				changes++
				unheld = max(unheld, d)
				if d > o.LeaseTTL+3*time.Second {
					t.Errorf("%s was unheld for %v (last checkpoint by %s at %s, next by %s at %s), over TTL + 3 s",
						n, d.Round(time.Millisecond), prev.Holder, prev.Time.Format("15:04:05.000"), cp.Holder, cp.Time.Format("15:04:05.000"))
				}
			}
		}
	}
	e.waitExactlyOnce(names, ids, 30*time.Second)
	report(t, "etcd-member-isolated", "victim", victim, "was_leader", leader, "members", len(ids), "isolated_ms", ms(back.Sub(at)),
		"sessions_lost", lost, "holder_changes", changes, "worst_unheld_ms", ms(unheld), "max_checkpoint_gap_ms", ms(gap),
		"etcd_rejoin_ms", ms(rejoin), "lease_ttl_ms", ms(o.LeaseTTL))
	chk.Check(t)
}

// sessionLosses reads immortald_session_losses_total from a member's /metrics.
func (e *env) sessionLosses(id string) int {
	e.t.Helper()
	n, found, err := e.metric(id, "immortald_session_losses_total")
	must(e.t, err)
	if !found {
		e.t.Fatalf("no immortald_session_losses_total in /metrics of %s", id)
	}
	return int(n)
}

// moveEtcdLeader makes the etcd member named the leader (etcdctl
// move-leader), and waits until the lives are checkpointed under it.
func (e *env) moveEtcdLeader(to string, names []string) {
	e.t.Helper()
	st, err := e.c.Client().Status(ctxT(10*time.Second), e.c.EtcdEndpoint(to))
	must(e.t, err)
	var urls []string
	for _, n := range e.c.EtcdMembers() {
		urls = append(urls, "http://"+n+":2379") // as the etcd containers reach each other's client port
	}
	e.etcdctl("--endpoints", strings.Join(urls, ","), "move-leader", fmt.Sprintf("%x", st.Header.MemberId))
	waitFor(e.t, 30*time.Second, to+" to lead", func() (bool, string) {
		l := e.etcdLeader()
		return l == to, "leader is " + l
	})
	e.chk.Note("moved the etcd leadership to %s", to)
	e.chk.WaitRunning(e.t, names, time.Now().Add(2*e.o.CheckpointInterval), 30*time.Second)
}
