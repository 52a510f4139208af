package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/immortald/immortald/internal/toolbuild"
)

// The chart under deploy/helm and the value sets its tests render: the
// defaults and every file of its ci/ directory (what chart-testing lints).
const chartDir = "helm/immortald"

// helm returns the helm binary, built from hack/tools/helm on the first call
// when the cache has none for the current pin (toolbuild.Tool.ForTest).
func helm(t *testing.T) string {
	t.Helper()
	return toolbuild.Helm.ForTest(t, "..")
}

// runHelm runs helm with args, offline: its homes in a temporary directory,
// no kubeconfig, and every HTTP(S) request sent to a proxy at a closed port
// of the loopback, so that a command that tried to reach a repository or
// registry would fail instead. It returns stdout, and stderr in err.
func runHelm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helm(t), args...)
	cmd.Env = append(toolbuild.HelmEnv(home),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
		"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=",
		"http_proxy=http://127.0.0.1:9", "https_proxy=http://127.0.0.1:9", "no_proxy=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// valueSets are the chart's default values and each ci/*-values.yaml.
func valueSets(t *testing.T) map[string][]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no %s/ci/*-values.yaml (%v)", chartDir, err)
	}
	sets := map[string][]string{"default": nil}
	for _, f := range files {
		sets[strings.TrimSuffix(filepath.Base(f), "-values.yaml")] = []string{"-f", f}
	}
	return sets
}

// renderChart is `helm template` of the chart in namespace immortald.
func renderChart(t *testing.T, args ...string) *manifests {
	t.Helper()
	what := strings.TrimSpace("helm template " + strings.Join(args, " "))
	out, err := runHelm(t, append([]string{"template", "immortald", chartDir, "--namespace", "immortald"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return decodeBuild(t, what, []byte(out))
}

// TestHelmLint runs `helm lint --strict` (warnings are errors; the values
// are checked against values.schema.json) with each value set.
func TestHelmLint(t *testing.T) {
	t0 := time.Now()
	helm(t)
	t.Logf("helm ready in %v", time.Since(t0).Round(time.Millisecond))
	if b, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml")); err != nil || bytes.Contains(b, []byte("dependencies:")) {
		t.Fatalf("Chart.yaml: %v; the chart must have no dependencies (they would be fetched)", err)
	}
	sets := valueSets(t)
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		t.Run(name, func(t *testing.T) {
			out, err := runHelm(t, append([]string{"lint", "--strict", chartDir}, sets[name]...)...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Errorf("helm lint: %s", out)
			}
		})
	}
}

// TestHelmTemplate renders the chart with each value set, decodes every
// object strictly as deploy/ is decoded, and checks the same invariants
// (TestInvariants, and the member id and pod IP of
// TestKustomizeBuildsEveryKustomization), with those of etcd when the release
// has the bundled etcd; then what each value set is for.
func TestHelmTemplate(t *testing.T) {
	sets := valueSets(t)
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		t.Run(name, func(t *testing.T) {
			m := renderChart(t, sets[name]...)
			if !hasObject(m, "Deployment", appName) {
				t.Fatal("no Deployment immortald")
			}
			checkBuild(t, m)
			checkHelmRelease(t, m)
			d := deployment(t, m, appName)
			c := container(t, &d.Spec.Template.Spec, appContainer)
			switch name {
			case "default":
				if n := replicas(d.Spec.Replicas); n != 3 {
					t.Errorf("replicas = %d, want 3", n)
				}
				if hasObject(m, "ConfigMap", "immortald-config") || len(d.Spec.Template.Spec.Volumes) > 0 {
					t.Error("the defaults render a config file or volumes; the base has neither")
				}
			case "kind":
				if n := replicas(d.Spec.Replicas); n != 2 {
					t.Errorf("replicas = %d, want 2 (as deploy/overlays/kind)", n)
				}
			case "external-etcd":
				for _, kind := range []string{"StatefulSet", "Service", "PodDisruptionBudget"} {
					if hasObject(m, kind, etcdName) {
						t.Errorf("%s etcd rendered with etcd.enabled false", kind)
					}
				}
				want := "https://etcd-a.etcd.example:2379,https://etcd-b.etcd.example:2379,https://etcd-c.etcd.example:2379"
				if got := envValue(t, c, "IMMORTALD_ETCD_ENDPOINTS"); got != want {
					t.Errorf("IMMORTALD_ETCD_ENDPOINTS = %q, want etcd.endpoints %q", got, want)
				}
				checkTLSEnv(t, c)
			case "tls":
				checkTLSEnv(t, c)
				if !hasObject(m, "Job", "etcd-auth") {
					t.Error("no Job etcd-auth with etcd.auth.enabled")
				}
			case "kinds":
				checkConfigFile(t, m, d)
			default:
				t.Fatalf("value set %q has no checks of its own: add them here", name)
			}
		})
	}
}

// checkHelmRelease checks what a release needs beyond the base: every object
// in the release's namespace and labelled as the release's.
func checkHelmRelease(t *testing.T, m *manifests) {
	t.Helper()
	for _, o := range m.resources {
		meta, ok := o.obj.(interface {
			GetNamespace() string
			GetLabels() map[string]string
		})
		if !ok {
			t.Fatalf("%s: %T has no metadata", o.where, o.obj)
		}
		l := meta.GetLabels()
		if meta.GetNamespace() != "immortald" || l["app.kubernetes.io/instance"] != "immortald" ||
			l["app.kubernetes.io/managed-by"] != "Helm" || l["app.kubernetes.io/part-of"] != "immortald" {
			t.Errorf("%s: namespace %q labels %v, want namespace immortald and the release's labels", o.where, meta.GetNamespace(), l)
		}
	}
}

// checkTLSEnv checks that the member reads its client certificate, key and
// CA from the Secret tls.secretName.
func checkTLSEnv(t *testing.T, c *corev1.Container) {
	t.Helper()
	for _, e := range []string{"IMMORTALD_ETCD_CACERT", "IMMORTALD_ETCD_CERT", "IMMORTALD_ETCD_KEY"} {
		if v := envValue(t, c, e); !strings.HasPrefix(v, "/etc/immortald/etcd-tls/") {
			t.Errorf("%s = %q, want a file of the Secret mounted at /etc/immortald/etcd-tls", e, v)
		}
	}
	if eps := envValue(t, c, "IMMORTALD_ETCD_ENDPOINTS"); strings.Contains(eps, "http://") {
		t.Errorf("IMMORTALD_ETCD_ENDPOINTS = %q: plain http with tls.enabled", eps)
	}
}

// checkConfigFile checks the member config file: a ConfigMap whose
// config.yaml holds the values' settings and kinds, mounted where
// IMMORTALD_CONFIG says, with a state-dir on a writable volume, and a
// checksum that rolls the pods when it changes.
func checkConfigFile(t *testing.T, m *manifests, d *appsv1.Deployment) {
	t.Helper()
	cm := find[*corev1.ConfigMap](t, m, "ConfigMap", "immortald-config")
	var cfg struct {
		LeaseTTL string                    `json:"lease-ttl"`
		StateDir string                    `json:"state-dir"`
		Kinds    map[string]map[string]any `json:"kinds"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	if cfg.LeaseTTL != "5s" || cfg.Kinds["counter"] == nil || cfg.StateDir == "" {
		t.Errorf("config.yaml = %q: want lease-ttl 5s, the counter kind and a state-dir", cm.Data["config.yaml"])
	}
	spec := &d.Spec.Template.Spec
	c := container(t, spec, appContainer)
	path := envValue(t, c, "IMMORTALD_CONFIG")
	mounted, writable := false, false
	for _, vm := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != vm.Name {
				continue
			}
			if v.ConfigMap != nil && v.ConfigMap.Name == cm.Name && vm.MountPath == path && vm.SubPath == "config.yaml" {
				mounted = true
			}
			if v.EmptyDir != nil && !vm.ReadOnly && isUnder(cfg.StateDir, vm.MountPath) {
				writable = true
			}
		}
	}
	if !mounted {
		t.Errorf("IMMORTALD_CONFIG=%s is not the ConfigMap's config.yaml", path)
	}
	if !writable {
		t.Errorf("state-dir %s is not on a writable emptyDir (the root is read-only)", cfg.StateDir)
	}
	if d.Spec.Template.Annotations["checksum/config"] == "" {
		t.Error("no checksum/config annotation: a changed config would not roll the members")
	}
}

// TestHelmRejectsBadValues: values that cannot work stop `helm template`
// with a message that names them, from values.schema.json or the chart's
// own checks.
func TestHelmRejectsBadValues(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a typo in a key", []string{"--set", "replicas=3"}, "additional properties 'replicas' not allowed"},
		{"no endpoints without the bundled etcd", []string{"--set", "etcd.enabled=false"}, "set etcd.endpoints"},
		{"endpoints beside the bundled etcd", []string{"--set", "etcd.endpoints[0]=http://x:2379"}, "etcd.endpoints is only for an etcd of your own"},
		{"a grace period shorter than the shutdown", []string{"--set", "terminationGracePeriodSeconds=5"}, "terminationGracePeriodSeconds"},
		{"a setting the chart owns", []string{"--set", "config.etcd-endpoints=http://x:2379"}, "etcd-endpoints"},
		{"TLS to a plain etcd", []string{"--set", "tls.enabled=true"}, "needs etcd.tls.enabled too"},
		{"etcd TLS without client certificates", []string{"--set", "etcd.tls.enabled=true"}, "requires client certificates"},
		{"http endpoints with TLS", []string{"--set", "etcd.enabled=false,etcd.endpoints[0]=http://x:2379,tls.enabled=true"}, `"http://x:2379" is not https://`},
		{"a kind without a command", []string{"--set", "kinds.counter.restart=never"}, "missing property 'command'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runHelm(t, append([]string{"template", "immortald", chartDir}, tt.args...)...)
			if err == nil {
				t.Fatalf("helm template %v succeeded, want an error containing %q", tt.args, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not contain %q:\n%v", tt.want, err)
			}
		})
	}
}

// TestHelmChartMatchesKustomize: the chart is the kustomize manifests in
// another form. With its defaults it renders what deploy/base builds, with
// ci/kind-values.yaml what deploy/overlays/kind builds, and with
// ci/tls-values.yaml what deploy/overlays/tls builds: the same objects, field
// for field, once Helm's own labels and the namespace are left out and the
// lists that Kubernetes merges by name (env, ports, volumes, volume mounts)
// are compared in name order (kustomize reorders patched ones).
func TestHelmChartMatchesKustomize(t *testing.T) {
	kubectl := kubectlPath(t)
	for _, tc := range []struct{ kustomization, values string }{
		{"base", ""},
		{"overlays/kind", "kind"},
		{"overlays/tls", "tls"},
	} {
		t.Run(tc.kustomization, func(t *testing.T) {
			var args []string
			if tc.values != "" {
				args = []string{"-f", filepath.Join(chartDir, "ci", tc.values+"-values.yaml")}
			}
			want := normalized(t, decodeBuild(t, "kubectl kustomize "+tc.kustomization, kustomize(t, kubectl, tc.kustomization)))
			got := normalized(t, renderChart(t, args...))
			for _, k := range slices.Sorted(maps.Keys(want)) {
				g, ok := got[k]
				if !ok {
					t.Errorf("%s: not rendered by the chart", k)
					continue
				}
				for _, d := range diff("", want[k], g) {
					t.Errorf("%s: %s", k, d)
				}
			}
			for _, k := range slices.Sorted(maps.Keys(got)) {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: rendered by the chart, not in %s", k, tc.kustomization)
				}
			}
		})
	}
}

// helmLabels are the labels a release adds to the kustomize manifests'.
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}

// normalized returns each object as JSON data by kind/name, without Helm's
// labels and the namespace, with env, ports, volumes and volumeMounts sorted
// by name.
func normalized(t *testing.T, m *manifests) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, o := range m.resources {
		kind, name := kindName(o.obj)
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o.obj)
		if err != nil {
			t.Fatalf("%s: %v", o.where, err)
		}
		// Through JSON, so that numbers and empty values compare alike.
		b, err := json.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		normalize(v)
		if md, ok := v["metadata"].(map[string]any); ok {
			delete(md, "namespace")
		}
		out[kind+"/"+name] = v
	}
	return out
}

func normalize(v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if k == "labels" {
				if l, ok := x.(map[string]any); ok {
					for _, h := range helmLabels {
						delete(l, h)
					}
					if len(l) == 0 {
						delete(v, k)
					}
				}
			}
			if l, ok := x.([]any); ok && slices.Contains([]string{"env", "ports", "volumes", "volumeMounts"}, k) {
				sort.SliceStable(l, func(i, j int) bool { return itemName(l[i]) < itemName(l[j]) })
			}
			normalize(x)
		}
	case []any:
		for _, x := range v {
			normalize(x)
		}
	}
}

func itemName(v any) string {
	if m, ok := v.(map[string]any); ok {
		if n, ok := m["name"].(string); ok {
			return n
		}
	}
	return ""
}

// diff lists the paths at which a and b differ.
func diff(path string, a, b any) []string {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		var out []string
		keys := slices.Sorted(maps.Keys(am))
		for k := range bm {
			if _, ok := am[k]; !ok {
				keys = append(keys, k)
			}
		}
		for _, k := range keys {
			out = append(out, diff(path+"."+k, am[k], bm[k])...)
		}
		return out
	}
	al, aok := a.([]any)
	bl, bok := b.([]any)
	if aok && bok && len(al) == len(bl) {
		var out []string
		for i := range al {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), al[i], bl[i])...)
		}
		return out
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	js := func(v any) string {
		if v == nil {
			return "(none)"
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	return []string{fmt.Sprintf("%s: kustomize has %s, the chart %s", path, js(a), js(b))}
}
