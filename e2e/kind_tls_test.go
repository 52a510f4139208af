//go:build e2e

package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/observe"
)

// certExpiryMetric is what a member reports of the client certificate its
// latest TLS handshake with etcd presented.
const certExpiryMetric = "immortald_etcd_client_certificate_expiry_timestamp_seconds"

// TestKindTLS runs the seed's demo on deploy/overlays/kind-tls (etcd with TLS
// on its client and peer ports, client certificates required, auth turned
// on by the etcd-auth Job, the members as etcd user immortald under the
// role limited to the prefix), then renews the certificates as cert-manager
// does and checks that the members go on with the new ones:
//
//   - demo: `immortald start Adam` in one pod, his age read in another, his
//     holder's pod deleted, Adam on a peer at no lower age, and read again
//     from the pod the Deployment starts in its place; a life requested
//     with `kubectl exec etcd-0 -- /etcdctl put` runs too; outside the
//     prefix the members' user is refused;
//   - rotation: cmd/devcerts again on the same directory (the same CA, new
//     keys and serials, another expiry) and `kubectl apply` of its Secrets;
//     once the kubelet has written the new files into every member pod,
//     etcd's pods are restarted one at a time (`kubectl rollout restart`),
//     so that every member connects again; then every member reports the
//     renewed certificate, no member container restarted, no life changed
//     holder, and lives still start and count.
func TestKindTLS(t *testing.T) {
	kindOnly(t)
	// A rolling restart of etcd costs leader elections: a 5 s lease (the
	// default) rides them out, as in TestKindEtcdPodsDeleted.
	e := setup(t, Options{Secure: true, LeaseTTL: 5 * time.Second})
	c, chk, o, kc := e.c, e.chk, e.o, e.kind()
	ids := e.addMembers(3)
	pod1, pod2 := ids[0], ids[1]

	holder, secs := e.demoStart(pod1, pod2)
	e.etcdctl("put", e.key("lives", "Eve"), "")
	chk.Note("kubectl exec etcd-0 -- /etcdctl put %s ''", e.key("lives", "Eve"))
	chk.WaitRunning(t, []string{"Eve"}, time.Time{}, 30*time.Second)
	res, err := c.Exec(ctxT(30*time.Second), pod2, "ls", "--prefix", "/elsewhere/")
	if err == nil || res.Code != 1 || !strings.Contains(res.Stderr, "permission denied") {
		t.Errorf("ls --prefix /elsewhere/ as etcd user immortald: exit %d (%v), stderr %q; want 1 and a permission error", res.Code, err, res.Stderr)
	}

	d := e.demoDelete(holder, pod1, pod2, secs)
	repl, err := c.Start(ctxT(3*time.Minute), holder)
	must(t, err)
	waitReady(t, c, 2*time.Minute, repl)
	if secsRepl := getAgeSeconds(t, c, repl, "Adam"); secsRepl < d.AgeOnPeer {
		t.Errorf("get-age Adam on the replacement %s = %d, below %d on %s before", repl, secsRepl, d.AgeOnPeer, d.Peer)
	}
	members := append(without(ids, holder), repl)

	first := certNotAfter(t, filepath.Join(kc.certs, "immortald.crt"))
	for _, id := range members {
		if v := memberMetric(t, c, id, certExpiryMetric); v != float64(first.Unix()) {
			t.Errorf("%s on %s = %v, want the first certificate's %d", certExpiryMetric, id, v, first.Unix())
		}
	}
	restartsBefore := kc.restarts(t, members)

	// Renewal: the same CA, new certificates valid for 90 days (the first
	// ones are valid for a year), the Secrets replaced.
	root, err := filepath.Abs("..")
	must(t, err)
	runT(t, 5*time.Minute, "go", "-C", root, "run", "./cmd/devcerts", "-out", kc.certs, "-namespace", kc.ns, "-valid-for", "2160h")
	renewedPEM, err := os.ReadFile(filepath.Join(kc.certs, "immortald.crt"))
	must(t, err)
	renewed := certNotAfter(t, filepath.Join(kc.certs, "immortald.crt"))
	if !renewed.Before(first) {
		t.Fatalf("the renewed certificate expires %v, not before the first one's %v", renewed, first)
	}
	rotated := time.Now()
	kc.kubectl(t, time.Minute, "apply", "-f", filepath.Join(kc.certs, "secrets.yaml"))
	chk.Note("renewed the certificates (same CA) and applied the Secrets")
	// The kubelet writes a Secret's new data into the pods' volumes when it
	// next syncs each pod (within its sync period, a minute by default); a
	// change to the pod's annotations makes it sync the pod at once.
	for _, id := range members {
		kc.kubectl(t, 30*time.Second, "annotate", "pod", id, "--overwrite", "e2e.immortald.io/certificates-renewed="+strconv.FormatInt(rotated.Unix(), 10))
	}
	waitFor(t, 3*time.Minute, "the renewed certificate in every member pod's volume", func() (bool, string) {
		for _, id := range members {
			if got := kc.podSecretFile(t, id, "etcd-tls", "tls.crt"); got != string(renewedPEM) {
				return false, id + " has the first certificate still"
			}
		}
		return true, ""
	})
	filesTook := time.Since(rotated)

	// Every member's connections break as etcd's pods restart, one at a
	// time; each connects again, with the files as they are now.
	at := time.Now()
	kc.kubectl(t, time.Minute, "rollout", "restart", "statefulset/"+kindEtcdSet)
	kc.kubectl(t, 8*time.Minute, "rollout", "status", "statefulset/"+kindEtcdSet, "--timeout=7m")
	must(t, waitEtcd(c.Client(), 2*time.Minute))
	etcdTook := time.Since(at)
	chk.Note("etcd's pods restarted in %v", etcdTook.Round(time.Millisecond))
	waitFor(t, 2*time.Minute, "every member to connect with the renewed certificate", func() (bool, string) {
		for _, id := range members {
			if v := memberMetric(t, c, id, certExpiryMetric); v != float64(renewed.Unix()) {
				return false, fmt.Sprintf("%s reports %v", id, v)
			}
		}
		return true, ""
	})
	onRenewed := time.Since(at)

	// The members kept running, and so did their lives.
	if after := kc.restarts(t, members); after != restartsBefore {
		t.Errorf("member container restarts went from %d to %d during the rotation", restartsBefore, after)
	}
	waitReady(t, c, time.Minute, members...)
	names := []string{"Adam", "Eve"}
	chk.WaitRunning(t, names, time.Now().Add(2*o.CheckpointInterval), time.Minute)
	_, changes := e.handoverGaps(names, at)
	if changes != 0 {
		t.Errorf("%d holder changes while etcd's pods restarted one at a time; the quorum stayed", changes)
	}
	out := cli(t, c, members[0], "start", "Abel")
	chk.Note("kubectl exec %s -- /immortald start Abel: %q", members[0], strings.TrimSpace(out))
	chk.WaitRunning(t, []string{"Abel"}, time.Time{}, 30*time.Second)
	e.waitAge([]string{"Abel"}, 2*time.Second)
	secsAfter := getAgeSeconds(t, c, members[1], "Adam")
	if secsAfter <= d.AgeOnPeer {
		t.Errorf("get-age Adam on %s after the rotation = %d, not above %d before it", members[1], secsAfter, d.AgeOnPeer)
	}
	report(t, "kind-tls", "failover_ms", d.Failover.Max, "age_loss_ms", d.Loss.Max, "age_before_delete_s", secs,
		"age_on_peer_s", d.AgeOnPeer, "files_in_pods_ms", ms(filesTook), "etcd_rollout_ms", ms(etcdTook),
		"all_on_renewed_ms", ms(onRenewed), "holder_changes", changes, "age_after_rotation_s", secsAfter)
	chk.Check(t)
}

