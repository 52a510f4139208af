//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Scenarios about nodes, on the kind cluster of make e2e-kind (a control
// plane and three workers, hack/kind/cluster.yaml): the pods of deploy/base
// spread one a node, a node drained under the PodDisruptionBudget, and a node
// lost without warning. TestKindNodeLost leaves the cluster a node short, so
// hack/kind/e2e.sh runs it last, in a go test of its own.

// schedulableNodes returns the nodes that take pods: neither cordoned nor
// tainted NoSchedule or NoExecute (kind's control plane is, once it has
// workers).
func (c *kindCluster) schedulableNodes(t testing.TB) []string {
	t.Helper()
	out := c.kubectl(t, 30*time.Second, "get", "nodes", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.spec.unschedulable} {.spec.taints[*].effect}{"\n"}{end}`)
	var nodes []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || slices.Contains(f[1:], "true") || slices.Contains(f[1:], "NoSchedule") || slices.Contains(f[1:], "NoExecute") {
			continue
		}
		nodes = append(nodes, f[0])
	}
	if len(nodes) == 0 {
		t.Fatalf("kind backend: no node takes pods:\n%s", out)
	}
	return nodes
}

// podNodes returns the node of each pod with the label app.kubernetes.io/name=app
// that is not being deleted.
func (c *kindCluster) podNodes(t testing.TB, app string) map[string]string {
	t.Helper()
	out := c.kubectl(t, 30*time.Second, "get", "pods", "-l", "app.kubernetes.io/name="+app, "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.deletionTimestamp}{"\n"}{end}`)
	nodes := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			nodes[f[0]] = f[1]
		}
	}
	return nodes
}

// checkSpread fails the test unless the pods of app (immortald or etcd) run
// on as many distinct nodes as they can: one a node while there are nodes
// enough (deploy/base's topologySpreadConstraints, maxSkew 1). It returns
// each pod's node.
func (c *kindCluster) checkSpread(t testing.TB, app string, nodes []string) map[string]string {
	t.Helper()
	where := c.podNodes(t, app)
	count := map[string]int{}
	for _, n := range where {
		count[n]++
	}
	lo, hi := len(where), 0
	for _, n := range nodes {
		lo, hi = min(lo, count[n]), max(hi, count[n])
	}
	if hi-lo > 1 || len(count) > len(nodes) {
		t.Errorf("%s pods over the nodes %v: %v (skew %d, want at most 1)", app, nodes, where, hi-lo)
	}
	return where
}

// readyWatch follows the Ready condition of the immortald pods through one
// `kubectl get pods -w` and keeps the lowest number of ready pods it saw.
type readyWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	ready  map[string]bool
	low    int
	lowAt  time.Time
	events int
	log    []string // each event: time, pod, Ready, ready pods
	now    int      // ready pods after the last event
	armed  bool     // low counts from here on (arm)
}

func (c *kindCluster) watchReady(t testing.TB) *readyWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &readyWatch{cancel: cancel, done: make(chan struct{}), ready: map[string]bool{}, low: -1}
	cmd := exec.CommandContext(ctx, "kubectl", "--context", "kind-"+c.name, "-n", c.ns, "get", "pods",
		"-l", "app.kubernetes.io/name=immortald", "-w", "-o",
		`jsonpath={.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}`)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 0 {
				continue
			}
			w.mu.Lock()
			w.ready[f[0]] = len(f) > 1 && f[1] == "True"
			n := 0
			for _, r := range w.ready {
				if r {
					n++
				}
			}
			w.events++
			w.now = n
			w.log = append(w.log, fmt.Sprintf("%s %s %s: %d ready", time.Now().Format("15:04:05.000"), f[0], strings.Join(f[1:], " "), n))
			if w.armed && n < w.low {
				w.low, w.lowAt = n, time.Now()
			}
			w.mu.Unlock()
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(w.stop)
	return w
}

// stop ends the watch (again: a no-op).
func (w *readyWatch) stop() {
	w.cancel()
	<-w.done
}

// arm starts keeping the lowest count of ready pods, from the count now (the
// watch's first events list the pods one by one).
func (w *readyWatch) arm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed, w.low, w.lowAt = true, w.now, time.Now()
}

// lowest returns the lowest count of ready pods seen since arm (-1 before),
// when it was first seen, and how many events the watch read.
func (w *readyWatch) lowest() (int, time.Time, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.low, w.lowAt, w.events
}

