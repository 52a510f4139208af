package monitoring_test

import (
	"os"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"
)

// ruleFile is the part of a Prometheus rule file that the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// unitTests is the part of a promtool test file that the tests read.
type unitTests struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name       string `json:"name"`
		AlertTests []struct {
			Alertname string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// readYAML decodes file into v, leaving out the fields v has none for
// (promtool, which reads these files strictly, rejects unknown ones).
func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

var severities = []string{"critical", "warning"}

// Every alert has a severity (critical or warning), a summary and a
// description, queries only metrics that the member registers, and has
// alerts_test.yaml cases where it fires and where it stays quiet.
func TestAlertsAreComplete(t *testing.T) {
	var rules ruleFile
	readYAML(t, "alerts.yaml", &rules)
	var tests unitTests
	readYAML(t, "alerts_test.yaml", &tests)
	if !slices.Equal(tests.RuleFiles, []string{"alerts.yaml"}) {
		t.Errorf("alerts_test.yaml tests %v, want [alerts.yaml]", tests.RuleFiles)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertTests {
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			} else {
				quiet[at.Alertname] = true
			}
		}
	}
	reg := registered(t)
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: %q is no alert (recording rules belong elsewhere)", g.Name, r.Record)
				continue
			}
			alerts++
			if !slices.Contains(severities, r.Labels["severity"]) {
				t.Errorf("%s: severity %q, want one of %v", r.Alert, r.Labels["severity"], severities)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want the annotations summary and description, have %v", r.Alert, r.Annotations)
			}
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: alerts_test.yaml has a case where it fires: %v, where it stays quiet: %v; want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
			names, err := metricNames(r.Expr)
			if err != nil || len(names) == 0 {
				t.Errorf("%s: metrics %v, %v", r.Alert, names, err)
			}
			for _, n := range names {
				if _, ok := reg.family(n); !ok {
					t.Errorf("%s: %s is not a metric of the member (supervisor.NewMetrics)", r.Alert, n)
				}
			}
		}
	}
	if alerts == 0 {
		t.Fatal("alerts.yaml has no alert")
	}
}
