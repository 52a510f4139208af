// Package deploy_test checks the Kubernetes manifests under deploy/ without a
// cluster.
//
// Every YAML document is decoded the way the API server's strict field
// validation does it (kubectl apply --validate=strict): into the k8s.io/api
// type named by its apiVersion and kind, with unknown fields, duplicate fields
// and wrongly cased fields all rejected. A kind that is not registered below
// fails the test. Kustomization files are decoded strictly into the subset of
// the Kustomization schema that this repository uses, and every file they name
// must exist.
//
// On top of that, a table of invariants pins down what immortald relies on:
// the restricted security context, the member id taken from the pod name, a
// grace period that fits the shutdown, the probe paths, and an etcd cluster
// whose replicas, peer list, headless Service and client endpoints agree.
package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// The objects the invariants are about.
const (
	appName         = "immortald"
	appContainer    = "immortald"
	appUID          = 65532
	appHTTPPort     = 8080
	etcdName        = "etcd"
	etcdContainer   = "etcd"
	etcdReplicas    = 3
	etcdClientPort  = 2379
	etcdPeerPort    = 2380
	etcdMetricsPort = 2381 // plain-http health and metrics of an etcd with TLS
	minGracePeriodS = 10   // lease-ttl (5s) + 2s worst case, with slack
)

// codec decodes a YAML document into the registered type its apiVersion and
// kind name. Strict makes unknown, duplicate and wrongly cased fields errors.
var codec = newCodec()

func newCodec() *kjson.Serializer {
	s := newScheme()
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, s, s, kjson.SerializerOptions{Yaml: true, Strict: true})
}

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		appsv1.AddToScheme,
		autoscalingv2.AddToScheme,
		batchv1.AddToScheme,
		corev1.AddToScheme,
		networkingv1.AddToScheme,
		policyv1.AddToScheme,
		rbacv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// decodeStrict decodes one YAML document into its typed object.
func decodeStrict(doc []byte) (runtime.Object, error) {
	obj, gvk, err := codec.Decode(doc, nil, nil)
	if err != nil {
		if gvk != nil && !gvk.Empty() {
			return nil, fmt.Errorf("%s %s: %w", gvk.GroupVersion(), gvk.Kind, err)
		}
		return nil, err
	}
	return obj, nil
}

// kustomization is the part of kustomize's Kustomization schema that this
// repository may use. Anything else is rejected, so a typo such as
// "resource:" cannot silently drop files from a build.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	NamePrefix string   `json:"namePrefix,omitempty"`
	NameSuffix string   `json:"nameSuffix,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Patches    []struct {
		Path    string          `json:"path,omitempty"`
		Patch   string          `json:"patch,omitempty"`
		Target  map[string]any  `json:"target,omitempty"`
		Options map[string]bool `json:"options,omitempty"`
	} `json:"patches,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
	Replicas []struct {
		Name  string `json:"name"`
		Count int64  `json:"count"`
	} `json:"replicas,omitempty"`
	Labels []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
		IncludeTemplates bool              `json:"includeTemplates,omitempty"`
	} `json:"labels,omitempty"`
	CommonAnnotations map[string]string `json:"commonAnnotations,omitempty"`
}

func decodeKustomization(data []byte) (*kustomization, error) {
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		return nil, err
	}
	// Only Kustomizations: a user can apply every directory that has one (a
	// kustomize Component cannot be built or applied alone).
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("apiVersion/kind is %q/%q, want kustomize.config.k8s.io/v1beta1/Kustomization", k.APIVersion, k.Kind)
	}
	return &k, nil
}

func isKustomization(path string) bool {
	switch filepath.Base(path) {
	case "kustomization.yaml", "kustomization.yml", "Kustomization":
		return true
	}
	return false
}

// object is one decoded document and where it came from.
type object struct {
	where string // file:document, for messages
	obj   runtime.Object
}

// manifests is everything under deploy/, decoded.
type manifests struct {
	kustomizations map[string]*kustomization // by slash path relative to deploy/
	resources      []object                  // documents of files listed as resources
	patches        []object                  // documents of files listed as patches
	errs           []string                  // every decode or reference problem
}

// loadManifests walks deploy/ (the test's working directory) and decodes every
// YAML file. It never stops at the first problem: m.errs lists them all.
func loadManifests(tb testing.TB) *manifests {
	tb.Helper()
	m := &manifests{kustomizations: map[string]*kustomization{}}
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if isChart(path) {
				// A Helm chart's templates are not manifests until helm
				// renders them: helm_test.go checks what it renders.
				return filepath.SkipDir
			}
			if d.Name() == "testdata" || (strings.HasPrefix(d.Name(), ".") && path != ".") {
				return filepath.SkipDir
			}
			if path == "monitoring" {
				// Prometheus rules and a Grafana dashboard, no Kubernetes
				// manifests: package monitoring checks them with promtool.
				return filepath.SkipDir
			}
			return nil
		}
		if isKustomization(path) {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			k, err := decodeKustomization(data)
			if err != nil {
				m.errs = append(m.errs, fmt.Sprintf("%s: %v", path, err))
				return nil
			}
			m.kustomizations[filepath.ToSlash(path)] = k
			return nil
		}
		if ext := filepath.Ext(path); ext == ".yaml" || ext == ".yml" {
			files = append(files, filepath.ToSlash(path))
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("walk deploy/: %v", err)
	}
	if len(m.kustomizations) == 0 || len(files) == 0 {
		tb.Fatalf("found %d kustomizations and %d manifests under deploy/; run the test from deploy/",
			len(m.kustomizations), len(files))
	}

	listedAs := m.checkReferences()
	for _, file := range files {
		objs, err := decodeFile(file)
		if err != nil {
			m.errs = append(m.errs, err.Error())
		}
		switch listedAs[file] {
		case "resource":
			m.resources = append(m.resources, objs...)
		case "patch":
			m.patches = append(m.patches, objs...)
		default:
			m.errs = append(m.errs, fmt.Sprintf("%s: not listed in any kustomization.yaml, so it is never applied", file))
		}
	}
	m.checkPatchesAndReplicas()
	return m
}

