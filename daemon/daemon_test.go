package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload/execkind"
)

// bound is a generous bound on anything that takes a few lease TTLs (2s here)
// on a loaded machine.
const bound = 30 * time.Second

func TestNewRefusesBadConfig(t *testing.T) {
	ok := daemon.Config{ID: "m1", LeaseTTL: 5 * time.Second, CheckpointInterval: time.Second}
	tests := []struct {
		name   string
		change func(c *daemon.Config)
		want   []string // substrings of the error; none means valid
	}{
		{name: "valid", change: func(*daemon.Config) {}},
		{name: "defaults", change: func(c *daemon.Config) { *c = daemon.Config{ID: "m1"} }},
		{name: "lease TTL 1s", change: func(c *daemon.Config) { c.LeaseTTL = time.Second }, want: []string{"--lease-ttl", "1s", "2s"}},
		{name: "lease TTL 2500ms", change: func(c *daemon.Config) { c.LeaseTTL = 2500 * time.Millisecond }, want: []string{"--lease-ttl", "whole seconds"}},
		{name: "interval equal to the TTL", change: func(c *daemon.Config) { c.CheckpointInterval = 5 * time.Second }, want: []string{"--checkpoint-interval (5s)", "--lease-ttl (5s)"}},
		{name: "default interval over a 2s TTL is fine", change: func(c *daemon.Config) { c.LeaseTTL, c.CheckpointInterval = 2*time.Second, 0 }},
		{name: "negative interval", change: func(c *daemon.Config) { c.CheckpointInterval = -time.Second }, want: []string{"--checkpoint-interval (-1s)"}},
		{name: "lease TTL over the ceiling", change: func(c *daemon.Config) { c.LeaseTTL = 9000000001 * time.Second }, want: []string{"--lease-ttl", "2500000h0m1s", "2s", "10m0s"}},
		{name: "lease TTL of a million hours", change: func(c *daemon.Config) { c.LeaseTTL = 1000000 * time.Hour }, want: []string{"--lease-ttl", "1000000h0m0s", "10m0s"}},
		{name: "lease TTL at the ceiling", change: func(c *daemon.Config) { c.LeaseTTL = 10 * time.Minute }},
		{name: "interval below the floor", change: func(c *daemon.Config) { c.CheckpointInterval = 50 * time.Millisecond }, want: []string{"--checkpoint-interval (50ms)", "100ms", "1m0s"}},
		{name: "interval over the ceiling", change: func(c *daemon.Config) { c.LeaseTTL, c.CheckpointInterval = 10*time.Minute, 2*time.Minute }, want: []string{"--checkpoint-interval (2m0s)", "100ms", "1m0s"}},
		{name: "interval over half the TTL", change: func(c *daemon.Config) { c.CheckpointInterval = 3 * time.Second }, want: []string{"--checkpoint-interval (3s)", "half", "--lease-ttl (5s)"}},
		{name: "prefix without a slash", change: func(c *daemon.Config) { c.Prefix = "/immortals" }, want: []string{"--prefix"}},
		{name: "bad id", change: func(c *daemon.Config) { c.ID = "my pod" }, want: []string{"--id", `"my pod"`}},
		{name: "advertise address", change: func(c *daemon.Config) { c.AdvertiseAddr = "10.1.2.3:8080" }},
		{name: "advertise address without a port", change: func(c *daemon.Config) { c.AdvertiseAddr = "10.1.2.3" }, want: []string{"--advertise-addr", "host:port"}},
		{name: "state dir too long for a checkpoint socket", change: func(c *daemon.Config) {
			c.Kinds = map[string]execkind.Config{"c": {Command: []string{"/bin/sh"}}}
			c.StateDir = "/" + strings.Repeat("d", 80)
		}, want: []string{"--state-dir", "unix socket"}},
		{name: "advertise address without a host", change: func(c *daemon.Config) { c.AdvertiseAddr = ":8080" }, want: []string{"--advertise-addr", `":8080"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.change(&cfg)
			_, err := daemon.New(cfg)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("New = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("New = nil, want an error containing %q", tt.want)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("New = %q, want it to contain %q", err, s)
				}
			}
		})
	}
}

// TestMemberRunsAndResumesAfterRestart runs a whole member on its embedded
// etcd, stops it gracefully, starts a new one on the same data directory,
// and checks that the life resumes where it stopped.
func TestMemberRunsAndResumesAfterRestart(t *testing.T) {
	log := newLog(t)
	cfg := daemon.Config{
		ID:                 "m1",
		DataDir:            t.TempDir(),
		EmbeddedClientURL:  "http://127.0.0.1:0",
		EmbeddedPeerURL:    "http://127.0.0.1:0",
		HTTPAddr:           "127.0.0.1:0",
		LeaseTTL:           2 * time.Second,
		CheckpointInterval: 200 * time.Millisecond,
		Logger:             log.logger,
	}
	keys, err := registry.NewKeys(registry.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}

	// First run: the life starts and ages.
	m := startMember(t, cfg)
	cli := newClient(t, m.main.EtcdEndpoint())
	if _, err := cli.Put(context.Background(), keys.Life("Adam"), ""); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, cli, keys, "Adam", "running at age >= 1s", func(st registry.Status) bool {
		return st.State == registry.StateRunning && st.AgeMS >= 1000
	})
	if st.Holder != "m1" || st.Incarnation != 1 {
		t.Fatalf("first run: %+v, want holder m1, incarnation 1", st)
	}

	web := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + m.main.HTTPAddr()
	if code, _ := get(t, web, base+"/livez"); code != http.StatusOK {
		t.Errorf("/livez = %d, want 200", code)
	}
	waitHTTP(t, web, base+"/readyz", "200", func(code int, _ string) bool { return code == http.StatusOK })
	waitHTTP(t, web, base+"/metrics", "immortald_lives_held 1", func(code int, body string) bool {
		return code == http.StatusOK && hasLine(body, "immortald_lives_held 1")
	})
	if !m.main.Ready() {
		t.Error("Ready() = false while /readyz says 200")
	}

	before, err := registry.GetStatus(context.Background(), cli, keys, "Adam")
	if err != nil {
		t.Fatal(err)
	}
	_ = cli.Close()
	if err := m.stop(t); err != nil {
		t.Fatalf("Run = %v after a graceful stop, want nil", err)
	}
	if _, err := web.Get(base + "/livez"); err == nil {
		t.Error("/livez still answers after Run returned")
	}
	if !strings.Contains(log.String(), "New life spawned: Adam") {
		t.Errorf("no spawn line for the first run in the log")
	}

	// Second run on the same data: the life comes back, no younger.
	m2 := startMember(t, cfg)
	cli2 := newClient(t, m2.main.EtcdEndpoint())
	after := waitStatus(t, cli2, keys, "Adam", "running in incarnation 2", func(st registry.Status) bool {
		return st.State == registry.StateRunning && st.Incarnation >= 2
	})
	if after.Incarnation != 2 || after.LifeID != before.LifeID || after.Holder != "m1" {
		t.Errorf("after restart: %+v, want incarnation 2, life id %d, holder m1", after, before.LifeID)
	}
	if after.AgeMS < before.AgeMS {
		t.Errorf("age went back over the restart: %d ms before, %d ms after", before.AgeMS, after.AgeMS)
	}
	_ = cli2.Close()
	if err := m2.stop(t); err != nil {
		t.Fatalf("second Run = %v after a graceful stop, want nil", err)
	}
	t.Logf("age %d ms before the restart, %d ms after", before.AgeMS, after.AgeMS)
}

// TestMemberAdvertisesAnAddress checks the address in the member record:
// the one given, else the HTTP address as bound, with the hostname for an
// unspecified host; never a bare ":port".
func TestMemberAdvertisesAnAddress(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := registry.NewKeys(registry.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, httpAddr, advertise string
		want                      func(bound string) string
	}{
		{"given", "127.0.0.1:0", "10.244.0.7:8080", func(string) string { return "10.244.0.7:8080" }},
		{"bound address", "127.0.0.1:0", "", func(bound string) string { return bound }},
		{"unspecified host: the hostname", ":0", "", func(bound string) string {
			_, port, _ := net.SplitHostPort(bound)
			return net.JoinHostPort(host, port)
		}},
		{"no HTTP", "", "", func(string) string { return "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startMember(t, daemon.Config{
				ID: "m1", DataDir: t.TempDir(),
				EmbeddedClientURL: "http://127.0.0.1:0", EmbeddedPeerURL: "http://127.0.0.1:0",
				HTTPAddr: tt.httpAddr, AdvertiseAddr: tt.advertise,
				LeaseTTL: 2 * time.Second, Logger: newLog(t).logger,
			})
			cli := newClient(t, m.main.EtcdEndpoint())
			var rec registry.MemberRecord
			deadline := time.Now().Add(bound)
			for {
				resp, err := cli.Get(context.Background(), keys.Member("m1"))
				if err == nil && len(resp.Kvs) == 1 {
					if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
						t.Fatal(err)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no member record within %s (%v)", bound, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if want := tt.want(m.main.HTTPAddr()); rec.Address != want {
				t.Errorf("member record address = %q, want %q (bound %q)", rec.Address, want, m.main.HTTPAddr())
			}
		})
	}
}

// TestOpenFailureReleasesEverything makes Open fail after it started the
// embedded etcd: the etcd must be stopped, so a new member can take the same
// data directory and the HTTP address.
func TestOpenFailureReleasesEverything(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := daemon.Config{
		ID:                "m1",
		DataDir:           t.TempDir(),
		EmbeddedClientURL: "http://127.0.0.1:0",
		EmbeddedPeerURL:   "http://127.0.0.1:0",
		HTTPAddr:          busy.Addr().String(),
		LeaseTTL:          2 * time.Second,
		Logger:            newLog(t).logger,
	}
	m, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = m.Open()
	if err == nil || !strings.Contains(err.Error(), "--http-addr") {
		m.Close()
		t.Fatalf("Open with a busy HTTP address = %v, want an error naming --http-addr", err)
	}
	if m.EtcdEndpoint() != "" {
		t.Error("the embedded etcd is still there after Open failed")
	}
	m.Close() // safe after a failed Open

	_ = busy.Close()
	cfg.HTTPAddr = "127.0.0.1:0"
	m2 := startMember(t, cfg)
	if err := m2.stop(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// member is a Main running in the background.
type member struct {
	main   *daemon.Main
	cancel context.CancelFunc
	errc   chan error
	once   sync.Once
	err    error
}

func startMember(t *testing.T, cfg daemon.Config) *member {
	t.Helper()
	m, err := daemon.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := m.Open(); err != nil {
		t.Fatalf("Open: %v", err)
	}
	if m.EtcdEndpoint() == "" {
		t.Fatal("EtcdEndpoint() is empty for an embedded etcd")
	}
	ctx, cancel := context.WithCancel(context.Background())
	mem := &member{main: m, cancel: cancel, errc: make(chan error, 1)}
	go func() { mem.errc <- m.Run(ctx) }()
	t.Cleanup(func() { _ = mem.stop(t) })
	return mem
}

// stop cancels Run and returns its result.
func (m *member) stop(t *testing.T) error {
	m.once.Do(func() {
		m.cancel()
		select {
		case m.err = <-m.errc:
		case <-time.After(bound):
			m.err = errors.New("Run did not return after its context ended")
			t.Errorf("Run did not return within %s after its context ended", bound)
		}
	})
	return m.err
}

func newClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func waitStatus(t *testing.T, cli *clientv3.Client, keys registry.Keys, name, what string, cond func(registry.Status) bool) registry.Status {
	t.Helper()
	deadline := time.Now().Add(bound)
	var last registry.Status
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last, lastErr = registry.GetStatus(ctx, cli, keys, name)
		cancel()
		if lastErr == nil && cond(last) {
			return last
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not %s within %s; last status %+v, error %v", name, what, bound, last, lastErr)
	return last
}

func get(t *testing.T, web *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := web.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitHTTP(t *testing.T, web *http.Client, url, what string, cond func(code int, body string) bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	var code int
	var body string
	for time.Now().Before(deadline) {
		code, body = get(t, web, url)
		if cond(code, body) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(body) > 2000 {
		body = body[:2000] + "..."
	}
	t.Fatalf("%s: no %s within %s; last answer %d %q", url, what, bound, code, body)
}

func hasLine(body, line string) bool {
	for _, l := range strings.Split(body, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

// testLog keeps the members' logs and shows them when the test fails.
type testLog struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	logger *slog.Logger
}

func newLog(t *testing.T) *testLog {
	l := &testLog{}
	l.logger = slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("member log:\n%s", l)
		}
	})
	return l
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestUnreachableEtcdIsNamedInTheLog runs a member against an endpoint that
// refuses connections: it must say so, naming the endpoint and the reason,
// again and again while it lasts, not wait in silence.
func TestUnreachableEtcdIsNamedInTheLog(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := closed.Addr().String()
	_ = closed.Close()
	log := newLog(t)
	m, err := daemon.New(daemon.Config{ID: "m1", Endpoints: []string{ep}, HTTPAddr: "127.0.0.1:0", LeaseTTL: 2 * time.Second, Logger: log.logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Open(); err != nil {
		t.Fatalf("Open: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- m.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(bound):
			t.Errorf("Run did not return within %s after its context ended", bound)
		}
	}()

	lines := func() int {
		n := 0
		for _, l := range strings.Split(log.String(), "\n") {
			if strings.Contains(l, "cannot reach etcd") && strings.Contains(l, ep) && strings.Contains(l, "connection refused") {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(2 * bound)
	for lines() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d log lines naming %s and the refused connection after %s, want 2 (repeated)", lines(), ep, 2*bound)
		}
		time.Sleep(100 * time.Millisecond)
	}
	web := &http.Client{Timeout: 5 * time.Second}
	if code, _ := get(t, web, "http://"+m.HTTPAddr()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d while etcd cannot be reached, want 503", code)
	}
}

// metricValue is the value of the series named by its line's start in a
// /metrics page (labels sorted by name, as the client writes them); ok is
// false when the page has no such series.
func metricValue(body, series string) (v float64, ok bool) {
	for _, l := range strings.Split(body, "\n") {
		if rest, found := strings.CutPrefix(l, series+" "); found {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// The metrics of the lives' work are on a member's /metrics page: a life of
// a command kind whose child checkpoints and keeps failing shows its Run,
// its state writes and checkpoint age, and its child's exits and
// restarts; deleted, its Run counts as stopped and its checkpoint age goes.
func TestMemberMetricsOfWork(t *testing.T) {
	stateDir, err := os.MkdirTemp("", "dm") // short: the checkpoint socket's path must fit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })
	script := `cd "$IMMORTALD_STATE_DIR"; n=$(cat state 2>/dev/null || echo 0); echo $((n+1)) > s.tmp && mv s.tmp state; sleep 0.2; exit 3`
	m := startMember(t, daemon.Config{
		ID: "m1", DataDir: t.TempDir(),
		EmbeddedClientURL: "http://127.0.0.1:0", EmbeddedPeerURL: "http://127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0", LeaseTTL: 2 * time.Second, CheckpointInterval: 200 * time.Millisecond,
		StateDir: stateDir, Logger: newLog(t).logger,
		Kinds: map[string]execkind.Config{"flaky": {Command: []string{"/bin/sh", "-c", script}}},
	})
	keys, err := registry.NewKeys(registry.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	cli := newClient(t, m.main.EtcdEndpoint())
	web := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + m.main.HTTPAddr() + "/metrics"

	// Before any Run, the kind's series are there at 0.
	waitHTTP(t, web, url, "the kind's series at 0", func(code int, body string) bool {
		v, ok := metricValue(body, `immortald_runs_started_total{kind="flaky"}`)
		return code == http.StatusOK && ok && v == 0
	})

	if _, err := cli.Put(context.Background(), keys.Life("job"), `{"kind":"flaky"}`); err != nil {
		t.Fatal(err)
	}
	positive := []string{
		`immortald_runs_started_total{kind="flaky"}`,
		`immortald_runs{kind="flaky"}`,
		`immortald_state_writes_total{kind="flaky",result="applied"}`,
		`immortald_state_write_bytes_total{kind="flaky"}`,
		`immortald_state_write_seconds_count`,
		`immortald_child_exits_total{kind="flaky",outcome="failure"}`,
		`immortald_child_restarts_total{kind="flaky"}`,
	}
	present := []string{
		`immortald_checkpoint_age_seconds{kind="flaky"}`,
		`immortald_runs_stopped_total{cause="stopped",kind="flaky"}`,
		`immortald_state_writes_total{kind="flaky",result="fenced"}`,
		`immortald_state_writes_total{kind="flaky",result="error"}`,
		`immortald_child_exits_total{kind="flaky",outcome="success"}`,
		`immortald_child_exits_total{kind="flaky",outcome="signal"}`,
		`immortald_state_write_seconds_bucket{le="0.001"}`,
	}
	waitHTTP(t, web, url, "the Run's, state writes' and child's series", func(code int, body string) bool {
		for _, s := range positive {
			if v, ok := metricValue(body, s); !ok || v <= 0 {
				return false
			}
		}
		for _, s := range present {
			if _, ok := metricValue(body, s); !ok {
				return false
			}
		}
		return code == http.StatusOK
	})

	if _, err := cli.Delete(context.Background(), keys.Life("job")); err != nil {
		t.Fatal(err)
	}
	waitHTTP(t, web, url, "the Run stopped and its checkpoint age gone", func(code int, body string) bool {
		stopped, _ := metricValue(body, `immortald_runs_stopped_total{cause="stopped",kind="flaky"}`)
		running, _ := metricValue(body, `immortald_runs{kind="flaky"}`)
		_, age := metricValue(body, `immortald_checkpoint_age_seconds{kind="flaky"}`)
		return code == http.StatusOK && stopped == 1 && running == 0 && !age
	})
}
