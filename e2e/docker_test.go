//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/observe"
)

// Images the docker backend runs; `make image etcd-image` builds them.
var (
	daemonImage = envOr("IMMORTALD_E2E_IMAGE", "immortald:dev")
	etcdImage   = envOr("IMMORTALD_E2E_ETCD_IMAGE", "immortald-etcd:dev")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Labels on everything the docker backend creates: the cluster it belongs to,
// and the test process that owns it, so leftovers of a crashed run (a test
// timeout skips every cleanup) can be told apart and removed by a later run.
const (
	labelCluster = "io.immortald.e2e.cluster"
	labelOwner   = "io.immortald.e2e.owner"
)

var (
	dockerOnce sync.Once
	dockerErr  error
	imagesOnce sync.Once
	imagesErr  error
	clusterSeq atomic.Int64
)

// requireDocker skips the test without a Docker engine (fails it in CI).
func requireDocker(t testing.TB) {
	t.Helper()
	dockerOnce.Do(func() {
		if _, err := exec.LookPath("docker"); err != nil {
			dockerErr = fmt.Errorf("no docker CLI: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := run(ctx, "docker", "version", "--format", "{{.Server.Version}}"); err != nil {
			dockerErr = fmt.Errorf("no Docker engine: %v", err)
			return
		}
		removeOrphans()
	})
	if dockerErr != nil {
		skipOrFail(t, "docker backend: %v", dockerErr)
	}
}

// removeOrphans removes containers and networks left by e2e runs whose test
// process is gone (a timed-out `go test` runs no cleanup). Those of runs still
// alive, such as a colleague's on the same engine, are left alone.
func removeOrphans() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dead := func(owner string) bool {
		pid, err := strconv.Atoi(owner)
		if err != nil || pid <= 0 {
			return false
		}
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	res, err := run(ctx, "docker", "ps", "-a", "--filter", "label="+labelOwner, "--format", `{{.ID}} {{.Label "`+labelOwner+`"}}`)
	if err == nil {
		var ids []string
		for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
			if f := strings.Fields(line); len(f) == 2 && dead(f[1]) {
				ids = append(ids, f[0])
			}
		}
		if len(ids) > 0 {
			_, _ = run(ctx, "docker", append([]string{"unpause"}, ids...)...)
			_, _ = run(ctx, "docker", append([]string{"rm", "-f", "-v"}, ids...)...)
		}
	}
	res, err = run(ctx, "docker", "network", "ls", "--filter", "label="+labelOwner, "--format", `{{.ID}} {{.Label "`+labelOwner+`"}}`)
	if err == nil {
		for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
			if f := strings.Fields(line); len(f) == 2 && dead(f[1]) {
				_, _ = run(ctx, "docker", "network", "rm", f[0])
			}
		}
	}
}

// ensureImages builds the images with make when they are missing (or always,
// with IMMORTALD_E2E_REBUILD=1). `make e2e` builds them before the tests, so
// this is for a plain `go test -tags e2e`.
func ensureImages(t testing.TB) {
	t.Helper()
	imagesOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		if os.Getenv("IMMORTALD_E2E_REBUILD") == "" {
			if _, err := run(ctx, "docker", "image", "inspect", daemonImage, etcdImage); err == nil {
				return
			}
		}
		root, err := filepath.Abs("..")
		if err != nil {
			imagesErr = err
			return
		}
		start := time.Now()
		if _, err := run(ctx, "make", "-C", root, "image", "etcd-image", "IMAGE="+daemonImage, "ETCD_IMAGE="+etcdImage); err != nil {
			imagesErr = fmt.Errorf("building the images: %v", err)
			return
		}
		t.Logf("built %s and %s in %v", daemonImage, etcdImage, time.Since(start).Round(time.Second))
	})
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
}

type dockerEtcd struct {
	name      string // etcd member name and network alias: etcd1..3
	container string
	port      int // on 127.0.0.1
	down      bool
}

type dockerMember struct {
	id        string
	container string
	port      int // /readyz on 127.0.0.1
}

type dockerCluster struct {
	t       *testing.T
	opts    Options
	base    string // unique prefix of every container name; also the network
	peerNet string // with Options.PeerNetwork: the etcd members' own network
	cli     *clientv3.Client
	etcd    []*dockerEtcd
	mu      sync.Mutex
	members map[string]*dockerMember
	order   []string
	certs   string // with Options.Secure: the certificates, mounted at /certs
	confDir string // with Options.Config: the directory of the config file, mounted at /etc/immortald
	shared  string // with Options.Shared: the host directory mounted at SharedDir
}

