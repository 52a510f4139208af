// Command devcerts makes a development CA and the certificates of the TLS
// deployment (deploy/overlays/tls): etcd's server certificate, immortald's
// client certificate (CN immortald, the etcd user it runs as) and root's
// (CN root, for etcdctl and the auth setup Job), and the Kubernetes Secrets
// that carry them.
//
//	go run ./cmd/devcerts -out bin/dev-certs [-namespace default] [-hosts etcd1,etcd2]
//
// It writes, under -out: ca.crt, etcd.crt/.key, immortald.crt/.key,
// root.crt/.key (keys mode 0600), and secrets.yaml with the Secrets
// etcd-server-tls, immortald-etcd-tls and etcd-root-tls (each with tls.crt,
// tls.key and ca.crt). For development only: the CA key is not kept, so
// running it again makes a new CA and every certificate anew.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	ca, err := devpki.NewCA("immortald dev CA")
	if err != nil {
		return err
	}
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
	if err := devpki.WriteFile(filepath.Join(*out, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return err
	}
	var manifests bytes.Buffer
	manifests.WriteString("# Made by cmd/devcerts: development certificates only.\n")
	for _, l := range leaves {
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
	fmt.Printf("wrote ca.crt, %s and secrets.yaml to %s\n", strings.Join([]string{"etcd", "immortald", "root"}, ", "), *out)
	return nil
}
