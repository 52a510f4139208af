package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/devpki"
	"github.com/immortald/immortald/internal/etcdtest"
)

// The tests here run the immortald binary, as an operator would, against a
// real etcd process that serves TLS, checks client certificates and has
// auth enabled, under the least-privilege role of the README.

const (
	prefix   = "/immortals/"
	password = "Tls-test-pa55word-9f3c"
	bound    = 60 * time.Second // generous: a few lease TTLs on a loaded machine
)

var immortald string // the binary under test

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "immortald-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	immortald = filepath.Join(dir, "immortald")
	if out, err := exec.Command("go", "build", "-o", immortald, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// readmeRole runs the README's commands for the least-privilege role.
var readmeRole = [][]string{
	{"role", "add", "immortald"},
	{"role", "grant-permission", "immortald", "--prefix=true", "readwrite", prefix},
	{"user", "add", "immortald", "--new-user-password", password},
	{"user", "grant-role", "immortald", "immortald"},
}

// env is a secured etcd with the role, and the files every command needs.
type env struct {
	t      *testing.T
	s      *etcdtest.SecureServer
	pwFile string
	procs  []*proc
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s := etcdtest.MustStartSecure(t)
	s.MustEnableAuth(t)
	for _, args := range readmeRole {
		s.MustCtl(t, args...)
	}
	e := &env{t: t, s: s, pwFile: filepath.Join(s.Dir, "password")}
	if err := os.WriteFile(e.pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range e.procs {
			p.kill()
		}
		// Nothing any process printed holds a secret.
		for _, p := range e.procs {
			noSecret(t, p.name+" stderr", p.stderr.String(), s.Dir)
			noSecret(t, p.name+" stdout", p.stdout.String(), s.Dir)
		}
	})
	return e
}

// certs issues a client certificate for the etcd user immortald into its
// own directory (so it can be replaced for one member alone).
func (e *env) certs(name string, ca *devpki.CA) (cert, key string) {
	e.t.Helper()
	dir := filepath.Join(e.s.Dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	p, err := ca.Issue(devpki.Leaf{CommonName: "immortald", Client: true})
	if err != nil {
		e.t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := p.Write(cert, key); err != nil {
		e.t.Fatal(err)
	}
	return cert, key
}

func (e *env) flags(cert, key string) []string {
	return []string{"--etcd-endpoints", e.s.Endpoint, "--etcd-cacert", e.s.CAFile, "--etcd-cert", cert, "--etcd-key", key, "--etcd-user", "immortald"}
}

// proc is an immortald process.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *syncBuf
	done           chan struct{}
	code           int
	http           string
}

type syncBuf struct {
	mu chan struct{}
	b  bytes.Buffer
}

func newBuf() *syncBuf { b := &syncBuf{mu: make(chan struct{}, 1)}; return b }
func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.b.Write(p)
}
func (b *syncBuf) String() string {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.b.String()
}

// start starts immortald with args; the password comes from the file
// unless extraEnv sets IMMORTALD_ETCD_PASSWORD.
func (e *env) start(name string, args []string, extraEnv ...string) *proc {
	e.t.Helper()
	p := &proc{name: name, stdout: newBuf(), stderr: newBuf(), done: make(chan struct{})}
	p.cmd = exec.Command(immortald, args...)
	p.cmd.Env = append(os.Environ(), extraEnv...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	e.procs = append(e.procs, p)
	return p
}

// member starts `immortald run` with its own certificate files.
func (e *env) member(id, cert, key string) *proc {
	e.t.Helper()
	addr := etcdtest.FreeAddr(e.t)
	args := append([]string{"run", "--id", id, "--lease-ttl", "2s", "--checkpoint-interval", "200ms",
		"--http-addr", addr, "--log-format", "json", "--etcd-password-file", e.pwFile}, e.flags(cert, key)...)
	p := e.start(id, args)
	p.http = addr
	return p
}

// cli runs a client command with the password in the environment.
func (e *env) cli(cert, key string, args ...string) (string, string, int) {
	e.t.Helper()
	p := e.start("cli "+strings.Join(args, " "), append(args, e.flags(cert, key)...), "IMMORTALD_ETCD_PASSWORD="+password)
	select {
	case <-p.done:
	case <-time.After(bound):
		e.t.Fatalf("immortald %v did not return within %s", args, bound)
	}
	return p.stdout.String(), p.stderr.String(), p.code
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		p.signal(syscall.SIGKILL)
		<-p.done
	}
}

