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