// checkReferences checks that every file a kustomization names exists, and
// returns how each manifest file is used: "resource" or "patch".
func (m *manifests) checkReferences() map[string]string {
	listedAs := map[string]string{}
	for _, kpath := range slices.Sorted(maps.Keys(m.kustomizations)) {
		k := m.kustomizations[kpath]
		dir := filepath.Dir(kpath)
		for _, r := range k.Resources {
			if strings.Contains(r, "://") {
				m.errs = append(m.errs, fmt.Sprintf("%s: remote resource %q cannot be checked offline", kpath, r))
				continue
			}
			p := filepath.ToSlash(filepath.Join(dir, r))
			fi, err := os.Stat(p)
			switch {
			case err != nil:
				m.errs = append(m.errs, fmt.Sprintf("%s: resource %q: %v", kpath, r, err))
			case fi.IsDir():
				if !hasKustomization(p) {
					m.errs = append(m.errs, fmt.Sprintf("%s: resource %q is a directory without a kustomization.yaml", kpath, r))
				}
			default:
				listedAs[p] = "resource"
			}
		}
		for i, p := range k.Patches {
			if p.Path == "" {
				if p.Patch == "" {
					m.errs = append(m.errs, fmt.Sprintf("%s: patches[%d] has neither path nor patch", kpath, i))
				}
				continue
			}
			fp := filepath.ToSlash(filepath.Join(dir, p.Path))
			if fi, err := os.Stat(fp); err != nil || fi.IsDir() {
				m.errs = append(m.errs, fmt.Sprintf("%s: patch %q is not a file (%v)", kpath, p.Path, err))
				continue
			}
			listedAs[fp] = "patch"
		}
	}
	return listedAs
}

// checkPatchesAndReplicas checks that overlay patches and replica overrides
// name objects that exist, since kustomize fails the build otherwise.
func (m *manifests) checkPatchesAndReplicas() {
	have := map[string]bool{}
	for _, o := range m.resources {
		kind, name := kindName(o.obj)
		if have[kind+"/"+name] {
			m.errs = append(m.errs, fmt.Sprintf("%s: %s/%s is defined twice", o.where, kind, name))
		}
		have[kind+"/"+name] = true
	}
	for _, o := range m.patches {
		if kind, name := kindName(o.obj); !have[kind+"/"+name] {
			m.errs = append(m.errs, fmt.Sprintf("%s: patch targets %s/%s, which no resource defines", o.where, kind, name))
		}
	}
	for kpath, k := range m.kustomizations {
		for _, r := range k.Replicas {
			if !have["Deployment/"+r.Name] && !have["StatefulSet/"+r.Name] {
				m.errs = append(m.errs, fmt.Sprintf("%s: replicas for %q, which is no Deployment or StatefulSet", kpath, r.Name))
			}
		}
	}
}

// isChart reports whether dir is a Helm chart (it has a Chart.yaml).
func isChart(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "Chart.yaml"))
	return err == nil
}

func hasKustomization(dir string) bool {
	for _, n := range []string{"kustomization.yaml", "kustomization.yml", "Kustomization"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			return true
		}
	}
	return false
}

// decodeFile decodes every document of a (possibly multi-document) file.
func decodeFile(path string) ([]object, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%s: no YAML documents", path)
	}
	var objs []object
	var errs []error
	for i, doc := range docs {
		where := fmt.Sprintf("%s#%d", path, i)
		obj, err := decodeStrict(doc)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		objs = append(objs, object{where: where, obj: obj})
	}
	return objs, errors.Join(errs...)
}

// splitDocuments splits a YAML stream on "---" and drops documents that hold
// only comments or whitespace.
func splitDocuments(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, err
		}
		if s := string(bytes.TrimSpace(j)); s == "null" || s == "" {
			continue
		}
		docs = append(docs, doc)
	}
}

func kindName(obj runtime.Object) (kind, name string) {
	kind = obj.GetObjectKind().GroupVersionKind().Kind
	if o, ok := obj.(interface{ GetName() string }); ok {
		name = o.GetName()
	}
	return kind, name
}