// wait waits for p to exit and returns its exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(bound):
		t.Fatalf("%s did not exit within %s; stderr:\n%s", p.name, bound, p.stderr)
		return 0
	}
}

type status struct {
	Name        string `json:"name"`
	State       string `json:"state"`
	AgeMS       int64  `json:"age_ms"`
	Holder      string `json:"holder"`
	Incarnation int64  `json:"incarnation"`
}

// waitLife polls get-age -o json (under the role) until cond holds.
func (e *env) waitLife(cert, key, name, what string, cond func(status) bool) status {
	e.t.Helper()
	deadline := time.Now().Add(bound)
	var last status
	var lastOut string
	for time.Now().Before(deadline) {
		out, errOut, code := e.cli(cert, key, "get-age", name, "-o", "json")
		lastOut = out + errOut
		if code == 0 && json.Unmarshal([]byte(out), &last) == nil && cond(last) {
			return last
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("%s not %s within %s; last: %s", name, what, bound, lastOut)
	return last
}

func metric(t *testing.T, addr, name string) float64 {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func metricsText(t *testing.T, addr string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestSecureCluster runs two members and the CLI under the least-privilege
// role (readwrite on the prefix alone) against a TLS etcd that checks
// client certificates: lives start, hand off on SIGTERM, fail over on
// SIGKILL; every command works; then the role loses its permission and
// both members stop their lives and exit saying why.
func TestSecureCluster(t *testing.T) {
	e := newEnv(t)
	cliCert, cliKey := e.certs("cli", e.s.CA)
	c1, k1 := e.certs("m1", e.s.CA)
	c2, k2 := e.certs("m2", e.s.CA)
	m := map[string]*proc{"m1": e.member("m1", c1, k1), "m2": e.member("m2", c2, k2)}
	certOf := map[string][2]string{"m1": {c1, k1}, "m2": {c2, k2}}

	for _, name := range []string{"Adam", "Eve"} {
		out, errOut, code := e.cli(cliCert, cliKey, "start", name)
		if code != 0 || !strings.Contains(out, name+" is wanted") {
			t.Fatalf("start %s = %d, %q %q", name, code, out, errOut)
		}
	}
	adam := e.waitLife(cliCert, cliKey, "Adam", "running", func(s status) bool { return s.State == "running" && s.AgeMS >= 500 })
	e.waitLife(cliCert, cliKey, "Eve", "running", func(s status) bool { return s.State == "running" })

	// Every read command works under the role.
	out, errOut, code := e.cli(cliCert, cliKey, "ls", "-o", "json")
	if code != 0 || !strings.Contains(out, `"Adam"`) || !strings.Contains(out, `"Eve"`) {
		t.Fatalf("ls = %d, %q %q", code, out, errOut)
	}
	out, errOut, code = e.cli(cliCert, cliKey, "members", "-o", "json")
	if code != 0 || !strings.Contains(out, `"m1"`) || !strings.Contains(out, `"m2"`) {
		t.Fatalf("members = %d, %q %q", code, out, errOut)
	}
	out, errOut, code = e.cli(cliCert, cliKey, "stop", "Eve")
	if code != 0 || !strings.Contains(out, "Eve is ended") {
		t.Fatalf("stop Eve = %d, %q %q", code, out, errOut)
	}

	// Handoff: SIGTERM the holder; the other member resumes Adam.
	holder, other := adam.Holder, map[string]string{"m1": "m2", "m2": "m1"}[adam.Holder]
	m[holder].signal(syscall.SIGTERM)
	if code := m[holder].wait(t); code != 0 {
		t.Fatalf("%s exited %d after SIGTERM; stderr:\n%s", holder, code, m[holder].stderr)
	}
	handed := e.waitLife(cliCert, cliKey, "Adam", "handed off to "+other, func(s status) bool {
		return s.State == "running" && s.Holder == other && s.Incarnation > adam.Incarnation
	})
	if handed.AgeMS < adam.AgeMS {
		t.Errorf("age went back over the handoff: %d ms, then %d ms", adam.AgeMS, handed.AgeMS)
	}

	// Failover: the first member comes back, then the holder is killed.
	m[holder] = e.member(holder, certOf[holder][0], certOf[holder][1])
	waitMetric(t, m[holder].http, "immortald_heartbeats_total", func(v float64) bool { return v >= 3 })
	cur := e.waitLife(cliCert, cliKey, "Adam", "running", func(s status) bool { return s.State == "running" })
	survivor := other
	if cur.Holder == other {
		survivor = holder
	}
	m[cur.Holder].signal(syscall.SIGKILL)
	m[cur.Holder].wait(t)
	failed := e.waitLife(cliCert, cliKey, "Adam", "failed over to "+survivor, func(s status) bool {
		return s.State == "running" && s.Holder == survivor && s.Incarnation > cur.Incarnation
	})
	t.Logf("Adam: incarnation %d on %s, handed off to %s, failed over to %s (incarnation %d)", adam.Incarnation, adam.Holder, handed.Holder, failed.Holder, failed.Incarnation)

	// Nothing secret in /metrics either.
	noSecret(t, "/metrics", metricsText(t, m[survivor].http), e.s.Dir)

	// Revoke the role's permission: the running member stops its lives and
	// exits, naming the cause.
	e.s.MustCtl(t, "role", "revoke-permission", "immortald", "--prefix=true", prefix)
	if code := m[survivor].wait(t); code != 1 {
		t.Errorf("%s exited %d after its permission was revoked, want 1", survivor, code)
	}
	stderr := m[survivor].stderr.String()
	for _, want := range []string{"stopping every life", "permission denied on " + prefix, "etcdctl role grant-permission immortald --prefix=true readwrite " + prefix} {
		if !strings.Contains(stderr, want) {
			t.Errorf("%s's stderr does not say %q:\n%s", survivor, want, stderr)
		}
	}
	if !regexp.MustCompile(`(?m)^immortald: etcd at \S+: permission denied on /immortals/`).MatchString(stderr) {
		t.Errorf("%s's last line does not name the cause:\n%s", survivor, stderr)
	}
	// A new member under the revoked role exits at start, with one line.
	p := e.member("m3", c1, k1)
	if code := p.wait(t); code != 1 {
		t.Errorf("m3 exited %d, want 1", code)
	}
	if got := p.stderr.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, "permission denied on "+prefix) {
		t.Errorf("m3 stderr = %q, want one line naming the permission on %s", got, prefix)
	}
}

// TestSecureRefusals starts members whose credentials are wrong: each
// exits 1 at start with one line naming the cause, and the CLI says the
// same.
func TestSecureRefusals(t *testing.T) {
	e := newEnv(t)
	cert, key := e.certs("ok", e.s.CA)
	e.s.MustCtl(t, "role", "add", "other")
	e.s.MustCtl(t, "role", "grant-permission", "other", "--prefix=true", "readwrite", "/other/")
	e.s.MustCtl(t, "user", "add", "other", "--new-user-password", password)
	e.s.MustCtl(t, "user", "grant-role", "other", "other")
	wrongPw := filepath.Join(e.s.Dir, "wrong-password")
	if err := os.WriteFile(wrongPw, []byte("not-"+password), 0o600); err != nil {
		t.Fatal(err)
	}
	otherCA, err := devpki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	wrongCA := filepath.Join(e.s.Dir, "wrong-ca.crt")
	if err := devpki.WriteFile(wrongCA, otherCA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	expCert, expKey := e.s.MustLeaf(t, "expired", devpki.Leaf{CommonName: "immortald", Client: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})

	tests := []struct {
		name string
		args []string // replace the flags of the same name
		code int
		want []string
	}{
		{name: "wrong password", args: []string{"--etcd-password-file", wrongPw}, code: 1, want: []string{"authentication failed", `"immortald"`}},
		{name: "wrong CA", args: []string{"--etcd-cacert", wrongCA}, code: 1, want: []string{"TLS", "not signed by a CA in --etcd-cacert " + wrongCA}},
		{name: "expired certificate", args: []string{"--etcd-cert", expCert, "--etcd-key", expKey}, code: 2, want: []string{"--etcd-cert " + expCert, "expired at"}},
		{name: "role outside the prefix", args: []string{"--etcd-user", "other"}, code: 1, want: []string{"permission denied on /immortals/", `"other"`, "etcdctl user grant-role other immortald"}},
		{name: "CA with http", args: []string{"--etcd-endpoints", strings.Replace(e.s.Endpoint, "https", "http", 1)}, code: 2, want: []string{"--etcd-cacert", "https://"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := map[string]string{}
			f := append(e.flags(cert, key), "--etcd-password-file", e.pwFile)
			for i := 0; i < len(f); i += 2 {
				base[f[i]] = f[i+1]
			}
			for i := 0; i < len(tt.args); i += 2 {
				base[tt.args[i]] = tt.args[i+1]
			}
			var flags []string
			for k, v := range base {
				flags = append(flags, k, v)
			}
			for _, cmd := range [][]string{
				{"run", "--id", "bad", "--http-addr", "", "--lease-ttl", "2s"},
				{"get-age", "Adam"},
			} {
				p := e.start(tt.name+" "+cmd[0], append(cmd, flags...))
				code := p.wait(t)
				got := p.stderr.String()
				t.Logf("%s: exit %d: %s", cmd[0], code, got)
				if code != tt.code {
					t.Errorf("%s exited %d, want %d; stderr %q", cmd[0], code, tt.code, got)
				}
				if strings.Count(got, "\n") != 1 {
					t.Errorf("%s stderr = %q, want one line", cmd[0], got)
				}
				for _, w := range tt.want {
					if !strings.Contains(got, w) {
						t.Errorf("%s stderr = %q, want it to contain %q", cmd[0], got, w)
					}
				}
			}
		})
	}
}

// TestCertificateRotation replaces a running member's certificate files
// and restarts etcd so that only the new certificate is taken: the member
// reconnects with the new files and goes on, without a restart.
func TestCertificateRotation(t *testing.T) {
	e := newEnv(t)
	oldCA, err := devpki.NewCA("old client CA")
	if err != nil {
		t.Fatal(err)
	}
	// etcd takes client certificates of both CAs at first.
	bundle := filepath.Join(e.s.Dir, "trusted-both.crt")
	if err := devpki.WriteFile(bundle, append(append([]byte{}, e.s.CA.CertPEM...), oldCA.CertPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	e.s.TrustedCAFile = bundle
	e.s.Stop()
	e.s.MustRestart(t)

	cert, key := e.certs("m1", oldCA)
	cliCert, cliKey := e.certs("cli", e.s.CA)
	m1 := e.member("m1", cert, key)
	if out, errOut, code := e.cli(cliCert, cliKey, "start", "Adam"); code != 0 {
		t.Fatalf("start = %d %q %q", code, out, errOut)
	}
	e.waitLife(cliCert, cliKey, "Adam", "running on m1", func(s status) bool { return s.State == "running" && s.Holder == "m1" })

	const expiry = "immortald_etcd_client_certificate_expiry_timestamp_seconds"
	oldExpiry := metric(t, m1.http, expiry)
	if d := time.Until(time.Unix(int64(oldExpiry), 0)); d < 360*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("%s = %v before the renewal: %v from now, want the first certificate's year", expiry, oldExpiry, d)
	}

	// Renew in place (as cert-manager does), then stop trusting the old CA.
	notAfter := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	p, err := e.s.CA.Issue(devpki.Leaf{CommonName: "immortald", Client: true, NotAfter: notAfter})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(cert, key); err != nil {
		t.Fatal(err)
	}
	e.s.Stop()
	e.s.TrustedCAFile = e.s.CAFile
	e.s.MustRestart(t)
	before := metric(t, m1.http, "immortald_heartbeats_total")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("m1 stderr:\n%s", m1.stderr)
		}
	})
	waitMetric(t, m1.http, "immortald_heartbeats_total", func(v float64) bool { return v >= before+5 })
	// The member says which certificate it connected with.
	if v := metric(t, m1.http, expiry); v != float64(notAfter.Unix()) {
		t.Errorf("%s = %v after the renewal, want the renewed certificate's %v", expiry, v, notAfter.Unix())
	}
	if n := strings.Count(m1.stderr.String(), "etcd: connected with a new client certificate"); n != 1 {
		t.Errorf("m1 logged %d new certificates, want 1 (the renewed one)", n)
	}
	st := e.waitLife(cliCert, cliKey, "Adam", "running on m1", func(s status) bool { return s.State == "running" && s.Holder == "m1" })
	select {
	case <-m1.done:
		t.Fatalf("m1 exited: %s", m1.stderr)
	default:
	}
	t.Logf("after the rotation: %+v", st)
}

func waitMetric(t *testing.T, addr, name string, cond func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	v := -1.0
	for time.Now().Before(deadline) {
		if v = metric(t, addr, name); cond(v) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s of %s: %v within %s, not as wanted", name, addr, v, bound)
}

// noSecret fails t if out holds the password or a line of any private key
// under dir.
func noSecret(t *testing.T, what, out, dir string) {
	t.Helper()
	for _, l := range etcdtest.Leaks(out, dir, password) {
		t.Errorf("%s shows %s", what, l)
	}
}
