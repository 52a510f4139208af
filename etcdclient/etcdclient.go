// Package etcdclient is how every immortald command connects to etcd: the
// endpoints, TLS (a CA, a client certificate), user and password auth, the
// reload of certificate files that change on disk, and the words for what
// went wrong (authentication, permission on the prefix, TLS).
//
// Guarantees:
//   - Certificate, key and CA files are read again for every new TLS
//     connection (gRPC credentials around etcd's transport.TLSInfo), so a
//     certificate renewed in place (cert-manager, a Secret update) is used
//     from the next connection on, without a restart. Config.OnHandshake
//     learns which client certificate each new connection presented.
//   - With Config.HealthInterval, an endpoint that stops answering (a
//     frozen etcd process, a paused node: TCP still acknowledged) is left
//     out within (1 + 2·HealthFailures) × HealthInterval, and the calls
//     and streams on it move to the other endpoints (health.go), instead
//     of hanging until gRPC's keep-alive gives the connection up (12 s).
//   - The password is held in Config only: Config's String and LogValue
//     leave it out, and no error of this package contains it, the token, or
//     key material.
//   - Every unary request (KV, Txn, lease grant and revoke, Authenticate)
//     refused for authentication or permission reaches Config.OnDenied,
//     whatever code made it, so a daemon can stop work it can no longer
//     fence. Streams (watches, lease keep-alives) are not watched: a member
//     learns of a refusal from its next Txn (a heartbeat, every checkpoint
//     interval).
//
// Not guaranteed: a cheap password. etcd's client authenticates again for
// every stream it opens (a bcrypt check and a raft proposal on the server);
// a client certificate whose common name is the etcd user costs nothing.
package etcdclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// DefaultEndpoint is the endpoint of the client commands when none is given.
const DefaultEndpoint = "127.0.0.1:2379"

// Config says how to reach etcd. The zero value but Endpoints is a plain,
// unauthenticated connection.
type Config struct {
	// Endpoints are host:port, http://host:port or https://host:port; all
	// of one scheme. https, or any TLS file given, means TLS.
	Endpoints []string
	// CACert is a PEM file of the CAs that sign etcd's server certificate.
	// Empty: the system roots (with https endpoints).
	CACert string
	// Cert and Key are PEM files of the client certificate and its key, for
	// an etcd started with --client-cert-auth. Both or neither.
	Cert, Key string
	// User and Password authenticate to an etcd with auth enabled. Both or
	// neither. Without them, an etcd with --client-cert-auth takes the
	// client certificate's common name as the user.
	User     string
	Password string
	// DialTimeout bounds the first connection and, with a User, the
	// authentication at New. Default DialTimeout (5s).
	DialTimeout time.Duration
	// DialKeepAliveTime and DialKeepAliveTimeout are gRPC keepalive pings
	// on the connection. Default KeepAliveTime and KeepAliveTimeout (see
	// leader.go: gRPC raises a time below 10 s to 10 s).
	DialKeepAliveTime, DialKeepAliveTimeout time.Duration
	// OnDenied, if set, is called (from the request's goroutine, so it must
	// not block) with every request error that is an authentication or
	// permission failure.
	OnDenied func(error)
	// OnHandshake, if set, is called after every TLS handshake with etcd
	// that succeeded, with the client certificate the connection presented
	// (nil when etcd asked for none or none is configured). It is called
	// from gRPC's dialing goroutine, so it must not block. A daemon reports
	// with it which certificate it uses and when that certificate expires.
	OnHandshake func(*x509.Certificate)
	// HealthInterval, if above 0 and there are two endpoints or more,
	// starts the endpoint health monitor (health.go): each endpoint is
	// asked for its status every HealthInterval, and one that does not
	// answer HealthFailures times in a row is left out of the client's
	// endpoints until it answers again. The daemon uses
	// DefaultHealthInterval; one-shot commands need none.
	HealthInterval time.Duration
	// OnEndpointsOut, if set, is called by the monitor with the endpoints
	// that do not answer (none: every one does) whenever that changes. They
	// are left out of the client while another one answers.
	OnEndpointsOut func(out []string)
	// Logger receives the monitor's messages; nil: none.
	Logger *slog.Logger
}

// TLS reports whether the connection uses TLS.
func (c Config) TLS() bool {
	if c.CACert != "" || c.Cert != "" || c.Key != "" {
		return true
	}
	for _, e := range c.Endpoints {
		if strings.HasPrefix(e, "https://") {
			return true
		}
	}
	return false
}