// certNotAfter is the expiry of the PEM certificate in file, to the second.
func certNotAfter(t testing.TB, file string) time.Time {
	t.Helper()
	b, err := os.ReadFile(file)
	must(t, err)
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", file)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	must(t, err)
	return c.NotAfter
}

// memberMetric is the value of a metric without labels on member id's
// /metrics; -1 when it is not there.
func memberMetric(t testing.TB, c Cluster, id, name string) float64 {
	t.Helper()
	page, err := c.Metrics(ctxT(30*time.Second), id)
	must(t, err)
	m, err := observe.ParseMetrics(strings.NewReader(page))
	must(t, err)
	if v, ok := m[name]; ok {
		return v
	}
	return -1
}

// restarts is the sum of the containers' restart counts of pods.
func (c *kindCluster) restarts(t testing.TB, pods []string) int {
	t.Helper()
	n := 0
	for _, p := range pods {
		out := strings.TrimSpace(c.kubectl(t, 30*time.Second, "get", "pod", p, "-o", "jsonpath={.status.containerStatuses[*].restartCount}"))
		for _, f := range strings.Fields(out) {
			k, err := strconv.Atoi(f)
			must(t, err)
			n += k
		}
	}
	return n
}

// podSecretFile reads file of the Secret volume named volume of pod, as the
// kubelet wrote it on the pod's node.
func (c *kindCluster) podSecretFile(t testing.TB, pod, volume, file string) string {
	t.Helper()
	where := strings.Fields(c.kubectl(t, 30*time.Second, "get", "pod", pod, "-o", "jsonpath={.metadata.uid} {.spec.nodeName}"))
	if len(where) != 2 {
		t.Fatalf("pod %s: uid and node %q", pod, where)
	}
	path := fmt.Sprintf("/var/lib/kubelet/pods/%s/volumes/kubernetes.io~secret/%s/%s", where[0], volume, file)
	res, err := run(ctxT(30*time.Second), "docker", "exec", where[1], "cat", path)
	if err != nil {
		t.Fatalf("read %s on node %s: %v", path, where[1], err)
	}
	return res.Stdout
}
