//go:build e2e

package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// A secure cluster (Options.Secure) runs etcd with TLS on its client and
// peer ports, client certificates required, and auth on; the members
// connect as etcd user immortald, whose role may read and write the prefix
// alone (the README's commands, run with etcdctl in an etcd container).
// Certificates come from cmd/devcerts, as an operator makes them; they are
// mounted read-only at /certs in every container.

const (
	secureDir      = "/certs"
	securePassword = "e2e-Pa55-word-7c1d"
)

// secureFiles makes the certificates and the password file in a directory
// the containers (uid 65532) can read.
func secureFiles(t *testing.T, etcdNames []string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "immortald-e2e-certs")
	must(t, err)
	t.Cleanup(func() {
		if os.Getenv("IMMORTALD_E2E_KEEP") != "" {
			t.Logf("IMMORTALD_E2E_KEEP: leaving the certificates in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	root, err := filepath.Abs("..")
	must(t, err)
	runT(t, 5*time.Minute, "go", "-C", root, "run", "./cmd/devcerts", "-out", dir, "-hosts", strings.Join(etcdNames, ","), "-kubernetes-names=false")
	must(t, os.WriteFile(filepath.Join(dir, "password"), []byte(securePassword+"\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "wrong-password"), []byte("not-"+securePassword+"\n"), 0o600))
	// Test files only: readable by the containers' user.
	must(t, os.Chmod(dir, 0o755))
	entries, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range entries {
		must(t, os.Chmod(filepath.Join(dir, e.Name()), 0o644))
	}
	return dir
}

// secureEtcdArgs are the TLS flags of etcd member name.
func secureEtcdArgs() []string {
	return []string{
		"--client-cert-auth", "--trusted-ca-file", secureDir + "/ca.crt",
		"--cert-file", secureDir + "/etcd.crt", "--key-file", secureDir + "/etcd.key",
		"--peer-client-cert-auth", "--peer-trusted-ca-file", secureDir + "/ca.crt",
		"--peer-cert-file", secureDir + "/etcd.crt", "--peer-key-file", secureDir + "/etcd.key",
	}
}

// secureMemberEnv are the settings of a member, as a Deployment gives them.
func secureMemberEnv() []string {
	var out []string
	for _, kv := range []string{
		"IMMORTALD_ETCD_CACERT=" + secureDir + "/ca.crt",
		"IMMORTALD_ETCD_CERT=" + secureDir + "/immortald.crt",
		"IMMORTALD_ETCD_KEY=" + secureDir + "/immortald.key",
		"IMMORTALD_ETCD_USER=immortald",
		"IMMORTALD_ETCD_PASSWORD_FILE=" + secureDir + "/password",
	} {
		out = append(out, "-e", kv)
	}
	return out
}

// secureEtcdctlArgs make etcdctl in an etcd container act as root.
func secureEtcdctlArgs() []string {
	return []string{"--endpoints", "https://127.0.0.1:2379", "--cacert", secureDir + "/ca.crt",
		"--cert", secureDir + "/root.crt", "--key", secureDir + "/root.key"}
}

// newSecureEtcdClient is the test's own client: user root by certificate.
func newSecureEtcdClient(dir string, endpoints []string) (*clientv3.Client, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "root.crt"), filepath.Join(dir, "root.key"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("no CA in %s/ca.crt", dir)
	}
	return clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		TLS:                  &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12},
		Logger:               zap.NewNop(),
	})
}

// TestSecure runs the cluster with TLS everywhere, client certificates and
// auth, the members under the least-privilege role: lives start, the CLI
// works in every member, a killed holder's lives fail over, a stopped one's
// are handed off; a wrong password gets one line naming it; no log, CLI
// output or /metrics shows the password or a key.
func TestSecure(t *testing.T) {
	if os.Getenv("IMMORTALD_E2E_BACKEND") == "kind" {
		t.Skip("TestSecure turns auth on itself, on the Docker backend; on kind, TestKindTLS runs deploy/overlays/kind-tls")
	}
	e := setup(t, Options{Secure: true})
	c, chk, o := e.c, e.chk, e.o
	// The README's least-privilege role, then auth on.
	for _, args := range [][]string{
		{"user", "add", "root", "--no-password"},
		{"user", "grant-role", "root", "root"},
		{"role", "add", "immortald"},
		{"role", "grant-permission", "immortald", "--prefix=true", "readwrite", o.Prefix},
		{"user", "add", "immortald", "--new-user-password", securePassword},
		{"user", "grant-role", "immortald", "immortald"},
		{"auth", "enable"},
	} {
		e.etcdctl(args...)
	}
	ids := e.addMembers(3)
	names := lifeNames("S", 30)
	out := cli(t, c, ids[0], "start", names[0])
	if !strings.Contains(out, names[0]+" is wanted") {
		t.Errorf("start %s = %q", names[0], out)
	}
	e.putLives(names[1:])
	chk.WaitRunning(t, names, time.Time{}, 60*time.Second)
	e.settle(names, 60*time.Second)
	e.waitAge(names[:1], 2*time.Second)

	outputs := []string{out}
	for _, id := range ids {
		st := getAge(t, c, id, names[0])
		if st.State != "running" || st.AgeMS < 2000 {
			t.Errorf("get-age %s -o json on %s = %+v, want running, at least 2 s old", names[0], id, st)
		}
		if l := listLives(t, c, id); len(l) != len(names) {
			t.Errorf("ls on %s lists %d lives, want %d", id, len(l), len(names))
		}
		if m := listMembers(t, c, id); len(m) != len(ids) {
			t.Errorf("members on %s lists %d, want %d", id, len(m), len(ids))
		}
		outputs = append(outputs, cli(t, c, id, "ls", "-o", "json"), cli(t, c, id, "members", "-o", "json"), cli(t, c, id, "get-age", names[0], "-o", "json"))
	}

	res, err := c.Exec(ctxT(30*time.Second), ids[0], "ls", "--etcd-password-file", secureDir+"/wrong-password")
	if err == nil || res.Code != 1 {
		t.Errorf("ls with a wrong password: exit %d (%v), want 1", res.Code, err)
	}
	if msg := res.Stderr; strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "authentication failed") || !strings.Contains(msg, `"immortald"`) {
		t.Errorf("ls with a wrong password: stderr %q, want one line naming the authentication failure of user immortald", msg)
	}
	outputs = append(outputs, res.Stdout+res.Stderr)

	victim, held := e.mostLoaded(ids)
	at := time.Now()
	must(t, c.Kill(ctxT(time.Minute), victim))
	chk.Note("killed %s holding %d lives", victim, len(held))
	hs := chk.WaitHandoffs(t, held, at, o.LeaseTTL+30*time.Second)
	fo, loss := e.handoffStats(hs, victim, o.LeaseTTL+2*time.Second, o.CheckpointInterval+500*time.Millisecond)
	e.settle(names, 60*time.Second)
	rest := without(ids, victim)
	stopped, held2 := e.mostLoaded(rest)
	at = time.Now()
	must(t, c.Stop(ctxT(time.Minute), stopped))
	chk.Note("stopped %s holding %d lives", stopped, len(held2))
	hs2 := chk.WaitHandoffs(t, held2, at, 30*time.Second)
	ho, hloss := e.handoffStats(hs2, stopped, 5*time.Second, 500*time.Millisecond)
	e.waitExactlyOnce(names, without(rest, stopped), 30*time.Second)

	for _, id := range ids {
		logs, err := c.Logs(ctxT(30*time.Second), id)
		must(t, err)
		outputs = append(outputs, logs)
	}
	last := without(rest, stopped)[0]
	m, err := c.Metrics(ctxT(30*time.Second), last)
	must(t, err)
	outputs = append(outputs, m)
	keys := secretLines(t, c.(*dockerCluster).certs)
	for i, s := range outputs {
		if strings.Contains(s, securePassword) {
			t.Errorf("output %d shows the password", i)
		}
		if strings.Contains(s, "PRIVATE KEY") {
			t.Errorf("output %d shows a private key", i)
		}
		for _, k := range keys {
			if strings.Contains(s, k) {
				t.Errorf("output %d shows key material", i)
			}
		}
	}
	report(t, "secure", "lives", len(names), "killed_holder_lives", len(held), "failover_ms", fo.Max, "age_loss_ms", loss.Max,
		"stopped_holder_lives", len(held2), "handoff_ms", ho.Max, "handoff_age_loss_ms", hloss.Max)
	chk.Check(t)
}

// secretLines returns the base64 lines of every private key in dir.
func secretLines(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	files, err := filepath.Glob(filepath.Join(dir, "*.key"))
	must(t, err)
	for _, f := range files {
		b, err := os.ReadFile(f)
		must(t, err)
		for _, l := range strings.Split(string(b), "\n") {
			if len(l) > 16 && !strings.HasPrefix(l, "-----") {
				out = append(out, l)
			}
		}
	}
	return out
}
