//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Options shape one test cluster.
type Options struct {
	// LeaseTTL is each member's --lease-ttl; default 2s.
	LeaseTTL time.Duration
	// CheckpointInterval is each member's --checkpoint-interval; default 1s.
	CheckpointInterval time.Duration
	// Prefix is the keyspace prefix; default /immortals/.
	Prefix string
	// Secure runs etcd with TLS and client certificates, and the members
	// with their certificates as etcd user immortald. On Docker, auth is on
	// once the test enables it (secure_test.go); on kind, the cluster is
	// deploy/overlays/kind-tls, whose Job turns auth on before the members
	// start (kind_test.go).
	Secure bool
	// PeerNetwork puts etcd's peer traffic on a network of its own, apart
	// from the one clients use, so that EtcdCutPeers can cut a member off
	// from its peers alone. Docker backend only.
	PeerNetwork bool
	// Config is the text of every member's config file (YAML, the file of
	// --config), mounted read-only at MemberConfigFile; empty: none. It is
	// where members declare command kinds (the kinds: section).
	Config string
	// Shared gives every member the one directory SharedDir, writable by
	// the members' user, which the test reads with ReadShared: a host
	// directory bind-mounted into each container on docker, a hostPath
	// of one node on kind (the member pods are kept on it).
	Shared bool
	// Helm installs the chart deploy/helm/immortald with `helm install`
	// (the values of its ci/kind-values.yaml, the images of the run, these
	// options as its config values) instead of applying the kustomize
	// overlay, with 3 members, and waits until they are ready: Members
	// returns them. Kind backend only; not with Config or Shared.
	Helm bool
}

// Where members find what Options.Config and Options.Shared give them.
const (
	MemberConfigFile = "/etc/immortald/config.yaml"
	SharedDir        = "/shared"
)

func (o Options) withDefaults() Options {
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 2 * time.Second
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = time.Second
	}
	if o.Prefix == "" {
		o.Prefix = "/immortals/"
	}
	return o
}

// Cluster is three etcd members and any number of immortald members, run by
// one backend. Every method takes a member by the id the daemon uses in etcd
// (the holder field of an age record), so scenarios can act on what the
// checker observes.
type Cluster interface {
	// Options returns the options the cluster runs with.
	Options() Options
	// Client is the test's own etcd client, reaching every etcd member.
	Client() *clientv3.Client

	// AddMembers starts n new immortald members and returns their ids.
	AddMembers(ctx context.Context, n int) ([]string, error)
	// Members returns the ids of every member ever added.
	Members() []string
	// Start brings a stopped or killed member back and returns its id: the
	// same one on docker; on kind, where a Deployment replaces a deleted pod,
	// the replacement's.
	Start(ctx context.Context, id string) (string, error)
	// Stop stops a member gracefully (SIGTERM) and waits until it exits.
	Stop(ctx context.Context, id string) error
	// Kill kills a member (SIGKILL of its top-level process, the
	// watchdog: the container goes, and the member process with it).
	Kill(ctx context.Context, id string) error
	// KillMember kills the member process alone (SIGKILL), leaving its
	// watchdog, the container's first process, to revoke its lease and
	// start it again.
	KillMember(ctx context.Context, id string) error
	// Freeze suspends every process of a member; Thaw resumes them.
	Freeze(ctx context.Context, id string) error
	Thaw(ctx context.Context, id string) error
	// Disconnect cuts a member off from etcd; Reconnect undoes it.
	Disconnect(ctx context.Context, id string) error
	Reconnect(ctx context.Context, id string) error
	// Ready reports whether a member's /readyz answers 200.
	Ready(ctx context.Context, id string) (bool, error)
	// Metrics returns a member's /metrics page.
	Metrics(ctx context.Context, id string) (string, error)
	// Exec runs `immortald ARGS` inside a member, as an operator would.
	Exec(ctx context.Context, id string, args ...string) (cmdResult, error)
	// Logs returns a member's log so far.
	Logs(ctx context.Context, id string) (string, error)

	// EtcdMembers returns the names of the etcd members.
	EtcdMembers() []string
	// EtcdEndpoint returns the address the test reaches one etcd member at.
	EtcdEndpoint(name string) string
	// EtcdStop stops an etcd member gracefully; EtcdKill with SIGKILL;
	// EtcdStart starts it again with its data.
	EtcdStop(ctx context.Context, name string) error
	EtcdKill(ctx context.Context, name string) error
	EtcdStart(ctx context.Context, name string) error
	// EtcdCutPeers cuts an etcd member off from its peers while it still
	// answers clients (needs Options.PeerNetwork); EtcdJoinPeers undoes it.
	EtcdCutPeers(ctx context.Context, name string) error
	EtcdJoinPeers(ctx context.Context, name string) error
	// Etcdctl runs etcdctl against the cluster, as a user would.
	Etcdctl(ctx context.Context, args ...string) (cmdResult, error)

	// ReadShared reads a file of the directory members share at SharedDir
	// (Options.Shared).
	ReadShared(ctx context.Context, name string) ([]byte, error)
	// Procs lists the processes of a member's container below its first
	// process (the watchdog): the member and whatever it started, with
	// their pids on the host that runs them. None when the container does
	// not run.
	Procs(ctx context.Context, id string) ([]Proc, error)
}

