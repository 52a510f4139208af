package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Binaries are the programs a run starts: immortald, etcd, etcdctl, and
// the counter (cmd/counter), the command kind of the exec phase.
type Binaries struct{ Immortald, Etcd, Etcdctl, Counter string }

// build builds whichever binaries were not given, into cfg.binDir. go build
// skips the link when the binary there is up to date.
func build(ctx context.Context, cfg config) (Binaries, error) {
	bins := cfg.bins
	root, err := moduleRoot(ctx)
	if err != nil {
		return bins, err
	}
	if err := os.MkdirAll(cfg.binDir, 0o755); err != nil {
		return bins, err
	}
	for _, t := range []struct {
		dst  *string
		name string
		pkg  string
	}{
		{&bins.Immortald, "immortald", "./cmd/immortald"},
		{&bins.Etcd, "etcd", "go.etcd.io/etcd/server/v3"},
		{&bins.Etcdctl, "etcdctl", "go.etcd.io/etcd/etcdctl/v3"},
		{&bins.Counter, "counter", "./cmd/counter"},
	} {
		if *t.dst != "" {
			abs, err := filepath.Abs(*t.dst)
			if err != nil {
				return bins, err
			}
			*t.dst = abs
			continue
		}
		out := filepath.Join(cfg.binDir, t.name)
		t0 := time.Now()
		fmt.Fprintf(logw, "immortalbench: go build -o %s %s\n", out, t.pkg)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, t.pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return bins, fmt.Errorf("go build %s: %v\n%s", t.pkg, err, b)
		}
		if d := time.Since(t0); d > 5*time.Second {
			fmt.Fprintf(logw, "immortalbench:   built %s in %s\n", t.name, d.Round(100*time.Millisecond))
		}
		*t.dst = out
	}
	return bins, nil
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	b, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(b))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the immortald module: run from the repository")
	}
	return filepath.Dir(mod), nil
}

// versionOf runs bin with arg and returns the line that starts with
// prefix (without it), or the first line.
func versionOf(bin, arg, prefix string) string {
	b, err := exec.Command(bin, arg).CombinedOutput()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if prefix == "" {
			return strings.TrimSpace(line)
		}
		if v, ok := strings.CutPrefix(line, prefix); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