// TestManifestsDecodeStrictly fails on any document that is not a valid,
// known Kubernetes object, and on any kustomization that names a missing or
// unused file.
func TestManifestsDecodeStrictly(t *testing.T) {
	m := loadManifests(t)
	for _, e := range m.errs {
		t.Error(e)
	}
	t.Logf("%d kustomizations, %d resources, %d patches", len(m.kustomizations), len(m.resources), len(m.patches))
}

// TestStrictDecodingRejectsBadManifests proves that the decoder used above
// would catch the mistakes it is there to catch.
func TestStrictDecodingRejectsBadManifests(t *testing.T) {
	const header = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n"
	const pod = `  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      containers:
        - name: x
          image: x
`
	tests := []struct {
		name    string
		doc     string
		wantErr string // "" means the document must decode
	}{
		{
			name: "valid control",
			doc:  header + "spec:\n  replicas: 3\n" + pod,
		},
		{
			name:    "typo in a field name",
			doc:     header + "spec:\n  replica: 3\n" + pod,
			wantErr: `unknown field "spec.replica"`,
		},
		{
			name:    "wrong case in a field name",
			doc:     header + "spec:\n  replicas: 3\n" + pod + "      securityContext:\n        runAsNonroot: true\n",
			wantErr: `unknown field "spec.template.spec.securityContext.runAsNonroot"`,
		},
		{
			name:    "field in the wrong place",
			doc:     header + "spec:\n  replicas: 3\n  terminationGracePeriodSeconds: 15\n" + pod,
			wantErr: `unknown field "spec.terminationGracePeriodSeconds"`,
		},
		{
			name:    "duplicate field",
			doc:     header + "spec:\n  replicas: 3\n  replicas: 2\n" + pod,
			wantErr: `already set in map`,
		},
		{
			name:    "wrong type",
			doc:     header + "spec:\n  replicas: three\n" + pod,
			wantErr: `cannot unmarshal string`,
		},
		{
			name:    "unknown kind",
			doc:     strings.Replace(header, "kind: Deployment", "kind: Deploymnet", 1) + "spec:\n" + pod,
			wantErr: `no kind "Deploymnet" is registered`,
		},
		{
			name:    "retired apiVersion",
			doc:     strings.Replace(header, "apps/v1", "apps/v1beta1", 1) + "spec:\n" + pod,
			wantErr: `is registered for version "apps/v1beta1"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj, err := decodeStrict([]byte(tt.doc))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if _, ok := obj.(*appsv1.Deployment); !ok {
					t.Fatalf("decoded into %T, want *appsv1.Deployment", obj)
				}
				return
			}
			if err == nil {
				t.Fatalf("decode succeeded, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}

	t.Run("typo in a kustomization", func(t *testing.T) {
		_, err := decodeKustomization([]byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresource:\n  - a.yaml\n"))
		if err == nil || !strings.Contains(err.Error(), `unknown field "resource"`) {
			t.Fatalf("err = %v, want unknown field \"resource\"", err)
		}
	})
}

// TestInvariants checks the properties immortald and its etcd rely on. They
// hold for the base; overlays only change replicas of the app, images and
// resources. TestKustomizeBuildsEveryKustomization checks them on what each
// kustomization builds, and helm_test.go on what the chart renders.
func TestInvariants(t *testing.T) {
	m := loadManifests(t)
	if len(m.errs) > 0 {
		t.Fatalf("manifests do not decode; see TestManifestsDecodeStrictly (first: %s)", m.errs[0])
	}
	checkInvariants(t, m, true)
}

// checkInvariants checks the invariants on m.resources, each as a subtest.
// withEtcd false leaves out those about the etcd StatefulSet: for a set of
// objects without it (the app alone, or a Helm release on an etcd of the
// user's own).
func checkInvariants(t *testing.T, m *manifests, withEtcd bool) {
	tests := []struct {
		name  string
		etcd  bool // about the etcd StatefulSet
		check func(t *testing.T, m *manifests)
	}{
		{
			name: "app runs as non-root 65532 with a read-only root and no privilege escalation",
			check: func(t *testing.T, m *manifests) {
				checkRestricted(t, &deployment(t, m, appName).Spec.Template.Spec)
			},
		},
		{
			name: "etcd runs restricted too",
			etcd: true,
			check: func(t *testing.T, m *manifests) {
				checkRestricted(t, &statefulSet(t, m, etcdName).Spec.Template.Spec)
			},
		},
		{
			name: "app member id comes from the pod name",
			check: func(t *testing.T, m *manifests) {
				c := container(t, &deployment(t, m, appName).Spec.Template.Spec, appContainer)
				checkEnvFromPodName(t, c, "IMMORTALD_ID")
			},
		},
		{
			name: "app keeps Service env vars out of the IMMORTALD_ prefix",
			check: func(t *testing.T, m *manifests) {
				if esl := deployment(t, m, appName).Spec.Template.Spec.EnableServiceLinks; esl == nil || *esl {
					t.Errorf("enableServiceLinks = %v, want false: Service %q would inject IMMORTALD_SERVICE_* and IMMORTALD_PORT*", ptrString(esl), appName)
				}
			},
		},
		{
			name: "app grace period fits the shutdown",
			check: func(t *testing.T, m *manifests) {
				g := deployment(t, m, appName).Spec.Template.Spec.TerminationGracePeriodSeconds
				if g == nil || *g < minGracePeriodS {
					t.Errorf("terminationGracePeriodSeconds = %s, want >= %d (lease-ttl + 2s)", ptrString(g), minGracePeriodS)
				}
			},
		},
		{
			name: "app probes hit /livez and /readyz on 8080",
			check: func(t *testing.T, m *manifests) {
				c := container(t, &deployment(t, m, appName).Spec.Template.Spec, appContainer)
				checkProbe(t, c, "liveness", c.LivenessProbe, "/livez", appHTTPPort)
				checkProbe(t, c, "readiness", c.ReadinessProbe, "/readyz", appHTTPPort)
				if c.StartupProbe != nil {
					checkProbe(t, c, "startup", c.StartupProbe, "/livez", appHTTPPort)
				}
			},
		},
		{
			name: "app has resource requests and a memory limit",
			check: func(t *testing.T, m *manifests) {
				c := container(t, &deployment(t, m, appName).Spec.Template.Spec, appContainer)
				for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
					if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
						t.Errorf("no %s request", r)
					}
				}
				if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.IsZero() {
					t.Error("no memory limit")
				}
			},
		},
		{
			name: "app lists every etcd member as an endpoint",
			etcd: true,
			check: func(t *testing.T, m *manifests) {
				sts := statefulSet(t, m, etcdName)
				scheme := etcdScheme(container(t, &sts.Spec.Template.Spec, etcdContainer))
				c := container(t, &deployment(t, m, appName).Spec.Template.Spec, appContainer)
				got := strings.Split(envValue(t, c, "IMMORTALD_ETCD_ENDPOINTS"), ",")
				var want []string
				for i := range replicas(sts.Spec.Replicas) {
					want = append(want, fmt.Sprintf("%s://%s-%d.%s:%d", scheme, sts.Name, i, sts.Spec.ServiceName, etcdClientPort))
				}
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Errorf("IMMORTALD_ETCD_ENDPOINTS = %q, want %q", got, want)
				}
			},
		},
		{
			name: "etcd has 3 replicas started in parallel",
			etcd: true,
			check: func(t *testing.T, m *manifests) {
				sts := statefulSet(t, m, etcdName)
				if n := replicas(sts.Spec.Replicas); n != etcdReplicas {
					t.Errorf("replicas = %d, want %d", n, etcdReplicas)
				}
				// OrderedReady deadlocks: etcd-0 is not ready without a quorum.
				if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
					t.Errorf("podManagementPolicy = %q, want %q", sts.Spec.PodManagementPolicy, appsv1.ParallelPodManagement)
				}
			},
		},
		{
			name: "etcd keeps its data dir on a volumeClaimTemplate",
			etcd: true,
			check: func(t *testing.T, m *manifests) {
				sts := statefulSet(t, m, etcdName)
				if len(sts.Spec.VolumeClaimTemplates) == 0 {
					t.Fatal("no volumeClaimTemplates")
				}
				c := container(t, &sts.Spec.Template.Spec, etcdContainer)
				dataDir, ok := flagValue(c.Args, "--data-dir")
				if !ok {
					t.Fatal("no --data-dir")
				}
				for _, vct := range sts.Spec.VolumeClaimTemplates {
					if q := vct.Spec.Resources.Requests[corev1.ResourceStorage]; q.IsZero() {
						t.Errorf("volumeClaimTemplate %q requests no storage", vct.Name)
					}
					for _, vm := range c.VolumeMounts {
						if vm.Name == vct.Name && isUnder(dataDir, vm.MountPath) {
							return
						}
					}
				}
				t.Errorf("--data-dir=%s is not on a volume from a volumeClaimTemplate", dataDir)
			},
		},
		{
			name: "etcd serviceName is a headless Service that publishes not-ready pods",
			etcd: true,
			check: func(t *testing.T, m *manifests) {
				sts := statefulSet(t, m, etcdName)
				svc := service(t, m, sts.Spec.ServiceName)
				if svc.Spec.ClusterIP != corev1.ClusterIPNone {
					t.Errorf("Service %q clusterIP = %q, want None", svc.Name, svc.Spec.ClusterIP)
				}
				if !svc.Spec.PublishNotReadyAddresses {
					t.Errorf("Service %q does not publish not-ready addresses: peers cannot find each other before quorum", svc.Name)
				}
				if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(sts.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
					t.Errorf("Service %q selector %v does not select the etcd pods %v", svc.Name, svc.Spec.Selector, sts.Spec.Template.Labels)
				}
				ports := map[int32]bool{}
				for _, p := range svc.Spec.Ports {
					ports[p.Port] = true
				}
				if !ports[etcdClientPort] || !ports[etcdPeerPort] {
					t.Errorf("Service %q ports = %v, want %d and %d", svc.Name, svc.Spec.Ports, etcdClientPort, etcdPeerPort)
				}
			},
		},
		{
			name: "etcd initial cluster names every replica by its DNS name",
			etcd: true,
			check: func(t *testing.T, m *manifests) {
				sts := statefulSet(t, m, etcdName)
				c := container(t, &sts.Spec.Template.Spec, etcdContainer)
				checkEnvFromPodName(t, c, "POD_NAME")
				scheme := etcdScheme(c)
				var want []string
				for i := range replicas(sts.Spec.Replicas) {
					want = append(want, fmt.Sprintf("%s-%d=%s://%[1]s-%[2]d.%[4]s:%[5]d", sts.Name, i, scheme, sts.Spec.ServiceName, etcdPeerPort))
				}
				wantFlags := map[string]string{
					"--name":                        "$(POD_NAME)",
					"--initial-cluster":             strings.Join(want, ","),
					"--initial-cluster-state":       "new",
					"--initial-advertise-peer-urls": fmt.Sprintf("%s://$(POD_NAME).%s:%d", scheme, sts.Spec.ServiceName, etcdPeerPort),
					"--advertise-client-urls":       fmt.Sprintf("%s://$(POD_NAME).%s:%d", scheme, sts.Spec.ServiceName, etcdClientPort),
				}
				for _, flag := range slices.Sorted(maps.Keys(wantFlags)) {
					if got, _ := flagValue(c.Args, flag); got != wantFlags[flag] {
						t.Errorf("%s = %q, want %q", flag, got, wantFlags[flag])
					}
				}
			},
		},
		{
			name: "etcd probes hit /livez and /readyz on the client port (with TLS, the plain metrics port)",
			etcd: true,
			check: func(t *testing.T, m *manifests) {
				c := container(t, &statefulSet(t, m, etcdName).Spec.Template.Spec, etcdContainer)
				port := int32(etcdClientPort)
				if etcdScheme(c) == "https" {
					// The kubelet has no client certificate.
					port = etcdMetricsPort
					want := fmt.Sprintf("http://0.0.0.0:%d", etcdMetricsPort)
					if got, _ := flagValue(c.Args, "--listen-metrics-urls"); got != want {
						t.Errorf("etcd with TLS: --listen-metrics-urls = %q, want %q for the probes", got, want)
					}
				}
				checkProbe(t, c, "liveness", c.LivenessProbe, "/livez", port)
				checkProbe(t, c, "readiness", c.ReadinessProbe, "/readyz", port)
				// Until a member has joined a quorum it answers no HTTP at
				// all; without a startup probe liveness would kill it.
				checkProbe(t, c, "startup", c.StartupProbe, "/livez", port)
			},
		},
		{
			name: "workload selectors match their pod templates",
			check: func(t *testing.T, m *manifests) {
				for _, o := range m.resources {
					var sel map[string]string
					var tmpl map[string]string
					switch w := o.obj.(type) {
					case *appsv1.Deployment:
						sel, tmpl = w.Spec.Selector.MatchLabels, w.Spec.Template.Labels
					case *appsv1.StatefulSet:
						sel, tmpl = w.Spec.Selector.MatchLabels, w.Spec.Template.Labels
					default:
						continue
					}
					if len(sel) == 0 || !labels.SelectorFromSet(sel).Matches(labels.Set(tmpl)) {
						t.Errorf("%s: selector %v does not match template labels %v", o.where, sel, tmpl)
					}
				}
			},
		},
		{
			name: "app spreads one pod a node, and a drain keeps all but one",
			check: func(t *testing.T, m *manifests) {
				d := deployment(t, m, appName)
				checkSpreadAndPDB(t, m, appName, &d.Spec.Template, replicas(d.Spec.Replicas))
			},
		},
		{
			name: "etcd spreads one pod a node, and a drain keeps all but one",
			etcd: true,
			check: func(t *testing.T, m *manifests) {
				st := statefulSet(t, m, etcdName)
				checkSpreadAndPDB(t, m, etcdName, &st.Spec.Template, replicas(st.Spec.Replicas))
			},
		},
		{
			name: "images are the locally built ones, never pulled when present",
			check: func(t *testing.T, m *manifests) {
				type image struct {
					spec      *corev1.PodSpec
					container string
					image     string
				}
				images := []image{{&deployment(t, m, appName).Spec.Template.Spec, appContainer, "immortald:dev"}}
				if withEtcd {
					images = append(images, image{&statefulSet(t, m, etcdName).Spec.Template.Spec, etcdContainer, "immortald-etcd:dev"})
				}
				for _, tc := range images {
					c := container(t, tc.spec, tc.container)
					if c.Image != tc.image || c.ImagePullPolicy != corev1.PullIfNotPresent {
						t.Errorf("container %q: image %q pull %q, want %q pull IfNotPresent", c.Name, c.Image, c.ImagePullPolicy, tc.image)
					}
				}
			},
		},
		{
			name: "Jobs run restricted too",
			check: func(t *testing.T, m *manifests) {
				for _, o := range m.resources {
					if j, ok := o.obj.(*batchv1.Job); ok {
						t.Run(j.Name, func(t *testing.T) { checkRestricted(t, &j.Spec.Template.Spec) })
					}
				}
			},
		},
		{
			name: "TLS files come from mounted Secrets that uid 65532 can read",
			check: func(t *testing.T, m *manifests) {
				specs := []*corev1.PodSpec{&deployment(t, m, appName).Spec.Template.Spec}
				if withEtcd {
					specs = append(specs, &statefulSet(t, m, etcdName).Spec.Template.Spec)
				}
				for _, spec := range specs {
					checkTLSFiles(t, spec)
				}
			},
		},
	}
	for _, tt := range tests {
		if tt.etcd && !withEtcd {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, m)
		})
	}
}

// checkRestricted checks the Pod Security "restricted" essentials on every
// container, with container settings overriding pod settings.
func checkRestricted(t *testing.T, spec *corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		if !pick(sc.RunAsNonRoot, psc.RunAsNonRoot, false) {
			t.Errorf("container %q: runAsNonRoot is not true", c.Name)
		}
		if uid := pick(sc.RunAsUser, psc.RunAsUser, 0); uid != appUID {
			t.Errorf("container %q: runAsUser = %d, want %d", c.Name, uid, appUID)
		}
		if gid := pick(sc.RunAsGroup, psc.RunAsGroup, 0); gid != appUID {
			t.Errorf("container %q: runAsGroup = %d, want %d", c.Name, gid, appUID)
		}
		if !pick(sc.ReadOnlyRootFilesystem, nil, false) {
			t.Errorf("container %q: readOnlyRootFilesystem is not true", c.Name)
		}
		if pick(sc.AllowPrivilegeEscalation, nil, true) {
			t.Errorf("container %q: allowPrivilegeEscalation is not false", c.Name)
		}
		if pick(sc.Privileged, nil, false) {
			t.Errorf("container %q: privileged", c.Name)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("container %q: capabilities do not drop ALL", c.Name)
		} else if len(sc.Capabilities.Add) > 0 {
			t.Errorf("container %q: adds capabilities %v", c.Name, sc.Capabilities.Add)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("container %q: seccompProfile is not RuntimeDefault", c.Name)
		}
	}
}

// pick returns the container value, else the pod value, else def.
func pick[T any](container, pod *T, def T) T {
	if container != nil {
		return *container
	}
	if pod != nil {
		return *pod
	}
	return def
}

func checkEnvFromPodName(t *testing.T, c *corev1.Container, name string) {
	t.Helper()
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
			t.Errorf("container %q: env %s does not come from fieldRef metadata.name", c.Name, name)
		}
		return
	}
	t.Errorf("container %q: no env %s", c.Name, name)
}

func envValue(t *testing.T, c *corev1.Container, name string) string {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	t.Fatalf("container %q: no env %s", c.Name, name)
	return ""
}

// checkProbe checks that a probe is an HTTP GET of path on port, resolving a
// named port through the container's ports.
func checkProbe(t *testing.T, c *corev1.Container, kind string, p *corev1.Probe, path string, port int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("container %q: no %s httpGet probe", c.Name, kind)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("container %q: %s probe path = %q, want %q", c.Name, kind, p.HTTPGet.Path, path)
	}
	if got := resolvePort(c, p.HTTPGet.Port); got != port {
		t.Errorf("container %q: %s probe port %s resolves to %d, want %d", c.Name, kind, p.HTTPGet.Port.String(), got, port)
	}
}

func resolvePort(c *corev1.Container, port intstr.IntOrString) int32 {
	if port.Type == intstr.Int {
		return port.IntVal
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return p.ContainerPort
		}
	}
	return 0
}

// flagValue returns the value of --flag=value or --flag value in args.
func flagValue(args []string, flag string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v, true
		}
		if a == flag && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// etcdScheme is the scheme of the URLs an etcd container serves: https when
// it has a server certificate (--cert-file), else http.
func etcdScheme(c *corev1.Container) string {
	if _, ok := flagValue(c.Args, "--cert-file"); ok {
		return "https"
	}
	return "http"
}

// checkTLSFiles checks every certificate and key file a container is told
// to read (immortald's IMMORTALD_ETCD_CACERT, _CERT and _KEY, etcd's
// --*-file flags): each must be under a read-only mount of a Secret volume,
// whose root-owned files uid 65532 reads through fsGroup 65532 and a mode
// that lets the group read.
func checkTLSFiles(t *testing.T, spec *corev1.PodSpec) {
	t.Helper()
	vols := map[string]*corev1.SecretVolumeSource{}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			vols[v.Name] = v.Secret
		}
	}
	for _, c := range spec.Containers {
		files := map[string]string{}
		for _, e := range c.Env {
			if slices.Contains([]string{"IMMORTALD_ETCD_CACERT", "IMMORTALD_ETCD_CERT", "IMMORTALD_ETCD_KEY"}, e.Name) {
				files[e.Name] = e.Value
			}
		}
		for _, a := range c.Args {
			if flag, v, ok := strings.Cut(a, "="); ok && strings.HasSuffix(flag, "-file") && strings.HasPrefix(flag, "--") {
				files[flag] = v
			}
		}
		for _, what := range slices.Sorted(maps.Keys(files)) {
			path := files[what]
			var from *corev1.SecretVolumeSource
			for _, vm := range c.VolumeMounts {
				if s, ok := vols[vm.Name]; ok && vm.ReadOnly && isUnder(path, vm.MountPath) {
					from = s
				}
			}
			switch {
			case from == nil:
				t.Errorf("container %q: %s=%s is not on a read-only Secret volume", c.Name, what, path)
			case spec.SecurityContext == nil || pick(spec.SecurityContext.FSGroup, nil, 0) != appUID:
				t.Errorf("container %q: %s comes from Secret %q, but the pod's fsGroup is not %d: uid %d cannot read it", c.Name, what, from.SecretName, appUID, appUID)
			case from.DefaultMode != nil && *from.DefaultMode&0o040 == 0:
				t.Errorf("container %q: Secret %q has mode %#o, which its group cannot read", c.Name, from.SecretName, *from.DefaultMode)
			}
		}
	}
}

func isUnder(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func replicas(r *int32) int {
	if r == nil {
		return 1 // the API default
	}
	return int(*r)
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

func find[T runtime.Object](t *testing.T, m *manifests, kind, name string) T {
	t.Helper()
	for _, o := range m.resources {
		if k, n := kindName(o.obj); k == kind && n == name {
			if v, ok := o.obj.(T); ok {
				return v
			}
		}
	}
	t.Fatalf("no %s %q under deploy/", kind, name)
	var zero T
	return zero
}

func deployment(t *testing.T, m *manifests, name string) *appsv1.Deployment {
	t.Helper()
	return find[*appsv1.Deployment](t, m, "Deployment", name)
}

func statefulSet(t *testing.T, m *manifests, name string) *appsv1.StatefulSet {
	t.Helper()
	return find[*appsv1.StatefulSet](t, m, "StatefulSet", name)
}

func service(t *testing.T, m *manifests, name string) *corev1.Service {
	t.Helper()
	return find[*corev1.Service](t, m, "Service", name)
}

func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

// TestKustomizeBuildsEveryKustomization runs real kustomize (`kubectl
// kustomize`) over every kustomization under deploy/: each must build (a base
// that contains its own overlay does not), every object it yields must decode
// strictly, and the objects that the invariants are about must come out of
// each kustomization that holds the app with what the cluster needs: the
// member id from the pod name and the advertised address from the pod IP, and
// every invariant of TestInvariants (overlays patch the base: the patched
// objects must still keep them). Without kubectl the test is skipped, and
// fails under CI.
func TestKustomizeBuildsEveryKustomization(t *testing.T) {
	kubectl := kubectlPath(t)
	m := loadManifests(t)
	for _, kpath := range slices.Sorted(maps.Keys(m.kustomizations)) {
		dir := filepath.Dir(kpath)
		t.Run(dir, func(t *testing.T) {
			built := decodeBuild(t, "kubectl kustomize "+dir, kustomize(t, kubectl, dir))
			checkBuild(t, built)
		})
	}
}

// TestKindTLSOverlayIsTheKindOverlay: overlays/kind-tls builds on
// overlays/tls and repeats overlays/kind's settings (kustomize reads no
// file outside a kustomization's directory); both kind builds must give
// the members and etcd the same replicas, images and resources.
func TestKindTLSOverlayIsTheKindOverlay(t *testing.T) {
	kubectl := kubectlPath(t)
	kind := decodeBuild(t, "kubectl kustomize overlays/kind", kustomize(t, kubectl, "overlays/kind"))
	kindTLS := decodeBuild(t, "kubectl kustomize overlays/kind-tls", kustomize(t, kubectl, "overlays/kind-tls"))
	// settings are what overlays/kind sets on a workload.
	settings := func(replicas *int32, spec *corev1.PodSpec) string {
		out := "replicas " + ptrString(replicas)
		for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
			out += fmt.Sprintf("; %s: image %s, resources %v", c.Name, c.Image, c.Resources)
		}
		return out
	}
	d, dTLS := deployment(t, kind, "immortald"), deployment(t, kindTLS, "immortald")
	if a, b := settings(d.Spec.Replicas, &d.Spec.Template.Spec), settings(dTLS.Spec.Replicas, &dTLS.Spec.Template.Spec); a != b {
		t.Errorf("Deployment immortald differs between overlays/kind and overlays/kind-tls:\n kind:     %s\n kind-tls: %s", a, b)
	}
	e, eTLS := statefulSet(t, kind, "etcd"), statefulSet(t, kindTLS, "etcd")
	if a, b := settings(e.Spec.Replicas, &e.Spec.Template.Spec), settings(eTLS.Spec.Replicas, &eTLS.Spec.Template.Spec); a != b {
		t.Errorf("StatefulSet etcd differs between overlays/kind and overlays/kind-tls:\n kind:     %s\n kind-tls: %s", a, b)
	}
}

// kubectlPath finds kubectl; without it the test is skipped, and fails
// under CI.
func kubectlPath(t *testing.T) string {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("kubectl not found (CI is set, so this is a failure): %v", err)
		}
		t.Skipf("kubectl not found: %v", err)
	}
	return kubectl
}