// Proc is one process of a member's container.
type Proc struct {
	PID     int
	Cmdline string // arguments joined by spaces
}

// newCluster starts a cluster on the backend that IMMORTALD_E2E_BACKEND names
// (docker by default), with three etcd members and no immortald member yet.
// Everything is removed when the test ends; when it failed, the logs are
// saved under e2e/logs/<test>/ first.
func newCluster(t *testing.T, opts Options) Cluster {
	t.Helper()
	opts = opts.withDefaults()
	// Logs of an earlier run of this test would pass for this run's.
	_ = os.RemoveAll(logsDir(t))
	switch b := os.Getenv("IMMORTALD_E2E_BACKEND"); b {
	case "", "docker":
		if opts.Helm {
			t.Skip("Options.Helm needs the kind backend (IMMORTALD_E2E_BACKEND=kind; make e2e-kind)")
		}
		return newDockerCluster(t, opts)
	case "kind":
		return newKindCluster(t, opts)
	default:
		t.Fatalf("IMMORTALD_E2E_BACKEND=%q: want docker or kind", b)
		return nil
	}
}

// skipOrFail skips the test because something it needs is missing, or fails
// it when running in CI, where a skip would hide that nothing ran.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set, so this is a failure, not a skip)", msg)
	}
	t.Skip(msg)
}

// newEtcdClient connects to endpoints, without the client's own logging
// (it is loud while the tests take etcd members away on purpose).
func newEtcdClient(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
	})
}

// waitEtcd waits until the cluster answers a linearizable read.
func waitEtcd(cli *clientv3.Client, timeout time.Duration) error {
	return poll(timeout, 200*time.Millisecond, "etcd to serve", func() (bool, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "e2e-health")
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	})
}

// ---- what the CLI prints (the contract) ----

// LifeStatus is one object of `get-age -o json` and `ls -o json`.
type LifeStatus struct {
	Name           string     `json:"name"`
	Age            int64      `json:"age"`
	AgeMS          int64      `json:"age_ms"`
	State          string     `json:"state"`
	Holder         string     `json:"holder"`
	Incarnation    int64      `json:"incarnation"`
	LifeID         int64      `json:"life_id"`
	CheckpointTime *time.Time `json:"checkpoint_time"`
	Error          string     `json:"error"`
	// Kind is the life's kind ("age" when its request names none).
	Kind string `json:"kind"`
}

// MemberStatus is one object of `members -o json`.
type MemberStatus struct {
	ID      string    `json:"id"`
	Address string    `json:"address"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	Lives   int       `json:"lives"`
}

// cli runs `immortald ARGS` in member id and fails the test on error.
func cli(t testing.TB, c Cluster, id string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := c.Exec(ctx, id, args...)
	if err != nil {
		t.Fatalf("on %s: %v", id, err)
	}
	return res.Stdout
}

// getAgeSeconds runs `immortald get-age NAME` and parses the whole seconds.
func getAgeSeconds(t testing.TB, c Cluster, id, name string) int64 {
	t.Helper()
	out := strings.TrimSpace(cli(t, c, id, "get-age", name))
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		t.Fatalf("get-age %s on %s printed %q, want whole seconds", name, id, out)
	}
	return n
}

// getAge runs `immortald get-age NAME -o json`.
func getAge(t testing.TB, c Cluster, id, name string) LifeStatus {
	t.Helper()
	out := cli(t, c, id, "get-age", name, "-o", "json")
	var st LifeStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("get-age %s -o json on %s: %v: %q", name, id, err, out)
	}
	return st
}

// listLives runs `immortald ls -o json`.
func listLives(t testing.TB, c Cluster, id string) map[string]LifeStatus {
	t.Helper()
	out := cli(t, c, id, "ls", "-o", "json")
	var sts []LifeStatus
	if err := json.Unmarshal([]byte(out), &sts); err != nil {
		t.Fatalf("ls -o json on %s: %v: %q", id, err, out)
	}
	m := make(map[string]LifeStatus, len(sts))
	for _, s := range sts {
		m[s.Name] = s
	}
	return m
}

// listMembers runs `immortald members -o json`.
func listMembers(t testing.TB, c Cluster, id string) map[string]MemberStatus {
	t.Helper()
	out := cli(t, c, id, "members", "-o", "json")
	var ms []MemberStatus
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		t.Fatalf("members -o json on %s: %v: %q", id, err, out)
	}
	m := make(map[string]MemberStatus, len(ms))
	for _, s := range ms {
		m[s.ID] = s
	}
	return m
}

// waitReady waits until every member answers /readyz with 200.
func waitReady(t testing.TB, c Cluster, timeout time.Duration, ids ...string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("members %v to be ready", ids), func() (bool, string) {
		for _, id := range ids {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ok, err := c.Ready(ctx, id)
			cancel()
			if !ok {
				return false, fmt.Sprintf("%s not ready (%v)", id, err)
			}
		}
		return true, ""
	})
}

// must fails the test on err.
func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ctxT is a context for one cluster operation.
func ctxT(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	_ = cancel // released when the deadline passes; operations are short
	return ctx
}
