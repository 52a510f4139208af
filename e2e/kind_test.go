//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/etcdclient"
)

// The kind backend runs the scenarios against the manifests under deploy/ in
// a kind cluster, selected with IMMORTALD_E2E_BACKEND=kind. `make e2e-kind`
// (hack/kind/e2e.sh) creates the cluster, loads the images and runs the
// suite this way:
//
//   - the cluster is IMMORTALD_E2E_KIND_CLUSTER, with its kubectl context
//     kind-<name> in $KUBECONFIG, and the images IMMORTALD_E2E_IMAGE and
//     IMMORTALD_E2E_ETCD_IMAGE loaded into it;
//   - each test gets its own namespace with what `kubectl kustomize` makes
//     of IMMORTALD_E2E_MANIFESTS (default deploy/overlays/kind), the immortald
//     Deployment at 0 replicas and then scaled up as the scenario adds
//     members;
//   - member ids are pod names; a stopped (deleted) pod is replaced by the
//     Deployment under a new name, which Start returns;
//   - SIGKILL, freeze (SIGSTOP/SIGCONT) and the cut from etcd (iptables in the
//     pod's network namespace) act on the container's process from its kind
//     node, found with crictl;
//   - etcd members are stopped by freezing their process (a StatefulSet
//     would recreate a deleted pod at once), killed with SIGKILL, and
//     reached by the test through `kubectl port-forward`;
//   - Options.Secure applies deploy/overlays/kind-tls instead, with the
//     Secrets that cmd/devcerts makes for the namespace (in
//     kindCluster.certs): etcd with TLS, client certificates and auth, the
//     members as etcd user immortald; the test's client and etcdctl in the
//     etcd pods act as root by certificate.

const (
	kindDeployment = "immortald"
	kindEtcdSet    = "etcd"
)

var (
	kindOnce sync.Once
	kindErr  error
)

// kindManifestImages are the image names in deploy/overlays/kind, replaced
// by the images the run loaded.
var kindManifestImages = map[string]*string{"immortald:dev": &daemonImage, "immortald-etcd:dev": &etcdImage}

type kindCluster struct {
	t        *testing.T
	opts     Options
	name     string // kind cluster
	ns       string
	cli      *clientv3.Client
	ports    map[string]int // etcd pod -> local port-forward port
	stopPF   context.CancelFunc
	pfDone   sync.WaitGroup
	mu       sync.Mutex
	replicas int
	members  []string
	frozen   map[string]bool // etcd pods frozen by EtcdStop
	certs    string          // with Options.Secure: what cmd/devcerts wrote (ca.crt, root.crt, secrets.yaml, ...)
	node     string          // with Options.Shared: the node whose directory the pods share
	// with Options.Helm: how long helm install --wait took
	helmInstallTook time.Duration
}

func kubectlOK() error {
	for _, tool := range []string{"kubectl", "docker"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed", tool)
		}
	}
	return nil
}

