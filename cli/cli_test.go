package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/cli"
	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

// unreachable is an endpoint nothing listens on. Commands that must fail
// before touching etcd get it, so that touching it would show as a timeout.
const unreachable = "127.0.0.1:1"

type result struct {
	code           int
	stdout, stderr string
}

// oneLine reports whether s is exactly one non-empty line.
func (r result) oneLineErr() bool {
	return strings.Count(r.stderr, "\n") == 1 && strings.HasSuffix(r.stderr, "\n") && len(strings.TrimSpace(r.stderr)) > 0
}

// execute runs the command line in-process. It fails the test rather than
// hang if the command does not return (a `run` that was meant to be refused).
func execute(t *testing.T, args ...string) result {
	t.Helper()
	select {
	case r := <-start(args...):
		return r
	case <-time.After(60 * time.Second):
		t.Fatalf("immortald %q did not return within 60s", args)
		return result{}
	}
}

// start runs the command line in the background.
func start(args ...string) <-chan result {
	done := make(chan result, 1)
	go func() {
		var stdout, stderr bytes.Buffer
		code := cli.Execute(args, &stdout, &stderr)
		done <- result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}()
	return done
}

// server starts an etcd and returns its endpoint and a direct client.
func server(t *testing.T) (string, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.MustStart(t)
	return srv.Endpoint(), etcdtest.MustClient(t, srv.Endpoint())
}

func exists(t *testing.T, cli *clientv3.Client, key string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return len(resp.Kvs) == 1
}

