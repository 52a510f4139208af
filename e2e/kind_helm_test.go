//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/toolbuild"
)

// The chart deploy/helm/immortald on the kind cluster: Options.Helm installs
// it with `helm install` (helm built from hack/tools/helm, as the deploy
// tests build it), as a user would, in the test's namespace.

const (
	helmRelease = "immortald"
	// helmCounter is the command kind the release's values declare, run
	// by the image's /counter.
	helmCounter = "counter"
)

// helmCmd runs helm against the test's cluster: its homes in a temporary
// directory (no repository or plugin of the machine's), the kubeconfig and
// context of the run, the test's namespace.
func (c *kindCluster) helmCmd(t testing.TB, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, err := filepath.Abs("..")
	must(t, err)
	bin, err := toolbuild.Helm.Build(ctx, root, t.Logf)
	if err != nil {
		t.Fatalf("helm: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := []string{"--kube-context", "kind-" + c.name, "--namespace", c.ns}
	if kc := os.Getenv("KUBECONFIG"); kc != "" {
		full = append(full, "--kubeconfig", kc)
	}
	cmd := exec.CommandContext(ctx, bin, append(full, args...)...)
	cmd.Env = toolbuild.HelmEnv(t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// splitImage splits repo[:tag] at the tag's colon (not a registry's port).
func splitImage(image string) (repo, tag string) {
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[:i], image[i+1:]
	}
	return image, "latest"
}

// helmInstall installs the chart as release immortald with 3 members, the
// values of ci/kind-values.yaml (what deploy/overlays/kind changes) and,
// over them, the images this run loaded and the test's options as the
// members' config file, with the counter kind; it waits (--wait) until
// every pod is ready and records the members.
func (c *kindCluster) helmInstall(t *testing.T, root string) {
	t.Helper()
	if c.opts.Config != "" || c.opts.Shared {
		t.Fatal("Options.Helm: Config and Shared are not supported; put the config in the chart's values")
	}
	chart := filepath.Join(root, "deploy", "helm", "immortald")
	repo, tag := splitImage(daemonImage)
	etcdRepo, etcdTag := splitImage(etcdImage)
	values := fmt.Sprintf(`replicaCount: 3
image: {repository: %q, tag: %q, pullPolicy: IfNotPresent}
etcd:
  image: {repository: %q, tag: %q, pullPolicy: IfNotPresent}
config:
  lease-ttl: %q
  checkpoint-interval: %q
  prefix: %q
  log-level: %q
kinds:
  %s:
    command: ["/counter", "--interval", "100ms"]
    stop_grace: 2s
`, repo, tag, etcdRepo, etcdTag, c.opts.LeaseTTL.String(), c.opts.CheckpointInterval.String(), c.opts.Prefix,
		envOr("IMMORTALD_E2E_LOG_LEVEL", "info"), helmCounter)
	file := filepath.Join(t.TempDir(), "values.yaml")
	must(t, os.WriteFile(file, []byte(values), 0o644))
	t0 := time.Now()
	out, err := c.helmCmd(t, 6*time.Minute, "install", helmRelease, chart,
		"-f", filepath.Join(chart, "ci", "kind-values.yaml"), "-f", file, "--wait", "--timeout", "5m")
	if err != nil {
		t.Fatal(err)
	}
	c.helmInstallTook = time.Since(t0)
	t.Logf("helm install in %v:\n%s", c.helmInstallTook.Round(time.Millisecond), out)
	pods, err := c.pods(ctxT(30 * time.Second))
	must(t, err)
	if len(pods) != 3 {
		t.Fatalf("after helm install --wait: immortald pods %v, want 3", pods)
	}
	c.mu.Lock()
	c.replicas, c.members = len(pods), pods
	c.mu.Unlock()
}

// TestKindHelm installs the chart with `helm install` and runs the seed's
// demo on it: Adam started with `immortald start` in one member, his age
// read from another, his holder's pod deleted, Adam on a peer at no lower
// age and still counting; beside him a life of the counter kind that the
// chart's values declare (its ConfigMap, state on an emptyDir), started
// with etcdctl, keeps its state across the same delete. Then `helm
// uninstall` removes every object of the release but the etcd PVCs.
func TestKindHelm(t *testing.T) {
	kindOnly(t)
	e := setup(t, Options{Helm: true})
	c, chk, kc := e.c, e.chk, e.kind()
	ids := c.Members()
	waitReady(t, c, time.Minute, ids...)
	chk.Note("helm install: members %v ready", ids)
	pod1, pod2 := ids[0], ids[1]

	// The chart's config file is what `kubectl exec` CLI commands read too.
	if got := strings.TrimSpace(kc.kubectl(t, 30*time.Second, "get", "configmap", "immortald-config",
		"-o", `jsonpath={.data.config\.yaml}`)); !strings.Contains(got, "lease-ttl: "+e.o.LeaseTTL.String()) {
		t.Errorf("ConfigMap immortald-config = %q, want the values' lease-ttl", got)
	}

	e.etcdctl("put", e.key("lives", "job"), `{"kind":"`+helmCounter+`"}`)
	chk.Note("etcdctl put %s {\"kind\":%q}", e.key("lives", "job"), helmCounter)
	holder, secs := e.demoStart(pod1, pod2)
	chk.WaitRunning(t, []string{"job"}, time.Time{}, 60*time.Second)
	e.waitAge([]string{"job"}, 2*time.Second)
	n0 := counterState(t, c, pod2, "job")
	jh, _ := chk.Holder("job")

	d := e.demoDelete(holder, pod1, pod2, secs)
	peer, secsPeer := d.Peer, d.AgeOnPeer
	// Still counting: two checkpoint intervals and a second later, older.
	time.Sleep(2*e.o.CheckpointInterval + time.Second)
	if later := getAgeSeconds(t, c, peer, "Adam"); later <= secsPeer {
		t.Errorf("get-age Adam on %s = %d, not above %d read %v earlier", peer, later, secsPeer, 2*e.o.CheckpointInterval+time.Second)
	}
	// The counter goes on from its state, never from 0 (it moved too when
	// it shared Adam's holder).
	if n := counterState(t, c, peer, "job"); n < n0 {
		t.Errorf("get-state job on %s = %d after the delete, below %d before it", peer, n, n0)
	}
	var n1 int64
	waitFor(t, 30*time.Second, "the counter life to count on", func() (bool, string) {
		n1 = counterState(t, c, peer, "job")
		return n1 > n0, fmt.Sprintf("state %d, was %d", n1, n0)
	})

	// The end of the demo: both lives ended, then the release.
	e.etcdctl("del", e.key("lives", "Adam"))
	e.etcdctl("del", e.key("lives", "job"))
	waitFor(t, 30*time.Second, "the members to stop running the lives", func() (bool, string) {
		n := len(chk.Candidates("Adam")) + len(chk.Candidates("job"))
		return n == 0, fmt.Sprintf("%d election keys left", n)
	})
	chk.Check(t)
	chk.Stop() // the members go with the release

	t0 := time.Now()
	out, err := kc.helmCmd(t, 4*time.Minute, "uninstall", helmRelease, "--cascade", "foreground", "--wait", "--timeout", "3m")
	must(t, err)
	uninstallTook := time.Since(t0)
	t.Logf("helm uninstall in %v: %s", uninstallTook.Round(time.Millisecond), strings.TrimSpace(out))
	var left string
	waitFor(t, 2*time.Minute, "the release's objects to go", func() (bool, string) {
		left = strings.TrimSpace(kc.kubectl(t, 30*time.Second, "get",
			"deployments,statefulsets,services,poddisruptionbudgets,configmaps,jobs,pods,secrets",
			"-l", "app.kubernetes.io/instance="+helmRelease, "-o", "name"))
		rel := strings.TrimSpace(kc.kubectl(t, 30*time.Second, "get", "secrets", "-l", "owner=helm", "-o", "name"))
		return left == "" && rel == "", left + " " + rel
	})
	goneTook := time.Since(t0)
	if list, err := kc.helmCmd(t, time.Minute, "list", "-q"); err != nil || strings.TrimSpace(list) != "" {
		t.Errorf("helm list after uninstall: %q, %v", list, err)
	}
	// The etcd PVCs outlive the release, as deploy/README.md says; the
	// namespace's deletion takes them.
	pvcs := strings.Fields(kc.kubectl(t, 30*time.Second, "get", "pvc", "-o", "name"))
	if len(pvcs) != 3 {
		t.Errorf("PVCs after uninstall: %v, want etcd's 3", pvcs)
	}
	report(t, "kind-helm", "helm_install_ms", ms(kc.helmInstallTook), "failover_ms", d.Failover.Max, "age_loss_ms", d.Loss.Max,
		"kubectl_delete_ms", ms(d.Took), "age_before_delete_s", secs, "age_on_peer_s", secsPeer,
		"counter_holder_deleted", jh.Member == holder, "counter_before", n0, "counter_after", n1, "helm_uninstall_ms", ms(uninstallTook), "all_gone_ms", ms(goneTook))
}

// counterState reads a counter life's n (the first line of its state) with
// get-state in member id.
func counterState(t testing.TB, c Cluster, id, name string) int64 {
	t.Helper()
	st, err := getState(t, c, id, name)
	must(t, err)
	first, _, _ := strings.Cut(string(st.Data), "\n")
	n, err := strconv.ParseInt(strings.TrimSpace(first), 10, 64)
	if err != nil {
		t.Fatalf("get-state %s on %s: state %q is not a counter's", name, id, st.Data)
	}
	return n
}