// startAdam starts Adam as the demo does and, beside him, n lives named
// prefix000...; it waits until all run and have settled, and Adam is 3 s
// old.
func (e *env) startAdam(prefix string, n int) []string {
	e.t.Helper()
	ids := e.c.Members()
	out := cli(e.t, e.c, ids[0], "start", "Adam")
	e.chk.Note("kubectl exec %s -- /immortald start Adam: %q", ids[0], strings.TrimSpace(out))
	names := append([]string{"Adam"}, lifeNames(prefix, n)...)
	e.putLives(names[1:])
	e.chk.WaitRunning(e.t, names, time.Time{}, 90*time.Second)
	e.settle(names, 2*time.Minute)
	e.waitAge([]string{"Adam"}, 3*time.Second)
	return names
}

// handoffOf returns the handoff of the life name among hs.
func handoffOf(hs []Handoff, name string) Handoff {
	for _, h := range hs {
		if h.Name == name {
			return h
		}
	}
	return Handoff{}
}

// TestKindDrain: the pods of deploy/base spread one a worker (immortald and
// etcd alike); `kubectl drain` of the node of Adam's holder evicts its pods
// under the PodDisruptionBudgets. Adam and the other lives there move by a
// graceful handoff, each losing no more age than a handoff does (500 ms, as
// for kubectl delete pod), the number of ready immortald pods never drops
// below the budget's minimum (a watch follows it throughout the drain), and
// the Deployment's replacement pod runs on another node. Uncordoned, the
// node takes its etcd pod back (its volume is there) and every life runs
// exactly once.
func TestKindDrain(t *testing.T) {
	kindOnly(t)
	e := setup(t, Options{})
	c, chk, kc := e.c, e.chk, e.kind()
	nodes := kc.schedulableNodes(t)
	if len(nodes) < 3 {
		t.Skipf("%d nodes take pods (%v); the drain needs 3 (hack/kind/cluster.yaml)", len(nodes), nodes)
	}
	ids := e.addMembers(3)
	where := kc.checkSpread(t, "immortald", nodes)
	etcdWhere := kc.checkSpread(t, "etcd", nodes)
	names := e.startAdam("D", 30)
	h, _ := chk.Holder("Adam")
	holder := h.Member
	node := where[holder]
	held := chk.HeldBy(holder)
	desired := strings.TrimSpace(kc.kubectl(t, 30*time.Second, "get", "pdb", kindDeployment, "-o", "jsonpath={.status.desiredHealthy}"))
	minReady, err := strconv.Atoi(desired)
	if err != nil || minReady < 1 {
		t.Fatalf("PodDisruptionBudget %s: desiredHealthy %q", kindDeployment, desired)
	}

	w := kc.watchReady(t)
	waitFor(t, 30*time.Second, "the watch to list the ready pods", func() (bool, string) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.now == len(ids), fmt.Sprintf("%d ready of %d", w.now, len(ids))
	})
	w.arm()
	at := time.Now()
	uncordoned := false
	t.Cleanup(func() {
		if !uncordoned {
			_, _ = run(ctxT(time.Minute), "kubectl", "--context", "kind-"+kc.name, "uncordon", node)
		}
	})
	res, err := run(ctxT(5*time.Minute), "kubectl", "--context", "kind-"+kc.name, "drain", node,
		"--ignore-daemonsets", "--delete-emptydir-data", "--timeout=4m")
	must(t, err)
	drainTook := time.Since(at)
	chk.Note("kubectl drain %s (Adam's holder %s, %d lives) in %v", node, holder, len(held), drainTook.Round(time.Millisecond))
	if !strings.Contains(res.Stdout, "pod/"+holder+" evicted") {
		t.Errorf("kubectl drain did not say it evicted %s:\n%s", holder, res.Stdout)
	}
	hs := chk.WaitHandoffs(t, held, at, 60*time.Second)
	fo, loss := e.handoffStats(hs, holder, 5*time.Second, 500*time.Millisecond)
	adam := handoffOf(hs, "Adam")
	pods := kc.scale(t, 3) // the replacement is up and ready; the evicted pod is gone
	after := kc.podNodes(t, "immortald")
	for _, p := range pods {
		if after[p] == node {
			t.Errorf("%s runs on the drained node %s", p, node)
		}
	}
	if n := after[adam.New.Holder]; n == node || n == "" {
		t.Errorf("Adam's new holder %s is on node %q", adam.New.Holder, n)
	}
	e.settle(names, 2*time.Minute)
	low, lowAt, events := w.lowest()
	w.stop()
	if low < minReady {
		t.Errorf("%d immortald pods ready at %s during the drain, below the PodDisruptionBudget's %d; the watch:\n%s",
			low, lowAt.Format("15:04:05.000"), minReady, strings.Join(w.log, "\n"))
	}

	kc.kubectl(t, time.Minute, "uncordon", node)
	uncordoned = true
	kc.kubectl(t, 6*time.Minute, "rollout", "status", "statefulset/"+kindEtcdSet, "--timeout=5m")
	must(t, waitEtcd(c.Client(), 2*time.Minute))
	back := kc.podNodes(t, "etcd")
	for p, n := range etcdWhere {
		if back[p] != n {
			t.Errorf("etcd pod %s on %q after the uncordon, was on %s (its volume)", p, back[p], n)
		}
	}
	e.settle(names, 2*time.Minute)
	e.waitExactlyOnce(names, pods, time.Minute)
	report(t, "kind-drain", "lives", len(names), "drained_lives", len(held), "drain_ms", ms(drainTook),
		"adam_handoff_ms", ms(adam.Failover), "adam_age_loss_ms", max(0, ms(adam.Loss)),
		"failover_ms", fo.Max, "failover_ms_avg", fo.Avg, "age_loss_ms", loss.Max,
		"ready_min", low, "pdb_min", minReady, "watch_events", events, "node", node, "old_holder", holder, "new_holder", adam.New.Holder)
	chk.Check(t)
}