func TestStartGetAgeStop(t *testing.T) {
	ep, etcd := server(t)
	e := []string{"--etcd-endpoints", ep}

	r := execute(t, append([]string{"start", "Adam"}, e...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "Adam is wanted") || r.stderr != "" {
		t.Fatalf("start Adam = %+v", r)
	}
	if !exists(t, etcd, "/immortals/lives/Adam") {
		t.Fatal("start Adam did not write /immortals/lives/Adam")
	}
	r = execute(t, append([]string{"start", "Adam"}, e...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "already wanted") {
		t.Fatalf("second start Adam = %+v", r)
	}
	r = execute(t, append([]string{"start", "Job", "--kind", "counter"}, e...)...)
	if r.code != 0 {
		t.Fatalf("start Job --kind counter = %+v", r)
	}
	if resp, err := etcd.Get(context.Background(), "/immortals/lives/Job"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"kind":"counter"}` {
		t.Fatalf("start --kind wrote %v (%v), want {\"kind\":\"counter\"}", resp, err)
	}
	if r = execute(t, append([]string{"start", "Bad", "--kind", "Counter"}, e...)...); r.code != 2 || !strings.Contains(r.stderr, "--kind") {
		t.Fatalf("start --kind Counter = %+v, want a usage error", r)
	}

	r = execute(t, append([]string{"get-age", "Adam"}, e...)...)
	if r.code != 0 || r.stdout != "0\n" || r.stderr != "" {
		t.Fatalf("get-age Adam = %+v, want exit 0 and \"0\\n\"", r)
	}

	r = execute(t, append([]string{"get-age", "Adam", "-o", "json"}, e...)...)
	if r.code != 0 {
		t.Fatalf("get-age Adam -o json = %+v", r)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("get-age -o json printed %q: %v", r.stdout, err)
	}
	for _, f := range []string{"name", "age", "state", "holder", "incarnation"} {
		if _, ok := st[f]; !ok {
			t.Errorf("get-age -o json has no field %q: %s", f, r.stdout)
		}
	}
	if st["name"] != "Adam" || st["state"] != registry.StateWaiting || st["age"] != 0.0 || st["holder"] != "" || st["incarnation"] != 0.0 {
		t.Errorf("get-age -o json = %s, want Adam, waiting, age 0, no holder, incarnation 0", r.stdout)
	}

	r = execute(t, append([]string{"stop", "Adam"}, e...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "Adam is ended") {
		t.Fatalf("stop Adam = %+v", r)
	}
	if exists(t, etcd, "/immortals/lives/Adam") {
		t.Fatal("stop Adam left /immortals/lives/Adam")
	}
	r = execute(t, append([]string{"get-age", "Adam"}, e...)...)
	if r.code == 0 || !r.oneLineErr() {
		t.Fatalf("get-age of a stopped life = %+v, want non-zero and one line on stderr", r)
	}
}

func TestGetAgePrintsWholeSeconds(t *testing.T) {
	ep, etcd := server(t)
	resp, err := etcd.Put(context.Background(), "/immortals/lives/Old", "")
	if err != nil {
		t.Fatal(err)
	}
	rec := registry.AgeRecord{LifeID: resp.Header.Revision, AgeMS: 381999, Incarnation: 3, Holder: "m1", HolderRev: 1, Time: time.Now()}
	if _, err := etcd.Put(context.Background(), "/immortals/ages/Old", string(rec.Marshal())); err != nil {
		t.Fatal(err)
	}
	r := execute(t, "get-age", "Old", "--etcd-endpoints", ep)
	if r.code != 0 || r.stdout != "381\n" {
		t.Fatalf("get-age Old = %+v, want \"381\\n\"", r)
	}
	r = execute(t, "get-age", "Old", "--etcd-endpoints", ep, "-o", "json")
	var st registry.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 {
		t.Fatalf("get-age Old -o json = %+v (%v)", r, err)
	}
	if st.Age != 381 || st.AgeMS != 381999 || st.Incarnation != 3 {
		t.Fatalf("get-age Old -o json = %+v, want age 381, 381999 ms, incarnation 3", st)
	}
}

func TestGetAgeOfAnInvalidLife(t *testing.T) {
	ep, etcd := server(t)
	if _, err := etcd.Put(context.Background(), "/immortals/lives/Opt", "[]"); err != nil {
		t.Fatal(err)
	}
	r := execute(t, "get-age", "Opt", "--etcd-endpoints", ep)
	if r.code == 0 || !r.oneLineErr() || !strings.Contains(r.stderr, "invalid") || r.stdout != "" {
		t.Fatalf("get-age of an invalid life = %+v, want non-zero and one line naming it invalid", r)
	}
	r = execute(t, "get-age", "Opt", "--etcd-endpoints", ep, "-o", "json")
	if r.code != 0 || !strings.Contains(r.stdout, `"state":"invalid"`) {
		t.Fatalf("get-age -o json of an invalid life = %+v, want its status", r)
	}
}

// A request that turns invalid keeps its life id, and so its age record:
// get-age -o json shows the stored age the life resumes from, not 0.
func TestGetAgeOfALifeTurnedInvalid(t *testing.T) {
	ep, etcd := server(t)
	ctx := context.Background()
	resp, err := etcd.Put(ctx, "/immortals/lives/Eve", "")
	if err != nil {
		t.Fatal(err)
	}
	// The final record of a holder that stopped the life (Lease 0).
	rec := registry.AgeRecord{LifeID: resp.Header.Revision, AgeMS: 381204, Incarnation: 2, Holder: "m1", HolderRev: 1, Time: time.Now()}
	if _, err := etcd.Put(ctx, "/immortals/ages/Eve", string(rec.Marshal())); err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Put(ctx, "/immortals/lives/Eve", `{"bogus":1}`); err != nil {
		t.Fatal(err)
	}
	r := execute(t, "get-age", "Eve", "-o", "json", "--etcd-endpoints", ep)
	var st registry.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 {
		t.Fatalf("get-age Eve -o json = %+v (%v)", r, err)
	}
	if st.State != registry.StateInvalid || st.AgeMS != 381204 || st.Age != 381 || st.Incarnation != 2 || st.Holder != "" || st.Error == "" {
		t.Fatalf("get-age -o json of a life turned invalid = %s, want invalid with its error, age_ms 381204, incarnation 2, no holder", r.stdout)
	}
	r = execute(t, "ls", "-o", "json", "--etcd-endpoints", ep)
	var all []registry.Status
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || len(all) != 1 || all[0].AgeMS != 381204 {
		t.Fatalf("ls -o json = %+v (%v), want Eve with age_ms 381204", r, err)
	}
}

func TestUnknownLife(t *testing.T) {
	ep, _ := server(t)
	tests := []struct {
		name string
		args []string
	}{
		{name: "get-age", args: []string{"get-age", "Nobody"}},
		{name: "get-age json", args: []string{"get-age", "Nobody", "-o", "json"}},
		{name: "stop", args: []string{"stop", "Nobody"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := execute(t, append(tt.args, "--etcd-endpoints", ep)...)
			if r.code == 0 {
				t.Fatalf("immortald %q exited 0", tt.args)
			}
			if !r.oneLineErr() || !strings.Contains(r.stderr, "Nobody") {
				t.Fatalf("stderr = %q, want one line naming the life", r.stderr)
			}
			if r.stdout != "" {
				t.Fatalf("stdout = %q, want nothing", r.stdout)
			}
		})
	}
}

func TestLs(t *testing.T) {
	ep, etcd := server(t)
	if r := execute(t, "start", "Adam", "--etcd-endpoints", ep); r.code != 0 {
		t.Fatalf("start Adam = %+v", r)
	}
	if _, err := etcd.Put(context.Background(), "/immortals/lives/a b", ""); err != nil {
		t.Fatal(err)
	}

	r := execute(t, "ls", "-o", "json", "--etcd-endpoints", ep)
	if r.code != 0 {
		t.Fatalf("ls -o json = %+v", r)
	}
	var all []registry.Status
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil {
		t.Fatalf("ls -o json printed %q: %v", r.stdout, err)
	}
	if len(all) != 2 || all[0].Name != "Adam" || all[1].Name != "a b" {
		t.Fatalf("ls -o json = %+v, want Adam and \"a b\"", all)
	}
	if all[0].State != registry.StateWaiting || all[0].Error != "" {
		t.Errorf("Adam = %+v, want waiting without error", all[0])
	}
	if all[1].State != registry.StateInvalid || !strings.Contains(all[1].Error, "white space") {
		t.Errorf("\"a b\" = %+v, want invalid with an error about white space", all[1])
	}

	r = execute(t, "ls", "--etcd-endpoints", ep)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) != 3 {
		t.Fatalf("ls = %+v, want a header and two rows", r)
	}
	if !regexp.MustCompile(`^NAME\s+KIND\s+STATE\s+AGE\s+HOLDER\s+INCARNATION\s+ERROR$`).MatchString(lines[0]) {
		t.Errorf("ls header = %q", lines[0])
	}
	if !regexp.MustCompile(`^Adam\s+age\s+waiting\s+0\s+0\s*$`).MatchString(lines[1]) {
		t.Errorf("ls row of Adam = %q", lines[1])
	}
	if !regexp.MustCompile(`^"a b"\s+age\s+invalid\s+0\s+0\s+name contains white space`).MatchString(lines[2]) {
		t.Errorf("ls row of \"a b\" = %q", lines[2])
	}

	r = execute(t, "ls", "-o", "json", "--etcd-endpoints", ep, "--prefix", "/empty/")
	if r.code != 0 || r.stdout != "[]\n" {
		t.Fatalf("ls -o json of an empty keyspace = %+v, want []", r)
	}
}

func TestMembers(t *testing.T) {
	ep, etcd := server(t)
	started := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	m := registry.MemberRecord{ID: "m1", Address: ":8080", Version: "dev", Started: started, Lives: 2, PID: 4242}
	for k, v := range map[string]string{"/immortals/members/m1": string(m.Marshal()), "/immortals/members/m2": "garbage"} {
		if _, err := etcd.Put(context.Background(), k, v); err != nil {
			t.Fatal(err)
		}
	}
	r := execute(t, "members", "-o", "json", "--etcd-endpoints", ep)
	var got []registry.MemberRecord
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 {
		t.Fatalf("members -o json = %+v (%v)", r, err)
	}
	if len(got) != 2 || got[0].ID != "m1" || got[0].Lives != 2 || got[0].PID != 4242 || !got[0].Started.Equal(started) || got[1].ID != "m2 (record does not parse)" {
		t.Fatalf("members -o json = %+v", got)
	}
	r = execute(t, "members", "--etcd-endpoints", ep)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ID") || !strings.Contains(r.stdout, "m1") || !strings.Contains(r.stdout, "2024-05-06T07:08:09Z") || !strings.Contains(r.stdout, "4242") {
		t.Fatalf("members = %+v", r)
	}
}

// A config file with kinds is read by every command: kinds are no unknown
// setting.
func TestConfigWithKinds(t *testing.T) {
	ep, _ := server(t)
	cfg := filepath.Join(t.TempDir(), "kinds.yaml")
	writeFile(t, cfg, "kinds:\n  counter:\n    command: [/bin/true]\n    env: {COUNTER_LOG: /tmp/x}\n")
	if r := execute(t, "ls", "--config", cfg, "--etcd-endpoints", ep); r.code != 0 {
		t.Fatalf("ls with kinds in the config file = %+v", r)
	}
}

func TestVersion(t *testing.T) {
	r := execute(t, "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "immortald ") {
		t.Fatalf("version = %+v", r)
	}
}

// TestUsageErrors checks that bad input exits 2 with one line naming what is
// wrong, before touching etcd (which is unreachable here).
func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	unknownYAML := filepath.Join(dir, "unknown.yaml")
	writeFile(t, unknownYAML, "prefix: /immortals/\nbogus-key: 1\n")
	unknownJSON := filepath.Join(dir, "unknown.json")
	writeFile(t, unknownJSON, `{"lease_ttl": "5s"}`)
	badOutput := filepath.Join(dir, "output.yaml")
	writeFile(t, badOutput, "output: yaml\n")
	badKind := filepath.Join(dir, "kind.yaml")
	writeFile(t, badKind, "kinds:\n  counter:\n    command: [/bin/true]\n    restart: sometimes\n")

	tests := []struct {
		name string
		args []string
		want []string // substrings of stderr
	}{
		{name: "bad name", args: []string{"start", "bad name"}, want: []string{`"bad name"`, "white space"}},
		{name: "name with a slash", args: []string{"start", "a/b"}, want: []string{"'/'"}},
		{name: "empty name", args: []string{"start", ""}, want: []string{"empty"}},
		{name: "name too long", args: []string{"start", strings.Repeat("x", 129)}, want: []string{"128"}},
		{name: "output yaml for ls", args: []string{"ls", "--output", "yaml"}, want: []string{"yaml", "text or json"}},
		{name: "output yaml for get-age", args: []string{"get-age", "Adam", "-o", "yaml"}, want: []string{"yaml"}},
		{name: "output yaml in the config file", args: []string{"ls", "--config", badOutput}, want: []string{"yaml"}},
		{name: "unknown key in a YAML config", args: []string{"ls", "--config", unknownYAML}, want: []string{"bogus-key", unknownYAML}},
		{name: "unknown key in a JSON config", args: []string{"ls", "--config", unknownJSON}, want: []string{"lease_ttl"}},
		{name: "bad kind in the config", args: []string{"run", "--config", badKind, "--etcd-endpoints", unreachable}, want: []string{"kinds.counter.restart", "sometimes"}},
		{name: "missing config file", args: []string{"ls", "--config", filepath.Join(dir, "nope.yaml")}, want: []string{"nope.yaml"}},
		{name: "unknown flag", args: []string{"ls", "--nope"}, want: []string{"--nope"}},
		{name: "prefix without a slash", args: []string{"start", "Adam", "--prefix", "/x"}, want: []string{"--prefix", `"/x"`}},
		{name: "bad log level", args: []string{"ls", "--log-level", "loud"}, want: []string{"loud"}},
		{name: "bad log format", args: []string{"ls", "--log-format", "xml"}, want: []string{"xml"}},
		{name: "lease TTL 1s", args: []string{"run", "--lease-ttl", "1s"}, want: []string{"1s", "2s"}},
		{name: "lease TTL not whole seconds", args: []string{"run", "--lease-ttl", "2500ms"}, want: []string{"2.5s", "whole seconds"}},
		{name: "lease TTL not a duration", args: []string{"run", "--lease-ttl", "five"}, want: []string{"--lease-ttl", `"five"`}},
		{name: "checkpoint interval equal to the TTL", args: []string{"run", "--checkpoint-interval", "5s", "--lease-ttl", "5s"}, want: []string{"--checkpoint-interval", "5s"}},
		{name: "checkpoint interval zero", args: []string{"run", "--checkpoint-interval", "0s"}, want: []string{"--checkpoint-interval", "positive"}},
		{name: "checkpoint interval negative", args: []string{"run", "--checkpoint-interval", "-1s"}, want: []string{"--checkpoint-interval", "positive"}},
		{name: "lease TTL zero", args: []string{"run", "--lease-ttl", "0s"}, want: []string{"--lease-ttl", "positive"}},
		{name: "lease TTL past etcd's ceiling", args: []string{"run", "--lease-ttl", "9000000001s"}, want: []string{"--lease-ttl", "2500000h0m1s", "10m0s"}},
		{name: "lease TTL of a million hours", args: []string{"run", "--lease-ttl", "1000000h"}, want: []string{"--lease-ttl", "1000000h0m0s", "10m0s"}},
		{name: "checkpoint interval too short", args: []string{"run", "--checkpoint-interval", "10ms"}, want: []string{"--checkpoint-interval", "10ms", "100ms", "1m0s"}},
		{name: "lease TTL past Go's durations", args: []string{"run", "--lease-ttl", "9999999999999h"}, want: []string{"--lease-ttl", "not a duration"}},
		{name: "bad member id", args: []string{"run", "--id", "my pod"}, want: []string{"--id", `"my pod"`}},
		{name: "unknown command", args: []string{"frobnicate"}, want: []string{`"frobnicate"`}},
		{name: "missing name", args: []string{"get-age"}, want: []string{"1 arg"}},
		{name: "extra argument", args: []string{"ls", "extra"}, want: []string{`"extra"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(tt.args, "--etcd-endpoints", unreachable)
			if tt.args[0] == "run" {
				args = append(args, "--data-dir", t.TempDir(), "--http-addr", "127.0.0.1:0")
			}
			r := execute(t, args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", r.code, r.stderr)
			}
			if !r.oneLineErr() {
				t.Fatalf("stderr = %q, want one line", r.stderr)
			}
			for _, s := range tt.want {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr = %q, want it to contain %q", r.stderr, s)
				}
			}
		})
	}
}

