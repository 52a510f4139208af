// Command devcerts makes a development CA and the certificates of the TLS
// deployment (deploy/overlays/tls): etcd's server certificate, immortald's
// client certificate (CN immortald, the etcd user it runs as) and root's
// (CN root, for etcdctl and the auth setup Job), and the Kubernetes Secrets
// that carry them.
//
//	go run ./cmd/devcerts -out bin/dev-certs [-namespace default] [-hosts etcd1,etcd2] [-valid-for 8760h] [-new-ca]
//
// It writes, under -out: ca.crt and ca.key, etcd.crt/.key, immortald.crt/.key,
// root.crt/.key (keys mode 0600), and secrets.yaml with the Secrets
// etcd-server-tls, immortald-etcd-tls and etcd-root-tls (each with tls.crt,
// tls.key and ca.crt).
//
// Run again on the same -out, it renews: the CA in ca.crt and ca.key stays,
// and every certificate is issued anew under it (new keys, new serials,
// valid for -valid-for from an hour ago), so `kubectl apply -f
// secrets.yaml` rotates the certificates as cert-manager would, and
// whatever trusts the CA goes on trusting them. -new-ca starts over with a
// new CA instead. For development only: the CA key is a file beside the
// certificates.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/immortald/immortald/internal/devpki"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "devcerts: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("devcerts", flag.ContinueOnError)
	out := fs.String("out", "bin/dev-certs", "directory to write to")
	ns := fs.String("namespace", "default", "namespace of the etcd Service (for the server certificate's names)")
	service := fs.String("service", "etcd", "name of etcd's headless Service")
	replicas := fs.Int("replicas", 3, "etcd members (etcd-0 ... etcd-N-1)")
	extra := fs.String("hosts", "", "more comma-separated names or IPs for etcd's server certificate, put first")
	k8s := fs.Bool("kubernetes-names", true, "name etcd's Kubernetes Service and pods in its certificate")
	validFor := fs.Duration("valid-for", 365*24*time.Hour, "how long the certificates (not the CA) are valid, from an hour ago")
	newCA := fs.Bool("new-ca", false, "make a new CA even when -out holds one (else its certificates are renewed under it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (all settings are flags)", fs.Args())
	}
	if *validFor <= time.Hour {
		return fmt.Errorf("-valid-for %v: want more than an hour (certificates start an hour ago)", *validFor)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	ca, renewed, err := loadOrMakeCA(*out, *newCA)
	if err != nil {
		return err
	}
	notBefore := time.Now().Add(-time.Hour)
	notAfter := notBefore.Add(*validFor)
	// etcd checks a peer's client certificate by looking up each DNS name
	// in it, in order, until one resolves to the peer's address: names
	// that do not resolve where etcd runs cost a DNS time-out on every new
	// peer connection. So the names asked for come first, and the
	// Kubernetes ones can be left out.
	var hosts []string
	for _, h := range strings.Split(*extra, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	if *k8s {
		hosts = append(hosts, *service, fmt.Sprintf("%s.%s.svc", *service, *ns), fmt.Sprintf("%s.%s.svc.cluster.local", *service, *ns))
		for i := range *replicas {
			pod := fmt.Sprintf("%s-%d", *service, i)
			hosts = append(hosts, pod+"."+*service, fmt.Sprintf("%s.%s.%s.svc", pod, *service, *ns), fmt.Sprintf("%s.%s.%s.svc.cluster.local", pod, *service, *ns), pod)
		}
	}
	hosts = append(hosts, "localhost", "127.0.0.1")
	leaves := []struct {
		file, secret string
		leaf         devpki.Leaf
	}{
		// etcd's certificate serves clients and peers, and is the client
		// side of peer connections.
		{"etcd", "etcd-server-tls", devpki.Leaf{CommonName: "etcd", Hosts: hosts, Server: true, Client: true}},
		{"immortald", "immortald-etcd-tls", devpki.Leaf{CommonName: "immortald", Client: true}},
		{"root", "etcd-root-tls", devpki.Leaf{CommonName: "root", Client: true}},
	}
	var manifests bytes.Buffer
	manifests.WriteString("# Made by cmd/devcerts: development certificates only.\n")
	for _, l := range leaves {
		l.leaf.NotBefore, l.leaf.NotAfter = notBefore, notAfter
		p, err := ca.Issue(l.leaf)
		if err != nil {
			return err
		}
		if err := p.Write(filepath.Join(*out, l.file+".crt"), filepath.Join(*out, l.file+".key")); err != nil {
			return err
		}
		s := corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: l.secret, Namespace: *ns, Labels: map[string]string{"app.kubernetes.io/part-of": "immortald"}},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.crt": p.CertPEM, "tls.key": p.KeyPEM, "ca.crt": ca.CertPEM},
		}
		b, err := yaml.Marshal(s)
		if err != nil {
			return err
		}
		manifests.WriteString("---\n")
		manifests.Write(b)
	}
	if err := devpki.WriteFile(filepath.Join(*out, "secrets.yaml"), manifests.Bytes(), 0o600); err != nil {
		return err
	}
	what := "a new CA"
	if renewed {
		what = "the CA already in " + *out
	}
	fmt.Printf("wrote the certificates of %s (valid until %s, under %s) and secrets.yaml to %s\n",
		strings.Join([]string{"etcd", "immortald", "root"}, ", "), notAfter.UTC().Format(time.RFC3339), what, *out)
	return nil
}

// loadOrMakeCA loads the CA of dir's ca.crt and ca.key (renewed: true), or,
// when there is none or fresh is set, makes one and writes both files.
func loadOrMakeCA(dir string, fresh bool) (ca *devpki.CA, renewed bool, err error) {
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if !fresh {
		certPEM, errC := os.ReadFile(certFile)
		keyPEM, errK := os.ReadFile(keyFile)
		switch {
		case errC == nil && errK == nil:
			ca, err := devpki.LoadCA(certPEM, keyPEM)
			if err != nil {
				return nil, false, fmt.Errorf("%s and %s: %w (-new-ca makes a new CA)", certFile, keyFile, err)
			}
			return ca, true, nil
		case errors.Is(errC, os.ErrNotExist) && errors.Is(errK, os.ErrNotExist):
		case errC != nil && !errors.Is(errC, os.ErrNotExist):
			return nil, false, errC
		case errK != nil && !errors.Is(errK, os.ErrNotExist):
			return nil, false, errK
		default:
			return nil, false, fmt.Errorf("%s has one of ca.crt and ca.key but not the other: without both the certificates cannot be renewed under the same CA (-new-ca makes a new one)", dir)
		}
	}
	ca, err = devpki.NewCA("immortald dev CA")
	if err != nil {
		return nil, false, err
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return nil, false, err
	}
	if err := devpki.WriteFile(keyFile, key, 0o600); err != nil {
		return nil, false, err
	}
	if err := devpki.WriteFile(certFile, ca.CertPEM, 0o644); err != nil {
		return nil, false, err
	}
	return ca, false, nil
}