func newDockerCluster(t *testing.T, opts Options) *dockerCluster {
	t.Helper()
	requireDocker(t)
	ensureImages(t)
	name := strings.ToLower(safeName(strings.TrimPrefix(t.Name(), "Test")))
	if len(name) > 24 {
		name = name[:24]
	}
	c := &dockerCluster{
		t:       t,
		opts:    opts,
		base:    fmt.Sprintf("ie2e-%s-%d-%s", runID, clusterSeq.Add(1), name),
		members: map[string]*dockerMember{},
	}
	// Made before the cleanup below is registered, so that they are
	// removed after the containers that mount them.
	if opts.Config != "" {
		c.confDir = t.TempDir()
		must(t, os.WriteFile(filepath.Join(c.confDir, filepath.Base(MemberConfigFile)), []byte(opts.Config), 0o644))
		must(t, os.Chmod(c.confDir, 0o755)) // the members run as a user of their own
	}
	if opts.Shared {
		c.shared = t.TempDir()
		must(t, os.Chmod(c.shared, 0o777))
	}
	labels := []string{"--label", labelCluster + "=" + c.base, "--label", labelOwner + "=" + strconv.Itoa(os.Getpid())}
	runT(t, time.Minute, "docker", append(append([]string{"network", "create"}, labels...), c.base)...)
	t.Cleanup(c.cleanup)
	if opts.PeerNetwork {
		// Internal: no gateway, so the client network stays each etcd
		// container's default route and carries its published port.
		c.peerNet = c.base + "-peer"
		runT(t, time.Minute, "docker", append(append([]string{"network", "create", "--internal"}, labels...), c.peerNet)...)
	}

	scheme, tlsArgs := "http", []string(nil)
	if opts.Secure {
		c.certs = secureFiles(t, []string{"etcd1", "etcd2", "etcd3"})
		scheme, tlsArgs = "https", secureEtcdArgs()
		labels = append(labels, "-v", c.certs+":"+secureDir+":ro")
	}
	var initial []string
	for i := 1; i <= 3; i++ {
		e := &dockerEtcd{name: fmt.Sprintf("etcd%d", i)}
		e.container = c.base + "-" + e.name
		c.etcd = append(c.etcd, e)
		initial = append(initial, fmt.Sprintf("%s=%s://%s:2380", e.name, scheme, c.peerHost(e.name)))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(c.etcd))
	for i, e := range c.etcd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var joinPeers func(context.Context) error
			if c.peerNet != "" {
				joinPeers = func(ctx context.Context) error { return c.joinPeerNet(ctx, e) }
			}
			errs[i] = c.runWithPort(&e.port, func(port int) []string {
				return append(append([]string{"--name", e.container, "--hostname", e.name,
					"--network", c.base, "--network-alias", e.name, "-p", fmt.Sprintf("127.0.0.1:%d:2379", port),
					"-v", "/var/lib/etcd"}, labels...),
					append([]string{etcdImage,
						"--name", e.name,
						"--data-dir", "/var/lib/etcd/data",
						"--listen-client-urls", scheme + "://0.0.0.0:2379",
						"--advertise-client-urls", fmt.Sprintf("%s://%s:2379", scheme, e.name),
						"--listen-peer-urls", scheme + "://0.0.0.0:2380",
						"--initial-advertise-peer-urls", fmt.Sprintf("%s://%s:2380", scheme, c.peerHost(e.name)),
						"--initial-cluster", strings.Join(initial, ","),
						"--initial-cluster-token", c.base,
						"--initial-cluster-state", "new",
					}, tlsArgs...)...,
				)
			}, e.container, joinPeers)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		must(t, err)
	}
	var eps []string
	for _, e := range c.etcd {
		eps = append(eps, c.EtcdEndpoint(e.name))
	}
	var cli *clientv3.Client
	var err error
	if opts.Secure {
		cli, err = newSecureEtcdClient(c.certs, eps)
	} else {
		cli, err = newEtcdClient(eps)
	}
	must(t, err)
	c.cli = cli
	must(t, waitEtcd(cli, 60*time.Second))
	return c
}