// TestSettingsPrecedence checks flags over IMMORTALD_* over the config file.
func TestSettingsPrecedence(t *testing.T) {
	ep, etcd := server(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "immortald.yaml")
	writeFile(t, cfg, "etcd-endpoints: "+ep+"\nprefix: /cfg/\n")
	cfgJSON := filepath.Join(dir, "immortald.json")
	writeFile(t, cfgJSON, `{"etcd-endpoints": "`+ep+`", "prefix": "/json/"}`)

	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantKey string
	}{
		{name: "default", args: []string{"--etcd-endpoints", ep}, wantKey: "/immortals/lives/"},
		{name: "config file", args: []string{"--config", cfg}, wantKey: "/cfg/lives/"},
		{name: "JSON config file", args: []string{"--config", cfgJSON}, wantKey: "/json/lives/"},
		{name: "config file from the environment", env: map[string]string{"IMMORTALD_CONFIG": cfg}, wantKey: "/cfg/lives/"},
		{name: "environment", env: map[string]string{"IMMORTALD_PREFIX": "/env/", "IMMORTALD_ETCD_ENDPOINTS": ep}, wantKey: "/env/lives/"},
		{name: "environment over config", env: map[string]string{"IMMORTALD_PREFIX": "/env/"}, args: []string{"--config", cfg}, wantKey: "/env/lives/"},
		{name: "flag over environment", env: map[string]string{"IMMORTALD_PREFIX": "/env/"}, args: []string{"--etcd-endpoints", ep, "--prefix", "/flag/"}, wantKey: "/flag/lives/"},
		{name: "flag over config", args: []string{"--config", cfg, "--prefix", "/flag2/"}, wantKey: "/flag2/lives/"},
		{name: "endpoint flag over a bad environment", env: map[string]string{"IMMORTALD_ETCD_ENDPOINTS": unreachable}, args: []string{"--etcd-endpoints", ep, "--prefix", "/flag3/"}, wantKey: "/flag3/lives/"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			name := "Life" + string(rune('A'+i))
			r := execute(t, append([]string{"start", name}, tt.args...)...)
			if r.code != 0 {
				t.Fatalf("start %s = %+v", name, r)
			}
			resp, err := etcd.Get(context.Background(), "/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
			if err != nil {
				t.Fatal(err)
			}
			var found []string
			for _, kv := range resp.Kvs {
				if strings.HasSuffix(string(kv.Key), "/"+name) {
					found = append(found, string(kv.Key))
				}
			}
			if len(found) != 1 || found[0] != tt.wantKey+name {
				t.Fatalf("start %s wrote %q, want only %q", name, found, tt.wantKey+name)
			}
		})
	}
}

