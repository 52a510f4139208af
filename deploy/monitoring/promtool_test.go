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
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/immortald/immortald/internal/toolbuild"
)

// promtool returns the path of a promtool binary (toolbuild.Promtool),
// built on the first call of the test binary when the cache has none for
// the current pin (toolbuild.Tool.ForTest). A build that fails (the module
// proxy unreachable and the module cache without the modules, among
// others) fails t with go build's output.
func promtool(t *testing.T) string {
	t.Helper()
	return toolbuild.Promtool.ForTest(t, "../..")
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