// kindNode checks that a Docker container is a worker node of this run's
// kind cluster (kind's labels on it), so that the test pauses and kills only
// its own.
func (c *kindCluster) kindNode(t testing.TB, node string) {
	t.Helper()
	res := runT(t, 30*time.Second, "docker", "inspect", "-f",
		`{{index .Config.Labels "io.x-k8s.kind.cluster"}} {{index .Config.Labels "io.x-k8s.kind.role"}}`, node)
	if got := strings.TrimSpace(res.Stdout); got != c.name+" worker" {
		t.Fatalf("container %s is %q, not a worker of kind cluster %s: not touched", node, got, c.name)
	}
}

// TestKindNodeLost: the node of Adam's holder is lost without warning. Its
// container is frozen (docker pause: kubelet, etcd pod and immortald pod
// stop at once, no SIGTERM), and the lives there run on the other nodes'
// members within the lease TTL and a campaign round, plus etcd's leader
// election when the etcd leader was on that node (see maxFailover); none
// loses more than a checkpoint interval. The survivors' calls and streams
// that went to the frozen etcd pod move off it once its status probes go
// unanswered (etcdclient's health.go), not after gRPC's keep-alive.
// The node then thaws for a moment: its member, its lease long gone, stops
// every life it lost before any write of its lands (the checker fails a
// stale write), and the node is killed (docker kill), its lives again taken
// over. The cluster stays a node short (make e2e-kind runs this last).
func TestKindNodeLost(t *testing.T) {
	kindOnly(t)
	e := setup(t, Options{})
	c, chk, o, kc := e.c, e.chk, e.o, e.kind()
	nodes := kc.schedulableNodes(t)
	if len(nodes) < 3 {
		t.Skipf("%d nodes take pods (%v); losing one needs 3 (hack/kind/cluster.yaml)", len(nodes), nodes)
	}
	ids := e.addMembers(3)
	where := kc.checkSpread(t, "immortald", nodes)
	kc.checkSpread(t, "etcd", nodes)
	names := e.startAdam("N", 30)
	h, _ := chk.Holder("Adam")
	holder := h.Member
	node := where[holder]
	kc.kindNode(t, node)
	held := chk.HeldBy(holder)
	survivors := without(ids, holder)
	if os.Getenv("IMMORTALD_E2E_NODE_LOST_ETCD_LEADER") != "" {
		kc.moveEtcdLeaderTo(t, e, node)
	}
	leader := e.etcdLeader()
	leaderLost := kc.podNodes(t, "etcd")[leader] == node
	// The bound of the lives' failover, and the checker's with it: the
	// lease TTL, or etcdclient's health bound (2.5 s) for a standby whose
	// connection went to the frozen etcd pod, and a campaign round: TTL +
	// 3 s with slack. When the etcd leader was on the node, its followers
	// elect another first (after a randomised election timeout of 1 to
	// 2 s, perhaps two rounds), and the new leader extends every lease by
	// an election timeout and a whole TTL (etcd's lessor.Promote): 5 s
	// more.
	maxFailover := o.LeaseTTL + 3*time.Second
	if leaderLost {
		maxFailover += 5 * time.Second
	}
	maxLoss := o.CheckpointInterval + 500*time.Millisecond
	chk.SetBound(maxFailover + o.CheckpointInterval)

	paused := false
	t.Cleanup(func() {
		if paused {
			_, _ = run(ctxT(time.Minute), "docker", "unpause", node)
		}
	})
	at := time.Now()
	runT(t, time.Minute, "docker", "pause", node)
	paused = true
	chk.Note("docker pause %s (Adam's holder %s, %d lives)", node, holder, len(held))
	hs := chk.WaitHandoffs(t, held, at, maxFailover+30*time.Second)
	fo, loss := e.handoffStats(hs, holder, maxFailover, maxLoss)
	adam := handoffOf(hs, "Adam")
	for _, x := range hs {
		if n := where[x.New.Holder]; n == node {
			t.Errorf("%s moved to %s, on the frozen node", x.Name, x.New.Holder)
		}
	}

	// Thawed, the old member finds its session gone and stops what it ran.
	time.Sleep(o.CheckpointInterval)
	thaw := time.Now()
	runT(t, time.Minute, "docker", "unpause", node)
	paused = false
	chk.Note("docker unpause %s after %v", node, thaw.Sub(at).Round(time.Millisecond))
	var stoppedIn time.Duration
	must(t, poll(o.LeaseTTL+20*time.Second, 200*time.Millisecond, holder+" to stop the lives it lost", func() (bool, string, error) {
		n, found, err := e.livesHeld(holder)
		if err != nil {
			return false, err.Error(), nil
		}
		if !found {
			return false, "no immortald_lives_held", nil
		}
		want := len(chk.HeldBy(holder))
		stoppedIn = time.Since(thaw)
		return n == want, fmt.Sprintf("it runs %d lives, holds %d in etcd", n, want), nil
	}))
	// Room for any late write of the old member to land (the checker
	// flags one).
	time.Sleep(2 * o.CheckpointInterval)

	// Killed: what it holds again (placement may have handed it lives
	// back) fails over once more.
	held2 := chk.HeldBy(holder)
	at2 := time.Now()
	runT(t, time.Minute, "docker", "kill", node)
	chk.Note("docker kill %s (%s holding %d lives)", node, holder, len(held2))
	var fo2, loss2 stats
	if len(held2) > 0 {
		hs2 := chk.WaitHandoffs(t, held2, at2, maxFailover+30*time.Second)
		fo2, loss2 = e.handoffStats(hs2, holder, maxFailover, maxLoss)
	}
	e.settle(names, 2*time.Minute)
	e.waitExactlyOnce(names, survivors, time.Minute)
	if h, ok := chk.Holder("Adam"); !ok || !slices.Contains(survivors, h.Member) {
		t.Errorf("Adam is held by %+v, not by one of %v", h, survivors)
	}
	secs := getAgeSeconds(t, c, survivors[0], "Adam")
	report(t, "kind-node-lost", "lives", len(names), "node_lives", len(held), "adam_failover_ms", ms(adam.Failover),
		"adam_age_loss_ms", max(0, ms(adam.Loss)), "failover_ms", fo.Max, "failover_ms_avg", fo.Avg,
		"age_loss_ms", loss.Max, "age_loss_ms_avg", loss.Avg, "thawed_stopped_ms", ms(stoppedIn),
		"kill_lives", len(held2), "kill_failover_ms", fo2.Max, "kill_age_loss_ms", loss2.Max,
		"adam_age_s", secs, "lease_ttl_ms", ms(o.LeaseTTL), "node", node, "old_holder", holder, "new_holder", adam.New.Holder,
		"etcd_leader", leader, "etcd_leader_on_node", leaderLost)
	chk.Check(t)
}