// TestOutputSetting checks that the output format, like every setting, can
// come from the environment or the config file.
func TestOutputSetting(t *testing.T) {
	ep, _ := server(t)
	if r := execute(t, "start", "Adam", "--etcd-endpoints", ep); r.code != 0 {
		t.Fatalf("start Adam = %+v", r)
	}
	cfg := filepath.Join(t.TempDir(), "immortald.yaml")
	writeFile(t, cfg, "output: json\n")
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantJSON bool
	}{
		{name: "default", wantJSON: false},
		{name: "flag", args: []string{"-o", "json"}, wantJSON: true},
		{name: "environment", env: map[string]string{"IMMORTALD_OUTPUT": "json"}, wantJSON: true},
		{name: "config file", args: []string{"--config", cfg}, wantJSON: true},
		{name: "flag over config file", args: []string{"--config", cfg, "-o", "text"}, wantJSON: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			r := execute(t, append([]string{"get-age", "Adam", "--etcd-endpoints", ep}, tt.args...)...)
			if r.code != 0 {
				t.Fatalf("get-age = %+v", r)
			}
			if isJSON := strings.HasPrefix(r.stdout, "{"); isJSON != tt.wantJSON {
				t.Fatalf("get-age printed %q, want JSON: %v", r.stdout, tt.wantJSON)
			}
		})
	}
}