func newKindCluster(t *testing.T, opts Options) *kindCluster {
	t.Helper()
	if err := kubectlOK(); err != nil {
		skipOrFail(t, "kind backend: %v", err)
	}
	name := os.Getenv("IMMORTALD_E2E_KIND_CLUSTER")
	if name == "" {
		skipOrFail(t, "kind backend: IMMORTALD_E2E_KIND_CLUSTER is not set; run make e2e-kind")
	}
	kindOnce.Do(func() { kindErr = kindSetup(name) })
	if kindErr != nil {
		skipOrFail(t, "kind backend: %v", kindErr)
	}
	c := &kindCluster{
		t: t, opts: opts, name: name,
		ns:     fmt.Sprintf("ie2e-%s-%d", runID, clusterSeq.Add(1)),
		ports:  map[string]int{},
		frozen: map[string]bool{},
	}
	c.kubectl(t, 30*time.Second, "create", "namespace", c.ns)
	t.Cleanup(c.cleanup)

	root, err := filepath.Abs("..")
	must(t, err)
	if opts.Helm {
		if opts.Secure {
			t.Fatal("Options.Helm with Secure is not supported; TestKindHelm's values turn TLS on, if a test needs it")
		}
		c.helmInstall(t, root)
	} else {
		overlay := "kind"
		if opts.Secure {
			c.certs = c.secureSecrets(t, root)
			overlay = "kind-tls"
		}
		manifests := envOr("IMMORTALD_E2E_MANIFESTS", filepath.Join(root, "deploy", "overlays", overlay))
		c.applyManifests(t, manifests)
		c.memberFiles(t)
		c.kubectl(t, 30*time.Second, "set", "env", "deployment/"+kindDeployment,
			"IMMORTALD_LEASE_TTL="+opts.LeaseTTL.String(),
			"IMMORTALD_CHECKPOINT_INTERVAL="+opts.CheckpointInterval.String(),
			"IMMORTALD_PREFIX="+opts.Prefix,
			"IMMORTALD_LOG_LEVEL="+envOr("IMMORTALD_E2E_LOG_LEVEL", "info"))
	}
	c.kubectl(t, 5*time.Minute, "rollout", "status", "statefulset/"+kindEtcdSet, "--timeout=5m")
	if opts.Secure {
		// The Job that turns auth on with the least-privilege role.
		c.kubectl(t, 4*time.Minute, "wait", "--for=condition=complete", "job/etcd-auth", "--timeout=3m")
	}

	pfctx, cancel := context.WithCancel(context.Background())
	c.stopPF = cancel
	var eps []string
	for _, e := range c.EtcdMembers() {
		p, err := freePort()
		must(t, err)
		c.ports[e] = p
		eps = append(eps, fmt.Sprintf("127.0.0.1:%d", p))
		c.pfDone.Add(1)
		go c.portForward(pfctx, e, p, 2379)
	}
	// The test's client is a member's (etcdclient, with its endpoint
	// health monitor): when a node is lost, the port-forward to its etcd
	// pod stays open but silent, and the checker's watch must move off it
	// as the members' do, not wait for gRPC's keep-alive (12 s).
	ecfg := etcdclient.Config{Endpoints: eps, HealthInterval: etcdclient.DefaultHealthInterval}
	if opts.Secure {
		ecfg.CACert = filepath.Join(c.certs, "ca.crt")
		ecfg.Cert, ecfg.Key = filepath.Join(c.certs, "root.crt"), filepath.Join(c.certs, "root.key")
	}
	cli, err := etcdclient.New(ecfg)
	must(t, err)
	c.cli = cli
	must(t, waitEtcd(cli, 2*time.Minute))
	return c
}

// secureSecrets makes the certificates of the TLS overlay for the test's
// namespace with cmd/devcerts, as an operator does, applies the Secrets it
// writes, and returns its directory.
func (c *kindCluster) secureSecrets(t *testing.T, root string) string {
	t.Helper()
	dir := t.TempDir()
	runT(t, 5*time.Minute, "go", "-C", root, "run", "./cmd/devcerts", "-out", dir, "-namespace", c.ns)
	c.kubectl(t, time.Minute, "apply", "-f", filepath.Join(dir, "secrets.yaml"))
	return dir
}

// kindSetup checks that the cluster make e2e-kind created answers.
func kindSetup(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := run(ctx, "kubectl", "--context", "kind-"+name, "get", "--raw", "/readyz"); err != nil {
		return fmt.Errorf("cluster %s does not answer (make e2e-kind creates it): %v", name, err)
	}
	return nil
}