// String describes c without the password.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "endpoints=%s tls=%t", strings.Join(c.Endpoints, ","), c.TLS())
	if c.CACert != "" {
		fmt.Fprintf(&b, " cacert=%s", c.CACert)
	}
	if c.Cert != "" {
		fmt.Fprintf(&b, " cert=%s key=%s", c.Cert, c.Key)
	}
	if c.User != "" {
		fmt.Fprintf(&b, " user=%s", c.User)
	}
	return b.String()
}

// LogValue logs c without the password.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Validate checks c, one rule per line, naming the setting (as its flag)
// and the value. It reads the certificate files: a missing, unparsable or
// expired one, or a key that does not match its certificate, is an error.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("--etcd-endpoints: none given")
	}
	scheme := ""
	for i, e := range c.Endpoints {
		s, err := endpointScheme(e)
		if err != nil {
			return err
		}
		if i > 0 && s != scheme {
			return fmt.Errorf("--etcd-endpoints %q: mixes %s:// and %s:// endpoints; use one scheme", strings.Join(c.Endpoints, ","), scheme, s)
		}
		scheme = s
	}
	if scheme == "http" {
		for _, f := range []struct{ flag, file string }{{"--etcd-cacert", c.CACert}, {"--etcd-cert", c.Cert}, {"--etcd-key", c.Key}} {
			if f.file != "" {
				return fmt.Errorf("%s %s is given but the endpoint %s is plain http://: use https:// endpoints for TLS", f.flag, f.file, c.Endpoints[0])
			}
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return fmt.Errorf("--etcd-cert (%q) and --etcd-key (%q) go together: give both or neither", c.Cert, c.Key)
	}
	if c.User == "" && c.Password != "" {
		return errors.New("a password is given (IMMORTALD_ETCD_PASSWORD or --etcd-password-file) but no --etcd-user")
	}
	if c.User != "" && c.Password == "" {
		return fmt.Errorf("--etcd-user %q needs a password: set IMMORTALD_ETCD_PASSWORD or --etcd-password-file", c.User)
	}
	if strings.Contains(c.User, ":") {
		return fmt.Errorf("--etcd-user %q: a user name cannot contain ':'", c.User)
	}
	if c.CACert != "" {
		if err := checkCA(c.CACert); err != nil {
			return err
		}
	}
	if c.Cert != "" {
		if err := checkCert(c.Cert, c.Key, time.Now()); err != nil {
			return err
		}
	}
	return nil
}

// endpointScheme returns "http", "https" or "" (host:port alone).
func endpointScheme(e string) (string, error) {
	if !strings.Contains(e, "://") {
		if _, _, err := net.SplitHostPort(e); err != nil {
			return "", fmt.Errorf("--etcd-endpoints: %q is not host:port or http(s)://host:port", e)
		}
		return "", nil
	}
	u, err := url.Parse(e)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("--etcd-endpoints: %q is not host:port or http(s)://host:port", e)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("--etcd-endpoints: %q has scheme %q; want http or https", e, u.Scheme)
	}
	return u.Scheme, nil
}

func checkCA(file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("--etcd-cacert: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return fmt.Errorf("--etcd-cacert %s: no PEM certificate in it", file)
	}
	return nil
}

// checkCert checks that cert and key load as a pair and that the
// certificate is valid at now.
func checkCert(certFile, keyFile string, now time.Time) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		// tls errors name the files' roles, never their bytes.
		return fmt.Errorf("--etcd-cert %s and --etcd-key %s: %w", certFile, keyFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return fmt.Errorf("--etcd-cert %s: %w", certFile, err)
		}
	}
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Errorf("--etcd-cert %s: the certificate expired at %s", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("--etcd-cert %s: the certificate is not valid before %s", certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// New validates cfg and connects. With a User it authenticates before it
// returns, bounded by DialTimeout: a wrong password is an error here
// (ErrAuthFailed in its chain, worded by Explain). Without one it does not
// wait for etcd. The caller closes the client.
func New(cfg Config) (*clientv3.Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DialTimeout
	}
	if cfg.DialKeepAliveTime == 0 {
		cfg.DialKeepAliveTime, cfg.DialKeepAliveTimeout = KeepAliveTime, KeepAliveTimeout
	}
	cc := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    cfg.DialKeepAliveTime,
		DialKeepAliveTimeout: cfg.DialKeepAliveTimeout,
		Username:             cfg.User,
		Password:             cfg.Password,
		Logger:               zap.NewNop(),
		DialOptions:          connectOptions(),
	}
	var creds credentials.TransportCredentials
	if cfg.TLS() {
		r := &reloadingTLS{info: tlsInfo(cfg), onHandshake: cfg.OnHandshake}
		first, err := r.config()
		if err != nil {
			return nil, err
		}
		// clientv3 takes the endpoints as TLS ones from cc.TLS; the dial
		// option below replaces its credentials with ones that read the
		// files again for each connection.
		cc.TLS = first
		cc.DialOptions = append(cc.DialOptions, grpc.WithTransportCredentials(r))
		creds = r
	}
	if cfg.OnDenied != nil {
		cc.DialOptions = append(cc.DialOptions, grpc.WithChainUnaryInterceptor(deniedInterceptor(cfg.OnDenied)))
	}
	var d *dialer
	if wantHealth(cfg) {
		d = newDialer(cfg.DialKeepAliveTimeout)
		cc.DialOptions = append(cc.DialOptions, grpc.WithContextDialer(d.dial))
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	if d != nil {
		if err := startHealth(cli, cfg, d, creds); err != nil {
			cli.Close()
			return nil, fmt.Errorf("etcd endpoint health monitor: %w", err)
		}
	}
	return cli, nil
}

// deniedInterceptor passes authentication and permission failures to f.
func deniedInterceptor(f func(error)) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err != nil && IsDenied(err) {
			f(err)
		}
		return err
	}
}

