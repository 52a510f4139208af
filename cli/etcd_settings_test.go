package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEtcdSecuritySettings checks the TLS and auth settings that are wrong
// before any connection: each exits 2 with one line naming the setting,
// for run and a client command alike, and no line shows the password.
func TestEtcdSecuritySettings(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	const secret = "cli-test-Secret-41"
	if err := os.WriteFile(pw, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{name: "CA with an http endpoint", args: []string{"--etcd-endpoints", "http://" + unreachable, "--etcd-cacert", pw}, want: []string{"--etcd-cacert", "https://"}},
		{name: "password twice", env: map[string]string{"IMMORTALD_ETCD_PASSWORD": secret}, args: []string{"--etcd-endpoints", unreachable, "--etcd-user", "u", "--etcd-password-file", pw}, want: []string{"IMMORTALD_ETCD_PASSWORD", "--etcd-password-file", "once"}},
		{name: "missing password file", args: []string{"--etcd-endpoints", unreachable, "--etcd-user", "u", "--etcd-password-file", filepath.Join(dir, "nope")}, want: []string{"--etcd-password-file", "no such file"}},
		{name: "empty password file", args: []string{"--etcd-endpoints", unreachable, "--etcd-user", "u", "--etcd-password-file", empty}, want: []string{"--etcd-password-file", "empty"}},
		{name: "user without password", args: []string{"--etcd-endpoints", unreachable, "--etcd-user", "u"}, want: []string{"--etcd-user", "IMMORTALD_ETCD_PASSWORD"}},
		{name: "password without user", args: []string{"--etcd-endpoints", unreachable, "--etcd-password-file", pw}, want: []string{"no --etcd-user"}},
		{name: "certificate without key", args: []string{"--etcd-endpoints", "https://" + unreachable, "--etcd-cert", pw}, want: []string{"--etcd-cert", "--etcd-key"}},
		{name: "from the environment", env: map[string]string{"IMMORTALD_ETCD_CACERT": pw, "IMMORTALD_ETCD_ENDPOINTS": "http://" + unreachable}, want: []string{"--etcd-cacert", "https://"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			for _, cmd := range [][]string{{"run", "--http-addr", "", "--id", "m1"}, {"ls"}} {
				r := execute(t, append(cmd, tt.args...)...)
				if r.code != 2 || !r.oneLineErr() {
					t.Errorf("%s: exit %d, stderr %q; want 2 and one line", cmd[0], r.code, r.stderr)
				}
				for _, w := range tt.want {
					if !strings.Contains(r.stderr, w) {
						t.Errorf("%s: stderr %q, want it to contain %q", cmd[0], r.stderr, w)
					}
				}
				if strings.Contains(r.stderr+r.stdout, secret) {
					t.Errorf("%s: output shows the password", cmd[0])
				}
			}
		})
	}
}

// TestEmbeddedRefusesSecuritySettings: TLS or auth settings without
// endpoints would otherwise be ignored by the embedded etcd.
func TestEmbeddedRefusesSecuritySettings(t *testing.T) {
	r := execute(t, "run", "--http-addr", "", "--id", "m1", "--data-dir", t.TempDir(), "--etcd-cacert", "/nonexistent/ca.crt")
	if r.code != 2 || !strings.Contains(r.stderr, "need --etcd-endpoints") || !strings.Contains(r.stderr, "loopback") {
		t.Errorf("exit %d, stderr %q; want 2 and a line saying TLS settings need --etcd-endpoints", r.code, r.stderr)
	}
}
