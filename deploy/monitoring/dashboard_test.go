package monitoring_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dashboard is the part of Grafana's dashboard model that the tests read.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description"`
	Datasource  *datasourceRef `json:"datasource"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Datasource *datasourceRef  `json:"datasource"`
	Query      json.RawMessage `json:"query"` // a string, or {"query": "..."}
}

// dsVar is the dashboard's data source variable: every panel, target and
// query variable names its data source through it, so that the dashboard
// works with whichever Prometheus data source is chosen, imported by hand
// or provisioned from a file.
const dsVar = "datasource"

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	return &d
}

// allPanels are d's panels, those of collapsed rows included.
func (d *dashboard) allPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// query is one PromQL expression of the dashboard: id names it in a
// recording rule (panel_<id>_<refId>, or variable_<name>), where in a
// message.
type query struct{ id, where, expr string }

// labelValues is the query of a variable: label_values(selector, label).
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)

// queries are the expressions of every target and query variable of d; a
// variable's query that is not label_values(selector, label) is returned
// as is, so that promtool rejects it.
func (d *dashboard) queries() []query {
	var out []query
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			out = append(out, query{
				id:    fmt.Sprintf("panel_%d_%s", p.ID, tg.RefID),
				where: fmt.Sprintf("panel %d (%s), target %s", p.ID, p.Title, tg.RefID),
				expr:  tg.Expr,
			})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			_ = json.Unmarshal(v.Query, &q.Query) // the older form: a string
		}
		expr := q.Query
		if m := labelValues.FindStringSubmatch(expr); m != nil {
			expr = m[1]
		}
		out = append(out, query{id: "variable_" + v.Name, where: "variable " + v.Name, expr: expr})
	}
	return out
}

// grafanaVar is a reference to a dashboard variable: $name, ${name},
// ${name:format} or [[name]].
var grafanaVar = regexp.MustCompile(`\$\{([a-zA-Z0-9_]+)(?::[a-zA-Z0-9_]+)?\}|\$([a-zA-Z0-9_]+)|\[\[([a-zA-Z0-9_]+)\]\]`)

// intervalVars are Grafana's built-in variables that stand for a duration.
var intervalVars = []string{"__rate_interval", "__interval", "__range"}

// expand replaces the variables of expr as Grafana would with some value:
// the built-in intervals by 5m, the dashboard's variables (which the
// expressions use only in regular-expression matchers) by .*. A variable
// that is neither is an error.
func (d *dashboard) expand(expr string) (string, error) {
	var bad []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(ref string) string {
		m := grafanaVar.FindStringSubmatch(ref)
		name := m[1] + m[2] + m[3]
		switch {
		case slices.Contains(intervalVars, name):
			return "5m"
		case slices.ContainsFunc(d.Templating.List, func(v variable) bool { return v.Name == name }):
			return ".*"
		}
		bad = append(bad, ref)
		return ref
	})
	if len(bad) > 0 {
		return "", fmt.Errorf("%s: no such variable (the dashboard declares %v)", strings.Join(bad, ", "), d.varNames())
	}
	return out, nil
}

func (d *dashboard) varNames() []string {
	var names []string
	for _, v := range d.Templating.List {
		names = append(names, v.Name)
	}
	return names
}

// The dashboard is one that Grafana imports and provisions: a uid and a
// title, a Prometheus data source variable that every panel and query
// uses, panels with unique ids, a description and a place on the 24-column
// grid, and targets with a refId and an expression.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		t.Errorf("uid %q, title %q, schemaVersion %d: want all three", d.UID, d.Title, d.SchemaVersion)
	}
	var ds *variable
	for i, v := range d.Templating.List {
		if v.Name == dsVar {
			ds = &d.Templating.List[i]
		}
	}
	if ds == nil || ds.Type != "datasource" || string(ds.Query) != `"prometheus"` {
		t.Errorf("want a variable %q of type datasource and query \"prometheus\", have %+v", dsVar, ds)
	}
	wantDS := func(where string, r *datasourceRef) {
		if r == nil || r.Type != "prometheus" || r.UID != "${"+dsVar+"}" {
			t.Errorf("%s: datasource %+v, want {prometheus ${%s}}", where, r, dsVar)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			wantDS("variable "+v.Name, v.Datasource)
		}
	}
	ids := map[int]string{}
	graphs := 0
	for _, p := range d.allPanels() {
		where := fmt.Sprintf("panel %d (%s)", p.ID, p.Title)
		if prev, ok := ids[p.ID]; ok || p.ID <= 0 {
			t.Errorf("%s: id %d not unique or not positive (also %s)", where, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.Title == "" || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%s: want a title and a place in the 24-column grid, have gridPos %+v", where, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		graphs++
		wantDS(where, p.Datasource)
		if p.Description == "" {
			t.Errorf("%s: no description (say which metrics it shows and what they mean)", where)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no target", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] || strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: target %q: want a unique refId and an expression", where, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource != nil {
				wantDS(where+", target "+tg.RefID, tg.Datasource)
			}
		}
	}
	if graphs == 0 {
		t.Error("the dashboard has no panel")
	}
}

// Every metric that the dashboard queries is one that the member
// registers, and the dashboard shows every metric that the member
// registers: a new metric needs a panel.
func TestDashboardMetricsAreTheMembers(t *testing.T) {
	d := loadDashboard(t)
	reg := registered(t)
	shown := map[string]bool{}
	for _, q := range d.queries() {
		expr, err := d.expand(q.expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
			continue
		}
		names, err := metricNames(expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: %q names no metric", q.where, q.expr)
		}
		for _, n := range names {
			fam, ok := reg.family(n)
			if !ok {
				t.Errorf("%s: %s is not a metric of the member (supervisor.NewMetrics)", q.where, n)
				continue
			}
			shown[fam] = true
		}
	}
	for _, fam := range reg.names() {
		if !shown[fam] {
			t.Errorf("%s is on the member's /metrics page but in no panel of grafana-dashboard.json: add it", fam)
		}
	}
}
