package monitoring_test

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/immortald/immortald/supervisor"
)

// families are metric families by name; the value is true for a histogram,
// whose series are <name>_bucket, <name>_sum and <name>_count.
type families map[string]bool

// family is the family of the series name n: n itself, or the histogram
// whose series n is.
func (f families) family(n string) (string, bool) {
	if _, ok := f[n]; ok {
		return n, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(n, suffix); ok && f[base] {
			return base, true
		}
	}
	return "", false
}

func (f families) names() []string {
	var out []string
	for n := range f {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// recorder is a prometheus.Registerer that keeps what is registered.
type recorder struct{ cs []prometheus.Collector }

func (r *recorder) Register(c prometheus.Collector) error   { r.cs = append(r.cs, c); return nil }
func (r *recorder) MustRegister(cs ...prometheus.Collector) { r.cs = append(r.cs, cs...) }
func (r *recorder) Unregister(prometheus.Collector) bool    { return false }

// descName reads the name out of a Desc, which exports none: its String
// starts with Desc{fqName: "<name>".
var descName = regexp.MustCompile(`^Desc\{fqName: "([a-zA-Z_:][a-zA-Z0-9_:]*)"`)

// registered are the families that supervisor.NewMetrics registers: the
// member's own metrics on its /metrics page (besides Go's and the
// process's). They come from each collector's Describe, so they include
// the vectors that have no series until a label is set (lives stopped by
// reason) and immortald_checkpoint_age_seconds, which has none without a
// Run; a Gather of the same collectors must agree with them.
func registered(t *testing.T) families {
	t.Helper()
	var rec recorder
	m := supervisor.NewMetrics(&rec)
	m.InitChildKinds("k")
	fams := families{}
	for _, c := range rec.cs {
		ch := make(chan *prometheus.Desc)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			s := d.String()
			sub := descName.FindStringSubmatch(s)
			if sub == nil {
				t.Fatalf("cannot read the metric name of %s: client_golang's Desc.String changed?", s)
			}
			_, h := c.(prometheus.Histogram)
			_, hv := c.(*prometheus.HistogramVec)
			fams[sub[1]] = h || hv
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(rec.cs...)
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range got {
		if h, ok := fams[mf.GetName()]; !ok || h != (mf.GetType() == dto.MetricType_HISTOGRAM) {
			t.Fatalf("Gather has %s (%s), Describe %v (histogram %v, known %v)", mf.GetName(), mf.GetType(), fams.names(), h, ok)
		}
	}
	if len(fams) < 20 || len(got) < 20 {
		t.Fatalf("supervisor.NewMetrics registered %d families (%d with series): too few to be right", len(fams), len(got))
	}
	return fams
}

// promqlWords are PromQL's aggregation operators and keywords: words that
// are no metric name when no "(" follows them.
var promqlWords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
}

// labelListWords take a parenthesized list of label names.
var labelListWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// metricNames returns the metric names that a PromQL expression selects,
// each once, in order: every identifier that is not a function (a name
// followed by "("), an aggregation operator or keyword, or a label name (in
// braces, or in the list after by, without, on, ignoring, group_left and
// group_right). Strings, numbers, durations and ranges are skipped. It is
// a lexer, not a parser (promtool tells whether an expression is valid); a
// selection by {__name__=...} is an error, as it would go unchecked.
// Grafana's variables must be replaced first.
func metricNames(expr string) ([]string, error) {
	if strings.Contains(expr, "__name__") {
		return nil, fmt.Errorf("%q selects by __name__: name the metric", expr)
	}
	var out []string
	s := expr
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j, err := skipString(s, i)
			if err != nil {
				return nil, err
			}
			i = j
		case c == '{' || c == '[' || c == '(' && i > 0 && labelListBefore(s[:i]):
			close := map[byte]byte{'{': '}', '[': ']', '(': ')'}[c]
			j := i + 1
			for j < len(s) && s[j] != close {
				if s[j] == '"' || s[j] == '\'' || s[j] == '`' {
					k, err := skipString(s, j)
					if err != nil {
						return nil, err
					}
					j = k
					continue
				}
				j++
			}
			if j == len(s) {
				return nil, fmt.Errorf("%q: %c at %d is not closed", expr, c, i)
			}
			i = j + 1
		case c >= '0' && c <= '9' || c == '.':
			for i < len(s) && (isIdent(s[i]) || s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
				i++
			}
		case isIdent(c):
			j := i
			for j < len(s) && (isIdent(s[j]) || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			word := s[i:j]
			k := j
			for k < len(s) && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n') {
				k++
			}
			called := k < len(s) && s[k] == '('
			if !called && !promqlWords[word] && !labelListWords[word] && !slices.Contains(out, word) {
				out = append(out, word)
			}
			i = j
		default:
			i++
		}
	}
	return out, nil
}

// isIdent tells a letter, "_" or ":" (digits follow only).
func isIdent(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == ':'
}

// labelListBefore tells whether the text before a "(" ends with a word
// that takes a list of label names.
func labelListBefore(s string) bool {
	s = strings.TrimRight(s, " \t\n")
	j := len(s)
	for j > 0 && (isIdent(s[j-1]) || s[j-1] >= '0' && s[j-1] <= '9') {
		j--
	}
	return labelListWords[s[j:]]
}

// skipString returns the index after the string literal at s[i].
func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("%q: the string at %d is not closed", s, i)
}

func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (job, le) (rate(a_bucket{job=~".*", le!="x{y}"}[5m]))`, []string{"a_bucket"}},
		{`max by (namespace, job) (w) - sum without (instance) (h) > 0`, []string{"w", "h"}},
		{`histogram_quantile(0.99, sum(rate(x_bucket[5m])) by (le))`, []string{"x_bucket"}},
		{`a / on (instance) group_left (kind) b offset 5m and c unless bool d`, []string{"a", "b", "c", "d"}},
		{`count_values("v", a) or topk(3, b) or vector(1) or label_replace(c, "dst", "$1", "src", "(.*)")`, []string{"a", "b", "c"}},
		{`increase(a:b_total[15m:1m]) > 1e-3 * 2 or sum (rate(a:b_total[5m]))`, []string{"a:b_total"}},
		{`a{l="\"}"} + b`, []string{"a", "b"}},
	} {
		got, err := metricNames(c.expr)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, %v; want %q", c.expr, got, err, c.want)
		}
	}
	for _, bad := range []string{`{__name__="a"}`, `a{l="x}`, `rate(a[5m)`} {
		if got, err := metricNames(bad); err == nil {
			t.Errorf("metricNames(%q) = %q, want an error", bad, got)
		}
	}
}
