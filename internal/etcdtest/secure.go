package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/internal/devpki"
)

// Binaries are etcd and etcdctl built from go.mod's tool lines.
type Binaries struct{ Etcd, Etcdctl string }

var (
	binOnce sync.Once
	bins    Binaries
	binErr  error
)

// MustBuild builds etcd and etcdctl once per test binary, in a directory of
// the system's temp dir shared by runs (go build's cache makes a rebuild a
// link). IMMORTALD_TEST_ETCD_BIN names a directory with both, to skip it.
func MustBuild(tb testing.TB) Binaries {
	tb.Helper()
	binOnce.Do(func() {
		if dir := os.Getenv("IMMORTALD_TEST_ETCD_BIN"); dir != "" {
			bins = Binaries{Etcd: filepath.Join(dir, "etcd"), Etcdctl: filepath.Join(dir, "etcdctl")}
			return
		}
		dir := filepath.Join(os.TempDir(), "immortald-etcdtest-bin")
		if binErr = os.MkdirAll(dir, 0o755); binErr != nil {
			return
		}
		bins = Binaries{Etcd: filepath.Join(dir, "etcd"), Etcdctl: filepath.Join(dir, "etcdctl")}
		for _, b := range []struct{ out, pkg string }{{bins.Etcd, "go.etcd.io/etcd/server/v3"}, {bins.Etcdctl, "go.etcd.io/etcd/etcdctl/v3"}} {
			tmp := b.out + fmt.Sprintf(".%d", os.Getpid())
			out, err := exec.Command("go", "build", "-o", tmp, b.pkg).CombinedOutput()
			if err != nil {
				binErr = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
			if binErr = os.Rename(tmp, b.out); binErr != nil {
				return
			}
		}
	})
	if binErr != nil {
		tb.Fatalf("build etcd: %v", binErr)
	}
	return bins
}

// SecureServer is a real etcd process that serves TLS on loopback and
// requires client certificates (--client-cert-auth), with its certificates
// under Dir. Its user root authenticates by the certificate RootCert alone.
type SecureServer struct {
	Bins Binaries
	Dir  string
	// CA signed the server's certificate and every client certificate it
	// trusts (ca.crt is --trusted-ca-file and the clients' --etcd-cacert).
	CA     *devpki.CA
	CAFile string
	// TrustedCAFile is etcd's --trusted-ca-file at the next MustRestart:
	// the CAs whose client certificates it takes. Default CAFile.
	TrustedCAFile string
	// RootCert and RootKey are a client certificate with CN root.
	RootCert, RootKey string
	// Endpoint is https://127.0.0.1:<port>.
	Endpoint string
	peerURL  string
	log      *os.File
	cmd      *exec.Cmd
	done     chan struct{}
}

// MustStartSecure starts a TLS etcd process in tb.TempDir(); tb.Cleanup
// stops it. Auth is not enabled yet: see EnableAuth.
func MustStartSecure(tb testing.TB) *SecureServer {
	tb.Helper()
	s := &SecureServer{Bins: MustBuild(tb), Dir: tb.TempDir()}
	ca, err := devpki.NewCA("etcdtest CA")
	if err != nil {
		tb.Fatal(err)
	}
	s.CA = ca
	s.CAFile = filepath.Join(s.Dir, "ca.crt")
	s.TrustedCAFile = s.CAFile
	if err := devpki.WriteFile(s.CAFile, ca.CertPEM, 0o644); err != nil {
		tb.Fatal(err)
	}
	srv, err := ca.Issue(devpki.Leaf{CommonName: "etcd", Hosts: []string{"127.0.0.1", "localhost"}, Server: true, Client: true})
	if err != nil {
		tb.Fatal(err)
	}
	if err := srv.Write(filepath.Join(s.Dir, "server.crt"), filepath.Join(s.Dir, "server.key")); err != nil {
		tb.Fatal(err)
	}
	s.RootCert, s.RootKey = s.MustClientCert(tb, "root")
	s.Endpoint = "https://" + FreeAddr(tb)
	s.peerURL = "http://" + FreeAddr(tb)
	s.MustRestart(tb)
	tb.Cleanup(s.Stop)
	return s
}

// MustClientCert issues a client certificate with common name cn, valid
// now, into Dir, and returns its files.
func (s *SecureServer) MustClientCert(tb testing.TB, cn string) (certFile, keyFile string) {
	tb.Helper()
	return s.MustLeaf(tb, cn, devpki.Leaf{CommonName: cn, Client: true})
}

// MustLeaf issues l into Dir as name.crt and name.key.
func (s *SecureServer) MustLeaf(tb testing.TB, name string, l devpki.Leaf) (certFile, keyFile string) {
	tb.Helper()
	p, err := s.CA.Issue(l)
	if err != nil {
		tb.Fatal(err)
	}
	certFile, keyFile = filepath.Join(s.Dir, name+".crt"), filepath.Join(s.Dir, name+".key")
	if err := p.Write(certFile, keyFile); err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile
}

// MustRestart starts the process (again, after Stop), trusting the CA in
// CAFile as it is now, and waits until it serves.
func (s *SecureServer) MustRestart(tb testing.TB) {
	tb.Helper()
	log, err := os.OpenFile(filepath.Join(s.Dir, "etcd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	s.log = log
	s.cmd = exec.Command(s.Bins.Etcd,
		"--name", "s1", "--data-dir", filepath.Join(s.Dir, "data"),
		"--listen-client-urls", s.Endpoint, "--advertise-client-urls", s.Endpoint,
		"--listen-peer-urls", s.peerURL, "--initial-advertise-peer-urls", s.peerURL,
		"--initial-cluster", "s1="+s.peerURL,
		"--client-cert-auth", "--trusted-ca-file", s.TrustedCAFile,
		"--cert-file", filepath.Join(s.Dir, "server.crt"), "--key-file", filepath.Join(s.Dir, "server.key"),
		"--log-level", "warn")
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(s.cmd, s.done)
	cli := s.MustRootClient(tb)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		select {
		case <-s.done:
			tb.Fatalf("etcd exited at start; its log: %s", s.Log())
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("etcd did not serve within 60s: %v; its log: %s", err, s.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the process (SIGTERM, then SIGKILL after 10s).
func (s *SecureServer) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	_ = s.log.Close()
	s.cmd = nil
}

// Log returns etcd's own log so far.
func (s *SecureServer) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "etcd.log"))
	return string(b)
}

// ClientConfig is an etcdclient.Config with the CA and the given client
// certificate (empty: none).
func (s *SecureServer) ClientConfig(certFile, keyFile string) etcdclient.Config {
	return etcdclient.Config{Endpoints: []string{s.Endpoint}, CACert: s.CAFile, Cert: certFile, Key: keyFile}
}

// MustRootClient is a client as user root (by its certificate), closed at
// cleanup.
func (s *SecureServer) MustRootClient(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := etcdclient.New(s.ClientConfig(s.RootCert, s.RootKey))
	if err != nil {
		tb.Fatalf("root client: %v", err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	return cli
}

// Ctl runs etcdctl as root (by its certificate) with args and returns its
// combined output.
func (s *SecureServer) Ctl(args ...string) (string, error) {
	argv := append([]string{"--endpoints", s.Endpoint, "--cacert", s.CAFile, "--cert", s.RootCert, "--key", s.RootKey,
		"--dial-timeout", "10s", "--command-timeout", "20s"}, args...)
	out, err := exec.Command(s.Bins.Etcdctl, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("etcdctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustCtl is Ctl that fails tb on error.
func (s *SecureServer) MustCtl(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := s.Ctl(args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// MustEnableAuth creates user root (certificate only, no password) and
// enables auth: from then on every request needs a user.
func (s *SecureServer) MustEnableAuth(tb testing.TB) {
	tb.Helper()
	s.MustCtl(tb, "user", "add", "root", "--no-password")
	s.MustCtl(tb, "user", "grant-role", "root", "root")
	s.MustCtl(tb, "auth", "enable")
}

// Leaks returns what of the secrets, or of any private key (a *.key file)
// under dir, out shows: "the password", "a private key", "key material of
// <file>". Empty: nothing.
func Leaks(out, dir string, secrets ...string) []string {
	var found []string
	for _, s := range secrets {
		if s != "" && strings.Contains(out, s) {
			found = append(found, "a secret")
		}
	}
	if strings.Contains(out, "PRIVATE KEY") {
		found = append(found, "a private key")
	}
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".key") {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, line := range strings.Split(string(b), "\n") {
			if len(line) > 16 && !strings.HasPrefix(line, "-----") && strings.Contains(out, line) {
				found = append(found, "key material of "+path)
				break
			}
		}
		return nil
	})
	return found
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