// runWithPort creates a container with a free host port, calls prepare (if
// any) on it and starts it, trying again with another port if the one picked
// was taken in the meantime. args are `docker create`'s.
func (c *dockerCluster) runWithPort(port *int, args func(port int) []string, container string, prepare func(context.Context) error) error {
	var err error
	for try := 0; try < 5; try++ {
		var p int
		if p, err = freePort(); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err = run(ctx, "docker", append([]string{"create"}, args(p)...)...)
		if err == nil && prepare != nil {
			err = prepare(ctx)
		}
		if err == nil {
			_, err = run(ctx, "docker", "start", container)
		}
		cancel()
		if err == nil {
			*port = p
			return nil
		}
		if !strings.Contains(err.Error(), "already allocated") && !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
		_, _ = run(ctx, "docker", "rm", "-f", "-v", container)
		cancel()
	}
	return err
}

// peerHost is the name etcd member name is reached at by its peers: on the
// peer network when there is one, else on the one network.
func (c *dockerCluster) peerHost(name string) string {
	if c.peerNet == "" {
		return name
	}
	return name + "-peer"
}

func (c *dockerCluster) joinPeerNet(ctx context.Context, e *dockerEtcd) error {
	_, err := run(ctx, "docker", "network", "connect", "--alias", c.peerHost(e.name), c.peerNet, e.container)
	return err
}

func (c *dockerCluster) containers() []string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := run(ctx, "docker", "ps", "-a", "--filter", "label="+labelCluster+"="+c.base, "--format", "{{.Names}}")
	if err != nil {
		c.t.Logf("listing containers: %v", err)
		return nil
	}
	return strings.Fields(res.Stdout)
}

func (c *dockerCluster) cleanup() {
	t := c.t
	names := c.containers()
	if keepLogs(t) {
		for _, n := range names {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			res, err := run(ctx, "docker", "logs", "--timestamps", n)
			cancel()
			content := res.Stdout + res.Stderr
			if err != nil {
				content += "\n(docker logs: " + err.Error() + ")\n"
			}
			writeLog(t, strings.TrimPrefix(n, c.base+"-"), content)
		}
		t.Logf("logs saved in e2e/%s", logsDir(t))
	}
	if c.cli != nil {
		c.cli.Close()
	}
	if os.Getenv("IMMORTALD_E2E_KEEP") != "" {
		t.Logf("IMMORTALD_E2E_KEEP: leaving containers %v and networks %s %s", names, c.base, c.peerNet)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if len(names) > 0 {
		_, _ = run(ctx, "docker", append([]string{"unpause"}, names...)...) // rm -f refuses paused containers
		if _, err := run(ctx, "docker", append([]string{"rm", "-f", "-v"}, names...)...); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	for _, n := range []string{c.base, c.peerNet} {
		if n == "" {
			continue
		}
		if _, err := run(ctx, "docker", "network", "rm", n); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

func (c *dockerCluster) Options() Options         { return c.opts }
func (c *dockerCluster) Client() *clientv3.Client { return c.cli }

// etcdEndpoints are the client URLs of the etcd members named, as the
// members reach them.
func (c *dockerCluster) etcdEndpoints(names []string) string {
	scheme := "http"
	if c.opts.Secure {
		scheme = "https"
	}
	var eps []string
	for _, n := range names {
		eps = append(eps, fmt.Sprintf("%s://%s:2379", scheme, n))
	}
	return strings.Join(eps, ",")
}

func (c *dockerCluster) AddMembers(ctx context.Context, n int) ([]string, error) {
	return c.addMembers(ctx, n, c.EtcdMembers())
}

// addMembers starts n members that are given the endpoints of the etcd
// members named in etcds only.
func (c *dockerCluster) addMembers(ctx context.Context, n int, etcds []string) ([]string, error) {
	c.mu.Lock()
	var ms []*dockerMember
	for range n {
		m := &dockerMember{id: fmt.Sprintf("m%d", len(c.order)+1)}
		m.container = c.base + "-" + m.id
		c.members[m.id] = m
		c.order = append(c.order, m.id)
		ms = append(ms, m)
	}
	c.mu.Unlock()
	logLevel := envOr("IMMORTALD_E2E_LOG_LEVEL", "info")
	var wg sync.WaitGroup
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var extra []string // docker create's options beyond the common ones
			if c.opts.Secure {
				extra = append([]string{"-v", c.certs + ":" + secureDir + ":ro"}, secureMemberEnv()...)
			}
			runArgs := []string{daemonImage, "run", "--id", m.id, "--http-addr", ":8080"}
			if c.confDir != "" {
				extra = append(extra, "-v", c.confDir+":"+filepath.Dir(MemberConfigFile)+":ro")
				runArgs = append(runArgs, "--config", MemberConfigFile)
			}
			if c.shared != "" {
				extra = append(extra, "-v", c.shared+":"+SharedDir)
			}
			errs[i] = c.runWithPort(&m.port, func(port int) []string {
				args := append(slices.Clone(extra), "--name", m.container, "--hostname", m.id,
					"--network", c.base, "--network-alias", m.id,
					"-p", fmt.Sprintf("127.0.0.1:%d:8080", port),
					"--label", labelCluster+"="+c.base, "--label", labelOwner+"="+strconv.Itoa(os.Getpid()),
					// Settings through the environment, as a Deployment would
					// give them; the id through a flag.
					"-e", "IMMORTALD_ETCD_ENDPOINTS="+c.etcdEndpoints(etcds),
					"-e", "IMMORTALD_PREFIX="+c.opts.Prefix,
					"-e", "IMMORTALD_LEASE_TTL="+c.opts.LeaseTTL.String(),
					"-e", "IMMORTALD_CHECKPOINT_INTERVAL="+c.opts.CheckpointInterval.String(),
					"-e", "IMMORTALD_LOG_LEVEL="+logLevel,
				)
				return append(args, runArgs...)
			}, m.container, nil)
		}()
	}
	wg.Wait()
	ids := make([]string, len(ms))
	for i, m := range ms {
		if errs[i] != nil {
			return nil, errs[i]
		}
		ids[i] = m.id
	}
	return ids, nil
}

func (c *dockerCluster) Members() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.order...)
}

