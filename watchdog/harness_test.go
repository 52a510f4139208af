package watchdog_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
)

// binary is immortald built once for the package, into a temporary
// directory that TestMain removes.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "immortald-watchdog-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "immortald")
	build := exec.Command("go", "build", "-o", binary, "github.com/immortald/immortald/cmd/immortald")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build immortald:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left behind:", err)
			code = 1
		}
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// bound is a generous bound on anything that takes a few lease TTLs on a
// loaded machine.
const bound = 30 * time.Second

// cluster is one real etcd and the `immortald run` processes of a test.
type cluster struct {
	t    *testing.T
	etcd *etcdtest.Server
	cli  *clientv3.Client
	keys registry.Keys
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	srv := etcdtest.MustStart(t)
	keys, _ := registry.NewKeys(registry.DefaultPrefix)
	return &cluster{t: t, etcd: srv, cli: etcdtest.MustClient(t, srv.Endpoint()), keys: keys}
}

// node is one `immortald run`: the watchdog process the test started.
type node struct {
	id   string
	cmd  *exec.Cmd
	log  string // path of its log (the member's and the watchdog's, JSON)
	exit chan error
}

// start runs `immortald run --id id` against the cluster's etcd at TTL
// ttl, with extra flags and environment. It is killed at cleanup, with its
// member.
func (c *cluster) start(id string, ttl time.Duration, env []string, extra ...string) *node {
	c.t.Helper()
	logPath := filepath.Join(c.t.TempDir(), id+".log")
	f, err := os.Create(logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	args := append([]string{"run", "--id", id, "--etcd-endpoints", c.etcd.Endpoint(),
		"--lease-ttl", ttl.String(), "--checkpoint-interval", "500ms",
		"--http-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug"}, extra...)
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	n := &node{id: id, cmd: cmd, log: logPath, exit: make(chan error, 1)}
	go func() { n.exit <- cmd.Wait() }()
	c.t.Cleanup(func() {
		pid := c.memberPIDNow(id)
		_ = cmd.Process.Kill()
		<-n.exit
		if pid > 0 && pid != cmd.Process.Pid {
			_ = syscall.Kill(pid, syscall.SIGKILL) // dies with the watchdog anyway
		}
		if c.t.Failed() {
			b, _ := os.ReadFile(logPath)
			c.t.Logf("log of %s:\n%s", id, tail(string(b), 40))
		}
	})
	return n
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logCount counts the lines of n's log that contain s.
func (n *node) logCount(s string) int {
	b, _ := os.ReadFile(n.log)
	return strings.Count(string(b), s)
}

// waitExit waits for the watchdog process to exit and returns its code.
func (n *node) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case err := <-n.exit:
		n.exit <- err // for cleanup
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("%s: %v", n.id, err)
		}
		return 0
	case <-time.After(within):
		t.Fatalf("%s did not exit within %s", n.id, within)
		return 0
	}
}

// member reads members/<id>: the member's pid and session lease.
func (c *cluster) member(id string) (registry.MemberRecord, clientv3.LeaseID, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.cli.Get(ctx, c.keys.Member(id))
	if err != nil || len(resp.Kvs) == 0 {
		return registry.MemberRecord{}, 0, false
	}
	var m registry.MemberRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return registry.MemberRecord{}, 0, false
	}
	return m, clientv3.LeaseID(resp.Kvs[0].Lease), true
}

func (c *cluster) memberPIDNow(id string) int {
	m, _, _ := c.member(id)
	return m.PID
}

// waitMember waits for a member record of id whose pid is not one of not.
func (c *cluster) waitMember(id string, not ...int) (registry.MemberRecord, clientv3.LeaseID) {
	c.t.Helper()
	var (
		m     registry.MemberRecord
		lease clientv3.LeaseID
	)
	c.eventually(bound, "a member "+id+" with a new pid", func() bool {
		var ok bool
		m, lease, ok = c.member(id)
		if !ok || m.PID == 0 {
			return false
		}
		for _, p := range not {
			if m.PID == p {
				return false
			}
		}
		return true
	})
	return m, lease
}

// startLives waits until the members of ids are registered, puts n lives,
// and waits until each runs and placement has settled: every member holds
// some, and no life has changed hands for 2 s.
func (c *cluster) startLives(n int, ids ...string) []string {
	c.t.Helper()
	for _, id := range ids {
		c.waitMember(id)
	}
	var names []string
	for i := range n {
		name := fmt.Sprintf("life-%02d", i)
		if _, err := c.cli.Put(context.Background(), c.keys.Life(name), ""); err != nil {
			c.t.Fatal(err)
		}
		names = append(names, name)
	}
	holders := func() map[string]string {
		out := make(map[string]string)
		for name, s := range c.statuses() {
			if s.State == "running" {
				out[name] = s.Holder
			}
		}
		return out
	}
	var last map[string]string
	var since time.Time
	c.eventually(bound, "every life running, placed, and settled", func() bool {
		now := holders()
		if len(now) < n {
			return false
		}
		for _, id := range ids {
			if len(c.heldBy(id)) == 0 {
				return false
			}
		}
		if !maps.Equal(now, last) {
			last, since = now, time.Now()
			return false
		}
		return time.Since(since) >= 2*time.Second
	})
	return names
}

// statuses reads every life's status at one revision.
func (c *cluster) statuses() map[string]registry.Status {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ss, err := registry.ListStatus(ctx, c.cli, c.keys)
	if err != nil {
		return nil
	}
	out := make(map[string]registry.Status, len(ss))
	for _, s := range ss {
		out[s.Name] = s
	}
	return out
}

// heldBy returns the statuses of the lives that holder runs.
func (c *cluster) heldBy(holder string) map[string]registry.Status {
	out := make(map[string]registry.Status)
	for n, s := range c.statuses() {
		if s.State == "running" && s.Holder == holder {
			out[n] = s
		}
	}
	return out
}

// waitMoved waits until every life of before runs in a later incarnation,
// and checks that none resumed below the age it had checkpointed before.
// It returns how long that took.
func (c *cluster) waitMoved(before map[string]registry.Status, within time.Duration) time.Duration {
	c.t.Helper()
	t0 := time.Now()
	var now map[string]registry.Status
	c.eventually(within, "every life of the dead member running elsewhere", func() bool {
		now = c.statuses()
		for name, b := range before {
			s, ok := now[name]
			if !ok || s.State != "running" || s.Incarnation <= b.Incarnation {
				return false
			}
		}
		return true
	})
	took := time.Since(t0)
	for name, b := range before {
		if s := now[name]; s.AgeMS < b.AgeMS {
			c.t.Errorf("%s resumed at %d ms, below its checkpoint of %d ms before", name, s.AgeMS, b.AgeMS)
		}
	}
	return took
}

// eventually polls cond every 20 ms until it holds or within passes.
func (c *cluster) eventually(within time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leaseGone reports whether etcd no longer knows the lease.
func (c *cluster) leaseGone(id clientv3.LeaseID) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.cli.TimeToLive(ctx, id)
	return err == nil && resp.TTL == -1
}

// processGone reports whether pid has exited (a zombie counts: it runs no
// code; its parent, the watchdog or init, reaps it).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || strings.HasPrefix(strings.TrimSpace(string(b[i+1:])), "Z")
}