// kustomize returns what `kubectl kustomize dir` builds.
func kustomize(t *testing.T, kubectl, dir string) []byte {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return stdout.Bytes()
}

// decodeBuild decodes every document of what a tool built (kustomize, helm
// template) strictly; each one that does not decode fails t.
func decodeBuild(t *testing.T, what string, out []byte) *manifests {
	t.Helper()
	docs, err := splitDocuments(out)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(docs) == 0 {
		t.Fatalf("%s built nothing", what)
	}
	m := &manifests{}
	var kinds []string
	for i, doc := range docs {
		obj, err := decodeStrict(doc)
		if err != nil {
			t.Errorf("document %d of %s: %v", i, what, err)
			continue
		}
		kind, name := kindName(obj)
		kinds = append(kinds, kind+"/"+name)
		m.resources = append(m.resources, object{where: fmt.Sprintf("%s#%d", what, i), obj: obj})
	}
	t.Logf("%s: %s", what, strings.Join(kinds, ", "))
	return m
}

// checkBuild checks a build that holds the app: the member id from the pod
// name, the advertised pod IP and every invariant (those of etcd when the
// build has the etcd StatefulSet).
func checkBuild(t *testing.T, m *manifests) {
	t.Helper()
	if !hasObject(m, "Deployment", appName) {
		return
	}
	c := container(t, &deployment(t, m, appName).Spec.Template.Spec, appContainer)
	checkEnvFromPodName(t, c, "IMMORTALD_ID")
	checkAdvertisedPodIP(t, c)
	checkInvariants(t, m, hasObject(m, "StatefulSet", etcdName))
}

