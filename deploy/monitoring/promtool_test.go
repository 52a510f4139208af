// Package monitoring_test checks deploy/monitoring: the Prometheus alert
// rules with promtool (check rules, and test rules on alerts_test.yaml), the
// Grafana dashboard's structure and its PromQL (promtool check rules on the
// expressions as recording rules), and that every metric either of them
// queries is one the member registers and serves on its /metrics page.
//
// promtool is built from the Go modules pinned in hack/tools/promtool, a
// module of its own, so that the daemon's go.mod does not take in
// Prometheus's dependencies. The first build takes minutes; the binary is
// kept in the user's cache directory, named after that module's go.mod and
// go.sum, the Go version and the build flags, and reused by later runs.
// IMMORTALD_PROMTOOL names a promtool binary to use instead.
package monitoring_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	promtoolPkg = "github.com/prometheus/prometheus/cmd/promtool"
	// promtoolModule is the module that pins promtool, from this directory.
	promtoolModule = "../../hack/tools/promtool"
	// promtoolTags leave out Prometheus's service discovery plugins (AWS,
	// Azure, GCE and the others), which checking rules does not need: it
	// halves the first build (about 4.5 instead of 9 minutes on 2 cores).
	promtoolTags = "remove_all_sd"
)

var (
	promtoolOnce sync.Once
	promtoolBin  string
	promtoolErr  error
)

// promtool returns the path of a promtool binary, building it on the first
// call of the test binary when the cache has none for the current pin. A
// build that fails (the module proxy unreachable and the module cache
// without the modules, among others) fails t with go build's output.
func promtool(t *testing.T) string {
	t.Helper()
	promtoolOnce.Do(func() {
		deadline, ok := t.Deadline()
		if !ok {
			deadline = time.Now().Add(time.Hour)
		}
		promtoolBin, promtoolErr = buildPromtool(deadline.Add(-30*time.Second), t.Logf)
	})
	if promtoolErr != nil {
		t.Fatal(promtoolErr)
	}
	return promtoolBin
}

// buildPromtool is promtool's work: IMMORTALD_PROMTOOL if set, else the
// cached binary of the current pin, else a new build, which must end
// before deadline. A new build replaces the cached binaries of other pins.
func buildPromtool(deadline time.Time, logf func(string, ...any)) (string, error) {
	if p := os.Getenv("IMMORTALD_PROMTOOL"); p != "" {
		return p, nil
	}
	mod, err := filepath.Abs(promtoolModule)
	if err != nil {
		return "", err
	}
	env, err := exec.Command("go", "env", "GOVERSION", "GOOS", "GOARCH", "GOPROXY").Output()
	if err != nil {
		return "", fmt.Errorf("go env: %v", err)
	}
	goenv := strings.Fields(string(env))
	if len(goenv) != 4 {
		return "", fmt.Errorf("go env GOVERSION GOOS GOARCH GOPROXY printed %q", env)
	}
	args := []string{"build", "-C", mod, "-mod=readonly", "-trimpath", "-tags", promtoolTags, "-ldflags=-s -w"}
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(mod, f))
		if err != nil {
			return "", fmt.Errorf("the promtool module: %v", err)
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%s %s\n", strings.Join(goenv[:3], " "), strings.Join(args[3:], " "))
	name := "promtool-" + hex.EncodeToString(h.Sum(nil))[:16]

	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "immortald")
	bin := filepath.Join(dir, name)
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		logf("promtool: %s (cached)", bin)
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := fmt.Sprintf("%s.tmp%d", bin, os.Getpid())
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append(args, "-o", tmp, promtoolPkg)...)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(t0).Round(time.Second)
	if err != nil {
		_ = os.Remove(tmp)
		if ctx.Err() != nil {
			err = fmt.Errorf("%v: the test's -timeout ends before the build could (a first build takes minutes); run the tests with a longer -timeout once, or build it yourself and set IMMORTALD_PROMTOOL", err)
		}
		return "", fmt.Errorf("building promtool from the Go modules pinned in hack/tools/promtool failed after %s: %v\n"+
			"Its modules come from the module cache or the Go module proxy (GOPROXY=%s): where the proxy cannot be reached, "+
			"run `go -C hack/tools/promtool mod download` where it can, or set IMMORTALD_PROMTOOL to a promtool binary.\n"+
			"go %s said:\n%s", took, err, goenv[3], strings.Join(cmd.Args[1:], " "), out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	logf("promtool: built %s in %s", bin, took)
	if old, _ := filepath.Glob(filepath.Join(dir, "promtool-*")); len(old) > 0 {
		for _, o := range old {
			if o != bin && !strings.Contains(filepath.Base(o), ".tmp") {
				_ = os.Remove(o) // another pin's
			}
		}
	}
	return bin, nil
}

// runPromtool runs promtool with args in this directory and fails t, with
// everything promtool printed, unless it exits 0.
func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out.String())
}

// The alert rules are valid, with every lint (duplicate rules) fatal.
func TestCheckRules(t *testing.T) {
	runPromtool(t, "check", "rules", "--lint=all", "--lint-fatal", "alerts.yaml")
}

// Each alert fires on the series of alerts_test.yaml that call for it, with
// the labels and annotations written there, and stays quiet on the others.
func TestRulesUnitTests(t *testing.T) {
	runPromtool(t, "test", "rules", "alerts_test.yaml")
}

// Every PromQL expression of the dashboard is valid: promtool checks them
// as the recording rules of a file of their own, with Grafana's variables
// replaced (intervals by 5m, the others by the regular expression .*).
func TestDashboardExprsAreValidPromQL(t *testing.T) {
	d := loadDashboard(t)
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for _, q := range d.queries() {
		expr, err := d.expand(q.expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
			continue
		}
		rules = append(rules, rule{Record: "dashboard:" + q.id, Expr: expr})
	}
	if len(rules) == 0 {
		t.Fatal("the dashboard has no expression")
	}
	// JSON is YAML: promtool reads the file as it reads a rule file.
	b, err := json.MarshalIndent(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, "check", "rules", "--lint=none", file)
}
