package monitoring_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload/execkind"
)

// used are the metric families that the alerts and the dashboard query.
func used(t *testing.T) []string {
	t.Helper()
	reg := registered(t)
	var exprs []string
	var rules ruleFile
	readYAML(t, "alerts.yaml", &rules)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	d := loadDashboard(t)
	for _, q := range d.queries() {
		e, err := d.expand(q.expr)
		if err != nil {
			t.Fatalf("%s: %v", q.where, err)
		}
		exprs = append(exprs, e)
	}
	var out []string
	for _, e := range exprs {
		names, err := metricNames(e)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			fam, ok := reg.family(n)
			if !ok {
				t.Fatalf("%s is no metric of the member (TestDashboardMetricsAreTheMembers, TestAlertsAreComplete)", n)
			}
			if !slices.Contains(out, fam) {
				out = append(out, fam)
			}
		}
	}
	return out
}

// Every metric family that the alerts and the dashboard query is on a real
// member's /metrics page over the course of a life of a command kind: its
// Run and child, its state writes and checkpoint age while it runs, and
// the stop once its request is deleted (immortald_lives_stopped_total has
// no series before a first stop, the checkpoint age none without a Run).
// The values are daemon's TestMemberMetricsOfWork's and supervisor's
// tests' to check; this one checks the names that deploy/monitoring
// relies on against what a member serves.
func TestMemberServesTheMetricsUsed(t *testing.T) {
	want := used(t)
	stateDir, err := os.MkdirTemp("", "mon") // short: the checkpoint socket's path must fit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })
	logFile := filepath.Join(t.TempDir(), "member.log")
	logs, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	script := `cd "$IMMORTALD_STATE_DIR"; n=0; while :; do n=$((n+1)); echo $n > s.tmp && mv s.tmp state; sleep 0.2; done`
	m, err := daemon.New(daemon.Config{
		ID: "mon1", DataDir: t.TempDir(),
		EmbeddedClientURL: "http://127.0.0.1:0", EmbeddedPeerURL: "http://127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0", LeaseTTL: 2 * time.Second, CheckpointInterval: 200 * time.Millisecond,
		StateDir: stateDir, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Kinds: map[string]execkind.Config{"ticker": {Command: []string{"/bin/sh", "-c", script}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Open(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the member's Run did not return within 30s of its end")
		}
		_ = logs.Close()
		if b, _ := os.ReadFile(logFile); t.Failed() {
			t.Logf("the member's log:\n%s", b)
		}
	})

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.EtcdEndpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys, err := registry.NewKeys(registry.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	web := &http.Client{Timeout: 5 * time.Second}
	url := "http://" + m.HTTPAddr() + "/metrics"
	seen := map[string]bool{} // families with a TYPE line on some page
	missing := func() []string {
		var out []string
		for _, f := range want {
			if !seen[f] {
				out = append(out, f)
			}
		}
		return out
	}
	// scrapeUntil reads /metrics until cond holds of the last page.
	scrapeUntil := func(what string, cond func(page string) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		var page string
		for time.Now().Before(deadline) {
			resp, err := web.Get(url)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				page = string(b)
				sc := bufio.NewScanner(strings.NewReader(page))
				for sc.Scan() {
					if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
						seen[f[2]] = true
					}
				}
				if cond(page) {
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s: not within 30s; still missing %v", what, missing())
	}

	if _, err := cli.Put(context.Background(), keys.Life("tick"), `{"kind":"ticker"}`); err != nil {
		t.Fatal(err)
	}
	scrapeUntil("a checkpoint age for the running life", func(page string) bool {
		return strings.Contains(page, `immortald_checkpoint_age_seconds{kind="ticker"}`)
	})
	if _, err := cli.Delete(context.Background(), keys.Life("tick")); err != nil {
		t.Fatal(err)
	}
	scrapeUntil("every metric the alerts and the dashboard query", func(string) bool { return len(missing()) == 0 })
}