func (c *dockerCluster) member(id string) (*dockerMember, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.members[id]
	if m == nil {
		return nil, fmt.Errorf("no member %q", id)
	}
	return m, nil
}

func (c *dockerCluster) docker(ctx context.Context, id string, args ...string) error {
	m, err := c.member(id)
	if err != nil {
		return err
	}
	_, err = run(ctx, "docker", append(args, m.container)...)
	return err
}

func (c *dockerCluster) Start(ctx context.Context, id string) (string, error) {
	return id, c.docker(ctx, id, "start")
}
func (c *dockerCluster) Stop(ctx context.Context, id string) error {
	return c.docker(ctx, id, "stop", "--time", "30")
}
func (c *dockerCluster) Kill(ctx context.Context, id string) error {
	return c.docker(ctx, id, "kill", "--signal", "KILL")
}

// KillMember finds the member process as the only child of the container's
// first process, by its pid on this host (a scratch image has no kill
// command to exec), and SIGKILLs it.
func (c *dockerCluster) KillMember(ctx context.Context, id string) error {
	m, err := c.member(id)
	if err != nil {
		return err
	}
	res, err := run(ctx, "docker", "inspect", "--format", "{{.State.Pid}}", m.container)
	if err != nil {
		return err
	}
	pid1, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
	if err != nil {
		return fmt.Errorf("member %s: pid of the container's first process: %w", id, err)
	}
	pids := observe.Children(pid1)
	if len(pids) != 1 {
		return fmt.Errorf("member %s: want one member process under the watchdog (pid %d on this host), found %v", id, pid1, pids)
	}
	return syscall.Kill(pids[0], syscall.SIGKILL)
}

func (c *dockerCluster) Freeze(ctx context.Context, id string) error {
	return c.docker(ctx, id, "pause")
}
func (c *dockerCluster) Thaw(ctx context.Context, id string) error {
	return c.docker(ctx, id, "unpause")
}
func (c *dockerCluster) Disconnect(ctx context.Context, id string) error {
	return c.docker(ctx, id, "network", "disconnect", c.base)
}
func (c *dockerCluster) Reconnect(ctx context.Context, id string) error {
	return c.docker(ctx, id, "network", "connect", "--alias", id, c.base)
}

func (c *dockerCluster) Ready(ctx context.Context, id string) (bool, error) {
	m, err := c.member(id)
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/readyz", m.port), nil)
	if err != nil {
		return false, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("/readyz: %s", resp.Status)
	}
	return true, nil
}

func (c *dockerCluster) Metrics(ctx context.Context, id string) (string, error) {
	m, err := c.member(id)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", m.port), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("/metrics: %s", resp.Status)
	}
	return string(b), err
}

func (c *dockerCluster) Exec(ctx context.Context, id string, args ...string) (cmdResult, error) {
	m, err := c.member(id)
	if err != nil {
		return cmdResult{}, err
	}
	return run(ctx, "docker", append([]string{"exec", m.container, "/immortald"}, args...)...)
}

func (c *dockerCluster) Logs(ctx context.Context, id string) (string, error) {
	m, err := c.member(id)
	if err != nil {
		return "", err
	}
	res, err := run(ctx, "docker", "logs", m.container)
	return res.Stdout + res.Stderr, err
}

