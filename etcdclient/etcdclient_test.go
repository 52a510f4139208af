package etcdclient_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/internal/devpki"
	"github.com/immortald/immortald/internal/etcdtest"
)

const (
	prefix   = "/immortals/"
	password = "s3cret-Pa55word-never-shown"
)

// secure starts a TLS etcd with auth, a role immortald with readwrite on
// prefix alone (the README's commands), a user immortald with it, and a
// role other on /other/ with a user other.
func secure(t *testing.T) *etcdtest.SecureServer {
	t.Helper()
	s := etcdtest.MustStartSecure(t)
	s.MustEnableAuth(t)
	for _, args := range [][]string{
		{"role", "add", "immortald"},
		{"role", "grant-permission", "immortald", "--prefix=true", "readwrite", prefix},
		{"user", "add", "immortald", "--new-user-password", password},
		{"user", "grant-role", "immortald", "immortald"},
		{"role", "add", "other"},
		{"role", "grant-permission", "other", "--prefix=true", "readwrite", "/other/"},
		{"user", "add", "other", "--new-user-password", password},
		{"user", "grant-role", "other", "other"},
	} {
		s.MustCtl(t, args...)
	}
	return s
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	ca, err := devpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := devpki.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(name string, l devpki.Leaf) (string, string) {
		p, err := ca.Issue(l)
		if err != nil {
			t.Fatal(err)
		}
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := p.Write(c, k); err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	cert, key := write("ok", devpki.Leaf{CommonName: "u", Client: true})
	_, otherKey := write("other", devpki.Leaf{CommonName: "u", Client: true})
	old, oldKey := write("old", devpki.Leaf{CommonName: "u", Client: true, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	https := []string{"https://127.0.0.1:2379"}
	tests := []struct {
		name string
		cfg  etcdclient.Config
		want []string // substrings of the error; none: valid
	}{
		{name: "plain", cfg: etcdclient.Config{Endpoints: []string{"127.0.0.1:2379"}}},
		{name: "https with everything", cfg: etcdclient.Config{Endpoints: https, CACert: caFile, Cert: cert, Key: key, User: "u", Password: password}},
		{name: "no endpoints", cfg: etcdclient.Config{}, want: []string{"--etcd-endpoints"}},
		{name: "CA with http", cfg: etcdclient.Config{Endpoints: []string{"http://127.0.0.1:2379"}, CACert: caFile}, want: []string{"--etcd-cacert", "http://127.0.0.1:2379", "https://"}},
		{name: "cert with http", cfg: etcdclient.Config{Endpoints: []string{"http://127.0.0.1:2379"}, Cert: cert, Key: key}, want: []string{"--etcd-cert", "https://"}},
		{name: "mixed schemes", cfg: etcdclient.Config{Endpoints: []string{"https://a:1", "http://b:1"}}, want: []string{"mixes"}},
		{name: "bad scheme", cfg: etcdclient.Config{Endpoints: []string{"unix://x"}}, want: []string{`"unix"`}},
		{name: "cert without key", cfg: etcdclient.Config{Endpoints: https, Cert: cert}, want: []string{"--etcd-cert", "--etcd-key", "both"}},
		{name: "user without password", cfg: etcdclient.Config{Endpoints: https, User: "u"}, want: []string{"--etcd-user", "IMMORTALD_ETCD_PASSWORD", "--etcd-password-file"}},
		{name: "password without user", cfg: etcdclient.Config{Endpoints: https, Password: password}, want: []string{"no --etcd-user"}},
		{name: "missing CA file", cfg: etcdclient.Config{Endpoints: https, CACert: filepath.Join(dir, "nope")}, want: []string{"--etcd-cacert", "no such file"}},
		{name: "CA file without PEM", cfg: etcdclient.Config{Endpoints: https, CACert: key}, want: []string{"--etcd-cacert", "no PEM certificate"}},
		{name: "key of another cert", cfg: etcdclient.Config{Endpoints: https, Cert: cert, Key: otherKey}, want: []string{"--etcd-cert", "--etcd-key", "does not match"}},
		{name: "expired cert", cfg: etcdclient.Config{Endpoints: https, Cert: old, Key: oldKey}, want: []string{"--etcd-cert", "expired at"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to contain %q", err, w)
				}
			}
			noSecret(t, err.Error(), dir)
		})
	}
	if s := (etcdclient.Config{Endpoints: https, User: "u", Password: password}).String(); strings.Contains(s, password) {
		t.Errorf("Config.String() = %q shows the password", s)
	}
}

// noSecret fails t if out holds the password or any private key under dir.
func noSecret(t *testing.T, out, dir string) {
	t.Helper()
	for _, l := range etcdtest.Leaks(out, dir, password) {
		t.Errorf("output shows %s: %q", l, out)
	}
}

// TestRefusals connects to a real TLS etcd with auth in every wrong way
// and checks each gives one message naming its cause.
func TestRefusals(t *testing.T) {
	s := secure(t)
	cert, key := s.MustClientCert(t, "immortald")
	otherCA, err := devpki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	wrongCA := filepath.Join(s.Dir, "wrong-ca.crt")
	if err := devpki.WriteFile(wrongCA, otherCA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	stranger, err := otherCA.Issue(devpki.Leaf{CommonName: "immortald", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	strangerCert, strangerKey := filepath.Join(s.Dir, "stranger.crt"), filepath.Join(s.Dir, "stranger.key")
	if err := stranger.Write(strangerCert, strangerKey); err != nil {
		t.Fatal(err)
	}

	ok := s.ClientConfig(cert, key)
	ok.User, ok.Password = "immortald", password
	tests := []struct {
		name   string
		change func(c *etcdclient.Config)
		cause  string
		want   []string
	}{
		{name: "least-privilege role", change: func(*etcdclient.Config) {}},
		{name: "certificate's CN as the user", change: func(c *etcdclient.Config) { c.User, c.Password = "", "" }},
		{name: "wrong password", change: func(c *etcdclient.Config) { c.Password = "wrong-" + password }, cause: "authentication failed", want: []string{`"immortald"`, "wrong user or password"}},
		{name: "unknown user", change: func(c *etcdclient.Config) { c.User = "nobody" }, cause: "authentication failed", want: []string{`"nobody"`}},
		{name: "role outside the prefix", change: func(c *etcdclient.Config) { c.User = "other" }, cause: "permission denied", want: []string{"permission denied on /immortals/", `"other"`, "etcdctl role grant-permission immortald --prefix=true readwrite /immortals/", "etcdctl user grant-role other immortald"}},
		{name: "wrong CA", change: func(c *etcdclient.Config) { c.CACert = wrongCA }, cause: "TLS", want: []string{"not signed by a CA in --etcd-cacert " + wrongCA}},
		{name: "client certificate of another CA", change: func(c *etcdclient.Config) { c.Cert, c.Key = strangerCert, strangerKey }, cause: "TLS", want: []string{"refused the client certificate", strangerCert}},
		{name: "no client certificate", change: func(c *etcdclient.Config) { c.Cert, c.Key = "", "" }, cause: "TLS", want: []string{"requires a client certificate"}},
		{name: "plain http to TLS", change: func(c *etcdclient.Config) {
			c.Endpoints = []string{strings.Replace(c.Endpoints[0], "https://", "http://", 1)}
			c.CACert, c.Cert, c.Key = "", "", ""
		}, cause: "TLS", want: []string{"speaks TLS", "https://"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.change(&cfg)
			err := connectAndCheck(cfg)
			if tt.cause == "" {
				if err != nil {
					t.Fatalf("= %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("= nil, want a %s problem", tt.cause)
			}
			t.Logf("message: %s", err)
			var p *etcdclient.Problem
			if !errors.As(err, &p) || p.Cause != tt.cause {
				t.Fatalf("= %q (%T), want a Problem of cause %q", err, err, tt.cause)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("= %q, want it to contain %q", err, w)
				}
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("= %q, want one line", err)
			}
			noSecret(t, err.Error(), s.Dir)
		})
	}
}

// TestExpiredWhileRunning connects with a client certificate that expires
// a moment later: Validate takes it, and etcd then refuses it at the first
// connection, which Explain words as an expired certificate. (One already
// expired is refused by Validate: see TestValidate.)
func TestExpiredWhileRunning(t *testing.T) {
	s := secure(t)
	notAfter := time.Now().Add(3 * time.Second)
	cert, key := s.MustLeaf(t, "soon", devpki.Leaf{CommonName: "immortald", Client: true, NotAfter: notAfter})
	cfg := s.ClientConfig(cert, key) // the certificate's CN is the user: New does not connect yet
	cli, err := etcdclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	time.Sleep(time.Until(notAfter) + time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = etcdclient.Explain(etcdclient.Check(ctx, cli, prefix), cfg, prefix)
	t.Logf("message: %v", err)
	if err == nil || !strings.Contains(err.Error(), "refused the client certificate --etcd-cert "+cert) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("= %v, want etcd refusing the expired client certificate %s", err, cert)
	}
}

// connectAndCheck is what every command does first: connect, check the
// permission on the prefix, and word the failure.
func connectAndCheck(cfg etcdclient.Config) error {
	cfg.DialTimeout = 5 * time.Second
	if err := cfg.Validate(); err != nil {
		return err
	}
	// The expired certificate is checked by etcd here, not by Validate.
	cli, err := etcdclient.New(cfg)
	if err != nil {
		return etcdclient.Explain(err, cfg, prefix)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return etcdclient.Explain(etcdclient.Check(ctx, cli, prefix), cfg, prefix)
}

// TestReloadsFiles gives one client a CA file that does not sign etcd's
// certificate, and a client certificate etcd does not trust; each request
// fails until the files are replaced on disk, and then the same client
// works: every new connection reads the files again.
func TestReloadsFiles(t *testing.T) {
	s := secure(t)
	other, err := devpki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		badCA   bool // else a bad client certificate
		problem string
	}{
		{name: "CA file", badCA: true, problem: "not signed by a CA in --etcd-cacert"},
		{name: "client certificate", problem: "refused the client certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			caFile, certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
			good, err := s.CA.Issue(devpki.Leaf{CommonName: "immortald", Client: true})
			if err != nil {
				t.Fatal(err)
			}
			bad, err := other.Issue(devpki.Leaf{CommonName: "immortald", Client: true})
			if err != nil {
				t.Fatal(err)
			}
			ca, pair := s.CA.CertPEM, bad
			if tt.badCA {
				ca, pair = other.CertPEM, good
			}
			if err := devpki.WriteFile(caFile, ca, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := pair.Write(certFile, keyFile); err != nil {
				t.Fatal(err)
			}
			cfg := etcdclient.Config{Endpoints: []string{s.Endpoint}, CACert: caFile, Cert: certFile, Key: keyFile}
			cli, err := etcdclient.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err = etcdclient.Explain(etcdclient.Check(ctx, cli, prefix), cfg, prefix)
			cancel()
			if err == nil || !strings.Contains(err.Error(), tt.problem) {
				t.Fatalf("before the files are replaced: %v, want %q", err, tt.problem)
			}
			if tt.badCA {
				err = devpki.WriteFile(caFile, s.CA.CertPEM, 0o644)
			} else {
				err = good.Write(certFile, keyFile)
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel = context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := etcdclient.Check(ctx, cli, prefix); err != nil {
				t.Fatalf("after the files are replaced: %v", etcdclient.Explain(err, cfg, prefix))
			}
		})
	}
}

// TestDenied checks that a request refused for permission reaches
// OnDenied, and one that is allowed does not.
func TestDenied(t *testing.T) {
	s := secure(t)
	cert, key := s.MustClientCert(t, "immortald")
	cfg := s.ClientConfig(cert, key)
	cfg.User, cfg.Password = "immortald", password
	denied := make(chan error, 10)
	cfg.OnDenied = func(err error) { denied <- err }
	cli, err := etcdclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, prefix+"lives/Adam", ""); err != nil {
		t.Fatal(err)
	}
	if len(denied) != 0 {
		t.Fatalf("OnDenied called for an allowed request: %v", <-denied)
	}
	_, err = cli.Put(ctx, "/elsewhere", "")
	if !etcdclient.IsDenied(err) {
		t.Fatalf("put outside the prefix = %v, want a permission error", err)
	}
	select {
	case got := <-denied:
		noSecret(t, got.Error(), s.Dir)
	default:
		t.Fatal("OnDenied not called for a refused request")
	}
}

// TestOnHandshakeNamesTheRenewedCertificate renews a client certificate in
// place while a client runs, restarts etcd so the client must connect
// again, and checks that OnHandshake reported the first certificate for the
// first connection and the renewed one (another serial and expiry, same CA)
// for the new connection, which works.
func TestOnHandshakeNamesTheRenewedCertificate(t *testing.T) {
	s := secure(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	now := time.Now()
	first, err := s.CA.Issue(devpki.Leaf{CommonName: "immortald", Client: true, NotAfter: now.Add(90 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := s.CA.Issue(devpki.Leaf{CommonName: "immortald", Client: true, NotAfter: now.Add(180 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Write(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen []*x509.Certificate
	)
	cfg := s.ClientConfig(certFile, keyFile)
	cfg.OnHandshake = func(c *x509.Certificate) {
		mu.Lock()
		seen = append(seen, c)
		mu.Unlock()
	}
	last := func() *x509.Certificate {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return nil
		}
		return seen[len(seen)-1]
	}
	cli, err := etcdclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	check := func(when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := etcdclient.Check(ctx, cli, prefix); err != nil {
			t.Fatalf("%s: %v", when, etcdclient.Explain(err, cfg, prefix))
		}
	}
	check("with the first certificate")
	want := func(when string, pair devpki.Pair) {
		t.Helper()
		block, _ := pem.Decode(pair.CertPEM)
		c := last()
		if c == nil || !bytes.Equal(c.Raw, block.Bytes) {
			t.Fatalf("%s: OnHandshake last reported %v, want the certificate with serial %s", when, describe(c), mustParse(t, block.Bytes).SerialNumber)
		}
	}
	want("first connection", first)

	if err := renewed.Write(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	s.MustRestart(t)
	check("after the renewal and etcd's restart")
	want("after the renewal and etcd's restart", renewed)
	if c := last(); !c.NotAfter.After(now.Add(179 * 24 * time.Hour)) {
		t.Errorf("the renewed certificate's NotAfter is %v, want about %v", c.NotAfter, now.Add(180*24*time.Hour))
	}
}

func describe(c *x509.Certificate) string {
	if c == nil {
		return "no certificate"
	}
	return fmt.Sprintf("serial %s (not after %s)", c.SerialNumber, c.NotAfter.UTC().Format(time.RFC3339))
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