// moveEtcdLeaderTo makes the etcd pod on node the etcd leader (etcd's
// MoveLeader, sent until the current leader takes it): with
// IMMORTALD_E2E_NODE_LOST_ETCD_LEADER set, TestKindNodeLost loses the etcd
// leader with the node, its worst case, instead of when chance has it.
func (c *kindCluster) moveEtcdLeaderTo(t testing.TB, e *env, node string) {
	t.Helper()
	var target string
	for pod, n := range c.podNodes(t, "etcd") {
		if n == node {
			target = pod
		}
	}
	if target == "" {
		t.Fatalf("no etcd pod on %s", node)
	}
	st, err := c.Client().Status(ctxT(10*time.Second), c.EtcdEndpoint(target))
	must(t, err)
	waitFor(t, time.Minute, "etcd's leader to move to "+target, func() (bool, string) {
		if e.etcdLeader() == target {
			return true, ""
		}
		leader := e.etcdLeader()
		// MoveLeader goes to the leader: a client of its endpoint alone.
		cli, err := newEtcdClient([]string{c.EtcdEndpoint(leader)})
		if err == nil {
			_, err = cli.MoveLeader(ctxT(10*time.Second), st.Header.MemberId)
			_ = cli.Close()
		}
		return false, fmt.Sprintf("leader %s: %v", leader, err)
	})
}