// TestUnreachableEtcd checks for a clear one-line error, not a hang. The
// commands bound their etcd calls themselves (10s); no time is asserted.
func TestUnreachableEtcd(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{name: "get-age", args: []string{"get-age", "Adam"}},
		{name: "start", args: []string{"start", "Adam"}},
		{name: "ls", args: []string{"ls"}},
	}
	// All at once: each waits for its own timeout.
	running := make([]<-chan result, len(tests))
	for i, tt := range tests {
		running[i] = start(append(tt.args, "--etcd-endpoints", unreachable)...)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r result
			select {
			case r = <-running[i]:
			case <-time.After(60 * time.Second):
				t.Fatalf("immortald %q did not return within 60s", tt.args)
			}
			if r.code != 1 {
				t.Fatalf("exit %d, want 1; stderr %q", r.code, r.stderr)
			}
			if !r.oneLineErr() || !strings.Contains(r.stderr, unreachable) || !strings.Contains(r.stderr, "cannot reach etcd") || !strings.Contains(r.stderr, "connection refused") {
				t.Fatalf("stderr = %q, want one line saying etcd at %s cannot be reached, and why", r.stderr, unreachable)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// get-state prints the raw bytes, or the metadata with -o json; a life
// without state, an unknown life, exit 1 with one line.
func TestGetState(t *testing.T) {
	ep, etcd := server(t)
	ctx := context.Background()
	resp, err := etcd.Put(ctx, "/immortals/lives/job", `{"kind":"counter"}`)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	data := []byte("41\n\x00\xff")
	rec, err := registry.StateRecord{LifeID: resp.Header.Revision, Holder: "m1", HolderRev: 77, Incarnation: 2, Time: at, Data: data}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	child := registry.ChildRecord{LifeID: resp.Header.Revision, Holder: "m1", HolderRev: 77, Incarnation: 2, Time: at,
		Child: workload.ChildStatus{State: workload.ChildBackoff, ExitCode: 3, Restarts: 1}}.Marshal()
	if _, err := etcd.Txn(ctx).Then(clientv3.OpPut("/immortals/states/job", string(rec)), clientv3.OpPut("/immortals/children/job", string(child))).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Put(ctx, "/immortals/lives/plain", ""); err != nil {
		t.Fatal(err)
	}
	r := execute(t, "get-state", "job", "--etcd-endpoints", ep)
	if r.code != 0 || r.stdout != string(data) {
		t.Fatalf("get-state job = %+v, want the raw bytes %q", r, data)
	}
	r = execute(t, "get-state", "job", "-o", "json", "--etcd-endpoints", ep)
	var info cli.StateInfo
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || r.code != 0 {
		t.Fatalf("get-state -o json = %+v (%v)", r, err)
	}
	if info.Name != "job" || info.FencingToken != 77 || info.Incarnation != 2 || info.Size != len(data) || string(info.Data) != string(data) ||
		info.Holder != "m1" || !info.Time.Equal(at) || info.Child.State != workload.ChildBackoff || info.LifeID != resp.Header.Revision {
		t.Fatalf("get-state -o json = %+v", info)
	}
	if !strings.Contains(r.stdout, `"data":"NDEKAP8="`) {
		t.Errorf("get-state -o json = %s, want the data in base64", r.stdout)
	}
	for _, name := range []string{"plain", "nobody"} {
		r := execute(t, "get-state", name, "--etcd-endpoints", ep)
		if r.code != 1 || !r.oneLineErr() || !strings.Contains(r.stderr, name) || r.stdout != "" {
			t.Errorf("get-state %s = %+v, want exit 1 and one line naming it", name, r)
		}
	}

	r = execute(t, "ls", "--etcd-endpoints", ep)
	if !regexp.MustCompile(`(?m)^job\s+counter\s+waiting\s+0\s+0\s+no live member runs kind "counter"$`).MatchString(r.stdout) {
		t.Errorf("ls = %q, want job of kind counter waiting for a member that runs it", r.stdout)
	}
}
