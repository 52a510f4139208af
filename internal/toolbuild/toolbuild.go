// Package toolbuild builds a command that tests need from a tools module of
// its own (a directory under hack/tools with a go.mod and go.sum that pin the
// command apart from the daemon's go.mod, so that the daemon does not take in
// its dependencies), once, and keeps the binary in the user's cache
// directory. The binary's name holds a hash of that go.mod and go.sum, the Go
// version, GOOS, GOARCH and the build flags, so a changed pin builds anew
// and every later run of any test reuses the binary.
package toolbuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tool is one command of a tools module.
type Tool struct {
	// Name is the binary's name, before the hash.
	Name string
	// Module is the tools module's directory, relative to the repository
	// root.
	Module string
	// Package is the command's import path.
	Package string
	// Flags are more go build flags (-tags, -ldflags, ...).
	Flags []string
	// EnvVar, when set in the environment, names a binary to use instead.
	EnvVar string
}

// Helm is helm, from hack/tools/helm, with its version string set as its
// release build sets it.
var Helm = Tool{
	Name:    "helm",
	Module:  "hack/tools/helm",
	Package: "helm.sh/helm/v4/cmd/helm",
	Flags:   []string{"-ldflags=-s -w -X helm.sh/helm/v4/internal/version.version=v4.3.2"},
	EnvVar:  "IMMORTALD_HELM",
}

// Promtool is Prometheus's promtool, from hack/tools/promtool, without the
// service discovery plugins (AWS, Azure, GCE and the others), which
// checking rules does not need: it halves the first build (about 4.5
// instead of 9 minutes on 2 cores).
var Promtool = Tool{
	Name:    "promtool",
	Module:  "hack/tools/promtool",
	Package: "github.com/prometheus/prometheus/cmd/promtool",
	Flags:   []string{"-tags=remove_all_sd", "-ldflags=-s -w"},
	EnvVar:  "IMMORTALD_PROMTOOL",
}

// Build returns the path of the tool's binary: $EnvVar if set, else the
// cached binary of the current pin, else a new build (go build with the
// module's go.mod and go.sum as they are, -mod=readonly), which must end
// before ctx does. root is the repository root. logf is told which it was
// and how long a build took. A failed build returns go build's output.
func (tl Tool) Build(ctx context.Context, root string, logf func(string, ...any)) (string, error) {
	if p := os.Getenv(tl.EnvVar); tl.EnvVar != "" && p != "" {
		logf("%s: %s (from %s)", tl.Name, p, tl.EnvVar)
		return p, nil
	}
	mod := filepath.Join(root, filepath.FromSlash(tl.Module))
	env, err := exec.CommandContext(ctx, "go", "env", "GOVERSION", "GOOS", "GOARCH").Output()
	if err != nil {
		return "", fmt.Errorf("go env: %v", err)
	}
	args := append([]string{"build", "-C", mod, "-mod=readonly", "-trimpath"}, tl.Flags...)
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(mod, f))
		if err != nil {
			return "", fmt.Errorf("the %s tools module: %v", tl.Name, err)
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%s\n%s %s\n", strings.Join(strings.Fields(string(env)), " "), tl.Package, strings.Join(args[3:], "\x00"))
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "immortald")
	bin := filepath.Join(dir, tl.Name+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		logf("%s: %s (cached)", tl.Name, bin)
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// A temporary name, then a rename: test binaries that build at once
	// never run a half-written file.
	tmp := fmt.Sprintf("%s.tmp%d", bin, os.Getpid())
	cmd := exec.CommandContext(ctx, "go", append(args, "-o", tmp, tl.Package)...)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(t0).Round(100 * time.Millisecond)
	if err != nil {
		_ = os.Remove(tmp)
		hint := ""
		if ctx.Err() != nil {
			hint = "the test's -timeout ended before the build could (a first build takes minutes: make tools runs it with a longer one); "
		}
		return "", fmt.Errorf("building %s from %s failed after %v (go %s): %v\n"+
			"%sits modules come from the module cache or the Go module proxy (go env GOPROXY): where the proxy cannot be reached, "+
			"run `go -C %s mod download` where it can, or set %s to a %s binary.\n%s",
			tl.Name, tl.Module, took, strings.Join(args, " "), err, hint, tl.Module, tl.EnvVar, tl.Name, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	logf("%s: built %s in %v", tl.Name, bin, took)
	return bin, nil
}

// built holds each tool's build of this test binary, by name.
var built sync.Map // string -> *buildOnce

type buildOnce struct {
	once sync.Once
	bin  string
	err  error
}

// ForTest returns the tool's binary for the tests of this test binary: Build
// on the first call (root is the repository root), which must end 30 s
// before t's deadline, and the same answer after. A build that fails fails
// t with go build's output; it is never a skip.
func (tl Tool) ForTest(t *testing.T, root string) string {
	t.Helper()
	v, _ := built.LoadOrStore(tl.Name, &buildOnce{})
	b := v.(*buildOnce)
	b.once.Do(func() {
		ctx := context.Background()
		if d, ok := t.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, d.Add(-30*time.Second))
			defer cancel()
		}
		b.bin, b.err = tl.Build(ctx, root, t.Logf)
	})
	if b.err != nil {
		t.Fatalf("%s: %v", tl.Name, b.err)
	}
	return b.bin
}

// HelmEnv is the environment for running helm with home as its only
// state: the process's environment without any HELM_* variable or
// KUBECONFIG, and helm's cache, config and data homes under home. So no
// repository, plugin, registry login or kubeconfig of the machine's is read.
func HelmEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "HELM_") || k == "KUBECONFIG" {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
}
