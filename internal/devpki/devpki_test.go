package devpki_test

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/devpki"
)

// TestIssue checks that certificates are valid for what was asked and
// nothing else: names, usages and times.
func TestIssue(t *testing.T) {
	ca, err := devpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	parse := func(p devpki.Pair) *x509.Certificate {
		t.Helper()
		pair, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf
	}
	srv, err := ca.Issue(devpki.Leaf{CommonName: "etcd", Hosts: []string{"etcd-0.etcd", "127.0.0.1"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	s := parse(srv)
	for _, host := range []string{"etcd-0.etcd", "127.0.0.1"} {
		if _, err := s.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if _, err := s.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other"}); err == nil {
		t.Error("server certificate verifies for a host it does not name")
	}
	if _, err := s.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a server-only certificate verifies for client auth")
	}

	old, err := ca.Issue(devpki.Leaf{CommonName: "u", Client: true, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	c := parse(old)
	if c.Subject.CommonName != "u" {
		t.Errorf("CN = %q, want u", c.Subject.CommonName)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("an expired certificate verifies")
	}
	if _, err := ca.Issue(devpki.Leaf{CommonName: "x"}); err == nil {
		t.Error("Issue without a usage = nil, want an error")
	}

	dir := t.TempDir()
	if err := srv.Write(filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")); err != nil {
		t.Errorf("written pair does not load: %v", err)
	}
}

// TestLoadCA checks that a CA written out and loaded again issues
// certificates its first incarnation's roots verify, and that a key of
// another CA, or a certificate that is not a CA, is refused.
func TestLoadCA(t *testing.T) {
	ca, err := devpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	again, err := devpki.LoadCA(ca.CertPEM, key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := again.Issue(devpki.Leaf{CommonName: "immortald", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("a certificate of the loaded CA does not verify under the first one: %v", err)
	}

	other, err := devpki.NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := other.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devpki.LoadCA(ca.CertPEM, otherKey); err == nil {
		t.Error("LoadCA took another CA's key")
	}
	if _, err := devpki.LoadCA(p.CertPEM, p.KeyPEM); err == nil {
		t.Error("LoadCA took a leaf certificate as a CA")
	}
	if _, err := devpki.LoadCA([]byte("not PEM"), key); err == nil {
		t.Error("LoadCA took a file without PEM")
	}
}