// applyManifests applies what kustomize builds of dir into the test's
// namespace, with the Deployment at 0 replicas (members are added by the
// scenario) and the images this run loaded.
func (c *kindCluster) applyManifests(t *testing.T, dir string) {
	t.Helper()
	built := c.kubectl(t, time.Minute, "kustomize", dir)
	for name, img := range kindManifestImages {
		built = strings.ReplaceAll(built, "image: "+name+"\n", "image: "+*img+"\n")
	}
	docs := strings.Split(built, "\n---\n")
	found := false
	for i, d := range docs {
		if strings.Contains(d, "\nkind: Deployment\n") && strings.Contains(d, "\n  name: "+kindDeployment+"\n") {
			d2, n := replaceReplicas(d)
			if n != 1 {
				t.Fatalf("the %s Deployment has %d replicas fields, want 1", kindDeployment, n)
			}
			docs[i], found = d2, true
		}
	}
	if !found {
		t.Fatalf("kustomize %s has no Deployment %s", dir, kindDeployment)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", "--context", "kind-"+c.name, "-n", c.ns, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(strings.Join(docs, "\n---\n"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// replaceReplicas sets a Deployment's spec.replicas (two spaces in, as
// kustomize prints it) to 0 and returns how many it found.
func replaceReplicas(doc string) (string, int) {
	lines := strings.Split(doc, "\n")
	n := 0
	for i, l := range lines {
		if strings.HasPrefix(l, "  replicas: ") {
			lines[i] = "  replicas: 0"
			n++
		}
	}
	return strings.Join(lines, "\n"), n
}

func (c *kindCluster) kubectlCtx(ctx context.Context, args ...string) (cmdResult, error) {
	return run(ctx, "kubectl", append([]string{"--context", "kind-" + c.name, "-n", c.ns}, args...)...)
}

func (c *kindCluster) kubectl(t testing.TB, timeout time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := c.kubectlCtx(ctx, args...)
	must(t, err)
	return res.Stdout
}

// portForward keeps `kubectl port-forward pod/<pod> port:remote` running; it
// ends with the pod's death, so it is started again until ctx ends.
func (c *kindCluster) portForward(ctx context.Context, pod string, port, remote int) {
	defer c.pfDone.Done()
	for ctx.Err() == nil {
		cmd := exec.CommandContext(ctx, "kubectl", "--context", "kind-"+c.name, "-n", c.ns,
			"port-forward", "pod/"+pod, fmt.Sprintf("%d:%d", port, remote))
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err == nil {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
			}
			_ = cmd.Wait()
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *kindCluster) cleanup() {
	t := c.t
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c.mu.Lock()
	frozen := make([]string, 0, len(c.frozen))
	for p := range c.frozen {
		frozen = append(frozen, p)
	}
	c.mu.Unlock()
	for _, p := range frozen {
		_ = c.signal(ctx, p, "CONT", all)
	}
	if keepLogs(t) {
		if res, err := c.kubectlCtx(ctx, "get", "pods", "-o", "name"); err == nil {
			for _, pod := range strings.Fields(res.Stdout) {
				for _, prev := range []bool{false, true} {
					args := []string{"logs", "--timestamps", "--all-containers", pod}
					suffix := ""
					if prev {
						args, suffix = append(args, "--previous"), "-previous"
					}
					if lres, err := c.kubectlCtx(ctx, args...); err == nil {
						writeLog(t, strings.TrimPrefix(pod, "pod/")+suffix, lres.Stdout)
					}
				}
			}
		}
		t.Logf("logs saved in e2e/%s", logsDir(t))
	}
	if c.stopPF != nil {
		c.stopPF()
		c.pfDone.Wait()
	}
	if c.cli != nil {
		c.cli.Close()
	}
	if os.Getenv("IMMORTALD_E2E_KEEP") != "" {
		t.Logf("IMMORTALD_E2E_KEEP: leaving namespace %s", c.ns)
		return
	}
	if _, err := run(ctx, "kubectl", "--context", "kind-"+c.name, "delete", "namespace", c.ns, "--wait=false"); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	if c.node != "" {
		if _, err := run(ctx, "docker", "exec", c.node, "rm", "-rf", c.sharedHostDir()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

func (c *kindCluster) Options() Options         { return c.opts }
func (c *kindCluster) Client() *clientv3.Client { return c.cli }

// pods returns the immortald pods that are not being deleted.
func (c *kindCluster) pods(ctx context.Context) ([]string, error) {
	res, err := c.kubectlCtx(ctx, "get", "pods", "-l", "app.kubernetes.io/name=immortald",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	var pods []string
	for _, line := range strings.Split(res.Stdout, "\n") {
		if f := strings.Fields(line); len(f) == 1 { // no deletionTimestamp
			pods = append(pods, f[0])
		}
	}
	return pods, nil
}

// waitNewPods scales the Deployment and waits until the pods not in known
// are want in number, and returns them.
func (c *kindCluster) waitNewPods(ctx context.Context, known []string, want int) ([]string, error) {
	var fresh []string
	err := poll(3*time.Minute, 500*time.Millisecond, "new immortald pods", func() (bool, string, error) {
		pods, err := c.pods(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		fresh = fresh[:0]
		for _, p := range pods {
			if !slices.Contains(known, p) {
				fresh = append(fresh, p)
			}
		}
		return len(fresh) >= want, fmt.Sprintf("%d of %d", len(fresh), want), nil
	})
	return fresh, err
}

func (c *kindCluster) AddMembers(ctx context.Context, n int) ([]string, error) {
	known, err := c.pods(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.replicas += n
	replicas := c.replicas
	c.mu.Unlock()
	if _, err := c.kubectlCtx(ctx, "scale", "deployment/"+kindDeployment, "--replicas="+strconv.Itoa(replicas)); err != nil {
		return nil, err
	}
	fresh, err := c.waitNewPods(ctx, known, n)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.members = append(c.members, fresh...)
	c.mu.Unlock()
	return fresh, nil
}

func (c *kindCluster) Members() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.members...)
}

func (c *kindCluster) Start(ctx context.Context, id string) (string, error) {
	pods, err := c.pods(ctx)
	if err != nil {
		return "", err
	}
	if slices.Contains(pods, id) {
		return id, nil // killed: its container restarts in place
	}
	// Deleted: the Deployment replaces it under a new name.
	c.mu.Lock()
	known := append([]string(nil), c.members...)
	c.mu.Unlock()
	fresh, err := c.waitNewPods(ctx, known, 1)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.members = append(c.members, fresh[0])
	c.mu.Unlock()
	return fresh[0], nil
}

func (c *kindCluster) Stop(ctx context.Context, id string) error {
	_, err := c.kubectlCtx(ctx, "delete", "pod", id, "--wait=true")
	return err
}

// proc finds the node and host pid of a pod's first container.
func (c *kindCluster) proc(ctx context.Context, pod string) (node string, pid string, err error) {
	res, err := c.kubectlCtx(ctx, "get", "pod", pod, "-o",
		`jsonpath={.spec.nodeName} {.status.containerStatuses[0].containerID}`)
	if err != nil {
		return "", "", err
	}
	f := strings.Fields(res.Stdout)
	if len(f) != 2 {
		return "", "", fmt.Errorf("pod %s has no running container yet", pod)
	}
	node, cid := f[0], strings.TrimPrefix(f[1], "containerd://")
	res, err = run(ctx, "docker", "exec", node, "crictl", "inspect", "--output", "go-template", "--template", "{{.info.pid}}", cid)
	if err != nil {
		return "", "", err
	}
	return node, strings.TrimSpace(res.Stdout), nil
}

// signal sends sig to the container's first process (the watchdog), with
// its children (the member) too if all, or to the children alone if
// children.
func (c *kindCluster) signal(ctx context.Context, pod, sig string, who procs) error {
	node, pid, err := c.proc(ctx, pod)
	if err != nil {
		return err
	}
	targets := map[procs]string{
		first:    pid,
		all:      pid + " $(cat /proc/" + pid + "/task/*/children)",
		children: "$(cat /proc/" + pid + "/task/*/children)",
	}[who]
	_, err = run(ctx, "docker", "exec", node, "sh", "-c", "kill -"+sig+" "+targets)
	return err
}

// procs says which processes of a pod's container signal reaches.
type procs int

const (
	first procs = iota
	all
	children
)

func (c *kindCluster) Kill(ctx context.Context, id string) error {
	return c.signal(ctx, id, "KILL", first)
}
func (c *kindCluster) KillMember(ctx context.Context, id string) error {
	return c.signal(ctx, id, "KILL", children)
}
func (c *kindCluster) Freeze(ctx context.Context, id string) error {
	return c.signal(ctx, id, "STOP", all)
}
func (c *kindCluster) Thaw(ctx context.Context, id string) error {
	return c.signal(ctx, id, "CONT", all)
}

// iptables drops the pod's traffic to and from etcd's client port, in the
// pod's own network namespace; /readyz stays reachable for the kubelet.
func (c *kindCluster) iptables(ctx context.Context, id, op string) error {
	node, pid, err := c.proc(ctx, id)
	if err != nil {
		return err
	}
	for _, rule := range [][]string{
		{"OUTPUT", "-p", "tcp", "--dport", "2379", "-j", "DROP"},
		{"INPUT", "-p", "tcp", "--sport", "2379", "-j", "DROP"},
	} {
		args := append([]string{"exec", node, "nsenter", "-t", pid, "-n", "iptables", op}, rule...)
		if _, err := run(ctx, "docker", args...); err != nil {
			return err
		}
	}
	return nil
}

func (c *kindCluster) Disconnect(ctx context.Context, id string) error {
	return c.iptables(ctx, id, "-I")
}
func (c *kindCluster) Reconnect(ctx context.Context, id string) error {
	return c.iptables(ctx, id, "-D")
}

func (c *kindCluster) Ready(ctx context.Context, id string) (bool, error) {
	res, err := c.kubectlCtx(ctx, "get", "pod", id, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	if err != nil {
		return false, err
	}
	if s := strings.TrimSpace(res.Stdout); s != "True" {
		return false, fmt.Errorf("pod %s Ready=%q", id, s)
	}
	return true, nil
}

func (c *kindCluster) Metrics(ctx context.Context, id string) (string, error) {
	res, err := run(ctx, "kubectl", "--context", "kind-"+c.name, "get", "--raw",
		fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:8080/proxy/metrics", c.ns, id))
	return res.Stdout, err
}

func (c *kindCluster) Exec(ctx context.Context, id string, args ...string) (cmdResult, error) {
	return c.kubectlCtx(ctx, append([]string{"exec", id, "--", "/immortald"}, args...)...)
}

func (c *kindCluster) Logs(ctx context.Context, id string) (string, error) {
	res, err := c.kubectlCtx(ctx, "logs", id)
	return res.Stdout, err
}

func (c *kindCluster) EtcdMembers() []string {
	return []string{kindEtcdSet + "-0", kindEtcdSet + "-1", kindEtcdSet + "-2"}
}

func (c *kindCluster) EtcdEndpoint(name string) string {
	return fmt.Sprintf("127.0.0.1:%d", c.ports[name])
}

func (c *kindCluster) EtcdStop(ctx context.Context, name string) error {
	if err := c.signal(ctx, name, "STOP", first); err != nil {
		return err
	}
	c.mu.Lock()
	c.frozen[name] = true
	c.mu.Unlock()
	return nil
}

func (c *kindCluster) EtcdKill(ctx context.Context, name string) error {
	return c.signal(ctx, name, "KILL", first)
}

func (c *kindCluster) EtcdStart(ctx context.Context, name string) error {
	c.mu.Lock()
	frozen := c.frozen[name]
	delete(c.frozen, name)
	c.mu.Unlock()
	if frozen {
		return c.signal(ctx, name, "CONT", first)
	}
	// Killed: the kubelet restarts the container; wait for it to be ready.
	return poll(3*time.Minute, time.Second, "etcd pod "+name+" ready", func() (bool, string, error) {
		ok, err := c.Ready(ctx, name)
		return ok, fmt.Sprint(err), nil
	})
}

func (c *kindCluster) EtcdCutPeers(context.Context, string) error  { return errNotOnKind }
func (c *kindCluster) EtcdJoinPeers(context.Context, string) error { return errNotOnKind }

// errNotOnKind: the etcd pods share the pod network; there is no network of
// peer traffic alone to cut.
var errNotOnKind = errors.New("not supported by the kind backend")

func (c *kindCluster) Etcdctl(ctx context.Context, args ...string) (cmdResult, error) {
	c.mu.Lock()
	var pod string
	for _, e := range c.EtcdMembers() {
		if !c.frozen[e] {
			pod = e
			break
		}
	}
	c.mu.Unlock()
	return c.kubectlCtx(ctx, append([]string{"exec", pod, "--", "/etcdctl", "--command-timeout", "10s"}, args...)...)
}

// ReadShared reads the file from the kind node's hostPath directory that
// every member pod mounts at SharedDir (see kindShared).
func (c *kindCluster) ReadShared(ctx context.Context, name string) ([]byte, error) {
	if !c.opts.Shared {
		return nil, fmt.Errorf("the cluster has no shared directory (Options.Shared)")
	}
	res, err := run(ctx, "docker", "exec", c.node, "cat", c.sharedHostDir()+"/"+name)
	return []byte(res.Stdout), err
}

// Procs walks the pod's container's process tree in the node's /proc, from
// the container's first process down.
func (c *kindCluster) Procs(ctx context.Context, id string) ([]Proc, error) {
	node, pid, err := c.proc(ctx, id)
	if err != nil {
		return nil, nil // no running container
	}
	const walk = `walk() { for p in $(cat /proc/$1/task/*/children 2>/dev/null); do ` +
		`c=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null); [ -n "$c" ] && echo "$p $c"; walk $p; done; }; walk "$1"`
	res, err := run(ctx, "docker", "exec", node, "sh", "-c", walk, "sh", pid)
	if err != nil {
		return nil, err
	}
	var out []Proc
	for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
		p, cmd, _ := strings.Cut(line, " ")
		if n, err := strconv.Atoi(p); err == nil {
			out = append(out, Proc{PID: n, Cmdline: strings.TrimSpace(cmd)})
		}
	}
	return out, nil
}

// sharedHostDir is the node's directory that the test's member pods share
// (a hostPath volume: the pods run on that one node).
func (c *kindCluster) sharedHostDir() string { return "/tmp/immortald-e2e/" + c.ns }

// memberFiles gives the Deployment's pods what Options.Config and
// Options.Shared ask for: the config file from a ConfigMap at
// MemberConfigFile (and --config), the node's directory sharedHostDir
// (made writable for the members' user) at SharedDir, and an emptyDir at
// /data, where the config's state-dir lives (the root filesystem is
// read-only). The manifests under deploy/ stay as they are.
func (c *kindCluster) memberFiles(t *testing.T) {
	t.Helper()
	if c.opts.Config == "" && !c.opts.Shared {
		return
	}
	type m = map[string]any
	vols := []m{{"name": "e2e-data", "emptyDir": m{}}}
	mounts := []m{{"name": "e2e-data", "mountPath": "/data"}}
	args := []string{"run"}
	if c.opts.Config != "" {
		const cm = "immortald-e2e-config"
		c.kubectl(t, 30*time.Second, "create", "configmap", cm, "--from-literal="+filepath.Base(MemberConfigFile)+"="+c.opts.Config)
		vols = append(vols, m{"name": "e2e-config", "configMap": m{"name": cm}})
		mounts = append(mounts, m{"name": "e2e-config", "mountPath": filepath.Dir(MemberConfigFile), "readOnly": true})
		args = append(args, "--config", MemberConfigFile)
	}
	var nodeSelector m
	if c.opts.Shared {
		// The members share one node's directory: they all run on that
		// node (the first that takes pods).
		node := c.schedulableNodes(t)[0]
		nodeSelector = m{"kubernetes.io/hostname": node}
		runT(t, time.Minute, "docker", "exec", node, "sh", "-c", "mkdir -p "+c.sharedHostDir()+" && chmod 0777 "+c.sharedHostDir())
		c.node = node
		vols = append(vols, m{"name": "e2e-shared", "hostPath": m{"path": c.sharedHostDir(), "type": "Directory"}})
		mounts = append(mounts, m{"name": "e2e-shared", "mountPath": SharedDir})
	}
	patch, err := json.Marshal(m{"spec": m{"template": m{"spec": m{
		"volumes":      vols,
		"containers":   []m{{"name": kindDeployment, "args": args, "volumeMounts": mounts}},
		"nodeSelector": nodeSelector,
	}}}})
	must(t, err)
	c.kubectl(t, 30*time.Second, "patch", "deployment/"+kindDeployment, "--type", "strategic", "-p", string(patch))
}