func hasObject(m *manifests, kind, name string) bool {
	for _, o := range m.resources {
		if k, n := kindName(o.obj); k == kind && n == name {
			return true
		}
	}
	return false
}

// checkAdvertisedPodIP checks that the member advertises the pod IP (from the
// downward API) and the HTTP port.
func checkAdvertisedPodIP(t *testing.T, c *corev1.Container) {
	t.Helper()
	podIPVar := ""
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" {
			podIPVar = e.Name
		}
		if e.Name != "IMMORTALD_ADVERTISE_ADDR" {
			continue
		}
		if want := fmt.Sprintf("$(%s):%d", podIPVar, appHTTPPort); podIPVar == "" || e.Value != want {
			t.Errorf("container %q: IMMORTALD_ADVERTISE_ADDR = %q, want %q after an env var from status.podIP", c.Name, e.Value, "$(POD_IP):8080")
		}
		return
	}
	t.Errorf("container %q: no IMMORTALD_ADVERTISE_ADDR: members would advertise an address peers cannot reach", c.Name)
}

// checkSpreadAndPDB: the workload name (the immortald Deployment, the etcd
// StatefulSet), whose pods are spec and which runs n of them, spreads its
// pods one a node (kubernetes.io/hostname, maxSkew 1, a hard constraint
// that leaves cordoned and tainted nodes out), and has a
// PodDisruptionBudget over the same pods that lets a drain take one at a
// time: make e2e-kind drains a node and loses one on that promise.
func checkSpreadAndPDB(t *testing.T, m *manifests, name string, spec *corev1.PodTemplateSpec, n int) {
	var found bool
	for _, c := range spec.Spec.TopologySpreadConstraints {
		if c.TopologyKey != corev1.LabelHostname {
			continue
		}
		found = true
		sel, err := metav1.LabelSelectorAsSelector(c.LabelSelector)
		if err != nil || c.LabelSelector == nil || !sel.Matches(labels.Set(spec.Labels)) {
			t.Errorf("%s: the hostname spread's selector %v does not select its pods %v", name, c.LabelSelector, spec.Labels)
		}
		if c.MaxSkew != 1 || c.WhenUnsatisfiable != corev1.DoNotSchedule {
			t.Errorf("%s: hostname spread maxSkew %d %s, want 1 DoNotSchedule", name, c.MaxSkew, c.WhenUnsatisfiable)
		}
		if c.NodeTaintsPolicy == nil || *c.NodeTaintsPolicy != corev1.NodeInclusionPolicyHonor {
			t.Errorf("%s: nodeTaintsPolicy %s, want Honor (a cordoned node would block the drain's replacement pod)", name, ptrString(c.NodeTaintsPolicy))
		}
	}
	if !found {
		t.Errorf("%s: no topologySpreadConstraint on %s", name, corev1.LabelHostname)
	}
	pdb := find[*policyv1.PodDisruptionBudget](t, m, "PodDisruptionBudget", name)
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || pdb.Spec.Selector == nil || !sel.Matches(labels.Set(spec.Labels)) {
		t.Errorf("PodDisruptionBudget %s: selector %v does not select the pods %v", name, pdb.Spec.Selector, spec.Labels)
	}
	str := func(v *intstr.IntOrString) string {
		if v == nil {
			return "unset"
		}
		return v.String()
	}
	if mu := pdb.Spec.MaxUnavailable; pdb.Spec.MinAvailable != nil || mu == nil || mu.String() != "1" {
		t.Errorf("PodDisruptionBudget %s: minAvailable %s maxUnavailable %s, want maxUnavailable 1 alone (of %d)",
			name, str(pdb.Spec.MinAvailable), str(mu), n)
	}
}