// IsDenied reports whether err is etcd refusing the credentials or the
// permission: a wrong user or password, a user without the role, a role
// without permission on the key.
func IsDenied(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrGRPCPermissionDenied) ||
		errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrGRPCAuthFailed) ||
		errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrGRPCUserEmpty) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		// Not codes.Unauthenticated: that is an expired or stale token
		// (after an etcd restart), which clientv3 renews by itself.
		if s.Code() == codes.PermissionDenied {
			return true
		}
		msg := s.Message()
		return msg == rpctypes.ErrAuthFailed.Error() || msg == rpctypes.ErrUserEmpty.Error()
	}
	return false
}

// TLSConfig returns the TLS configuration New uses for the endpoints, read
// from the files now; nil without TLS.
func (c Config) TLSConfig() (*tls.Config, error) {
	if !c.TLS() {
		return nil, nil
	}
	return (&reloadingTLS{info: tlsInfo(c)}).config()
}

func tlsInfo(cfg Config) transport.TLSInfo {
	return transport.TLSInfo{CertFile: cfg.Cert, KeyFile: cfg.Key, TrustedCAFile: cfg.CACert}
}

// reloadingTLS is gRPC transport credentials that build a new tls.Config
// from the files for every connection, so a renewed certificate, key or CA
// is used without a restart.
type reloadingTLS struct {
	info        transport.TLSInfo
	onHandshake func(*x509.Certificate) // after a handshake that succeeded; may be nil
}

var _ credentials.TransportCredentials = (*reloadingTLS)(nil)

func (r *reloadingTLS) config() (*tls.Config, error) {
	var (
		cfg *tls.Config
		err error
	)
	if r.info.CertFile == "" && r.info.TrustedCAFile == "" {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12} // system roots
	} else if cfg, err = r.info.ClientConfig(); err != nil {
		return nil, fmt.Errorf("etcd TLS files (--etcd-cacert %q, --etcd-cert %q, --etcd-key %q): %w", r.info.TrustedCAFile, r.info.CertFile, r.info.KeyFile, err)
	}
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	return cfg, nil
}

func (r *reloadingTLS) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg, err := r.config()
	if err != nil {
		return nil, nil, err
	}
	// The certificate etcd's TLSInfo reads for this handshake (it loads
	// the files when the server asks for a client certificate).
	var presented *tls.Certificate
	if get := cfg.GetClientCertificate; get != nil && r.onHandshake != nil {
		cfg.GetClientCertificate = func(req *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := get(req)
			presented = c
			return c, err
		}
	}
	tc, info, err := credentials.NewTLS(cfg).ClientHandshake(ctx, authority, conn)
	if err != nil || r.onHandshake == nil {
		return tc, info, err
	}
	var leaf *x509.Certificate
	if presented != nil && len(presented.Certificate) > 0 {
		if leaf = presented.Leaf; leaf == nil {
			leaf, _ = x509.ParseCertificate(presented.Certificate[0])
		}
	}
	r.onHandshake(leaf)
	return tc, info, nil
}

func (r *reloadingTLS) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("etcdclient: client credentials only")
}

func (r *reloadingTLS) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2"}
}

func (r *reloadingTLS) Clone() credentials.TransportCredentials { c := *r; return &c }

//nolint:staticcheck // part of the interface
func (r *reloadingTLS) OverrideServerName(string) error { return nil }