func (c *dockerCluster) EtcdMembers() []string {
	var out []string
	for _, e := range c.etcd {
		out = append(out, e.name)
	}
	return out
}

func (c *dockerCluster) etcdNode(name string) (*dockerEtcd, error) {
	for _, e := range c.etcd {
		if e.name == name {
			return e, nil
		}
	}
	return nil, fmt.Errorf("no etcd member %q", name)
}

func (c *dockerCluster) EtcdEndpoint(name string) string {
	e, err := c.etcdNode(name)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("127.0.0.1:%d", e.port)
}

func (c *dockerCluster) etcdDocker(ctx context.Context, name string, down bool, args ...string) error {
	e, err := c.etcdNode(name)
	if err != nil {
		return err
	}
	if _, err := run(ctx, "docker", append(args, e.container)...); err != nil {
		return err
	}
	c.mu.Lock()
	e.down = down
	c.mu.Unlock()
	return nil
}

func (c *dockerCluster) EtcdStop(ctx context.Context, name string) error {
	return c.etcdDocker(ctx, name, true, "stop", "--time", "10")
}
func (c *dockerCluster) EtcdKill(ctx context.Context, name string) error {
	return c.etcdDocker(ctx, name, true, "kill", "--signal", "KILL")
}
func (c *dockerCluster) EtcdStart(ctx context.Context, name string) error {
	return c.etcdDocker(ctx, name, false, "start")
}

// EtcdCutPeers disconnects an etcd member from the peer network: it keeps
// answering clients, but hears no peer. EtcdJoinPeers connects it again.
func (c *dockerCluster) EtcdCutPeers(ctx context.Context, name string) error {
	return c.etcdPeers(ctx, name, false)
}

func (c *dockerCluster) EtcdJoinPeers(ctx context.Context, name string) error {
	return c.etcdPeers(ctx, name, true)
}

func (c *dockerCluster) etcdPeers(ctx context.Context, name string, join bool) error {
	e, err := c.etcdNode(name)
	if err != nil {
		return err
	}
	if c.peerNet == "" {
		return fmt.Errorf("etcd member %s: the cluster has no peer network (Options.PeerNetwork)", name)
	}
	if join {
		return c.joinPeerNet(ctx, e)
	}
	_, err = run(ctx, "docker", "network", "disconnect", c.peerNet, e.container)
	return err
}

// Etcdctl runs /etcdctl inside an etcd container that is up, against its own
// member: what a user with a shell on an etcd node would type.
func (c *dockerCluster) Etcdctl(ctx context.Context, args ...string) (cmdResult, error) {
	c.mu.Lock()
	var container string
	for _, e := range c.etcd {
		if !e.down {
			container = e.container
			break
		}
	}
	c.mu.Unlock()
	if container == "" {
		return cmdResult{}, fmt.Errorf("etcdctl: every etcd member is down")
	}
	argv := []string{"exec", container, "/etcdctl", "--command-timeout", "10s"}
	if c.opts.Secure {
		argv = append(argv, secureEtcdctlArgs()...)
	}
	return run(ctx, "docker", append(argv, args...)...)
}

func (c *dockerCluster) ReadShared(ctx context.Context, name string) ([]byte, error) {
	if c.shared == "" {
		return nil, fmt.Errorf("the cluster has no shared directory (Options.Shared)")
	}
	return os.ReadFile(filepath.Join(c.shared, name))
}

// Procs walks the container's process tree on this host, from its first
// process down, through /proc/<pid>/task/*/children.
func (c *dockerCluster) Procs(ctx context.Context, id string) ([]Proc, error) {
	m, err := c.member(id)
	if err != nil {
		return nil, err
	}
	res, err := run(ctx, "docker", "inspect", "--format", "{{.State.Pid}}", m.container)
	if err != nil {
		return nil, err
	}
	pid1, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
	if err != nil || pid1 <= 0 {
		return nil, nil // not running
	}
	return hostProcTree(pid1), nil
}

// hostProcTree returns the descendants of pid, as this host's /proc shows
// them. A process that exits meanwhile is left out.
func hostProcTree(pid int) []Proc {
	var out []Proc
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		kids, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", p))
		for _, k := range kids {
			b, _ := os.ReadFile(k)
			for _, f := range strings.Fields(string(b)) {
				child, err := strconv.Atoi(f)
				if err != nil {
					continue
				}
				cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child))
				if err != nil || len(cmd) == 0 {
					continue // gone, or a zombie
				}
				out = append(out, Proc{PID: child, Cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))})
				queue = append(queue, child)
			}
		}
	}
	return out
}
