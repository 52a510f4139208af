package etcdclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// probeKey is the key, under the prefix, that Check asks write permission
// for. Check never writes it.
const probeKey = "permission-probe"

// Check asks etcd, without changing anything, whether the client may read
// every key under prefix and write under it: one Txn whose compare reads
// the whole prefix and whose branch, never taken, puts a key under it (etcd
// checks the permission of both branches before it evaluates the compare).
// It returns nil, or the error Explain words.
func Check(ctx context.Context, cli *clientv3.Client, prefix string) error {
	key := prefix + probeKey
	// A version is never below 0, so the Then branch never runs.
	_, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(prefix), "<", 0).WithPrefix()).
		Then(clientv3.OpPut(key, "")).
		Commit()
	return err
}

// Problem is an error worded for the operator: what went wrong and what
// fixes it. Its Err is the etcd or TLS error it explains.
type Problem struct {
	// Cause is the short name of what went wrong: "authentication failed",
	// "permission denied", "TLS" or "unreachable".
	Cause string
	// Msg is the one-line message.
	Msg string
	// Err is the error explained.
	Err error
}

func (p *Problem) Error() string { return p.Msg }
func (p *Problem) Unwrap() error { return p.Err }

// Explain words err, from a request under prefix made with cfg, as one
// Problem naming its cause; nil stays nil, and so does any other error (a
// Problem, or one Explain has no words for, is returned unchanged).
// When err is a time-out, Explain makes a TLS handshake of its own with each
// endpoint (at most diagnoseTimeout each) to tell a TLS refusal, which gRPC
// reports as a time-out, from an etcd that does not answer.
// The words hold no password, token or key: only etcd's and Go's error
// texts, file names, the user name and the prefix.
func Explain(err error, cfg Config, prefix string) error {
	if err == nil {
		return nil
	}
	var p *Problem
	if errors.As(err, &p) {
		return p
	}
	eps := strings.Join(cfg.Endpoints, ",")
	who := fmt.Sprintf("etcd user %q", cfg.User)
	role := "immortald"
	user := cfg.User
	if cfg.User == "" {
		who = "the etcd user named by the client certificate's common name"
		user = "<user>"
	}
	msg := err.Error()
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed) || strings.Contains(msg, rpctypes.ErrAuthFailed.Error()):
		return &Problem{Cause: "authentication failed", Err: err, Msg: fmt.Sprintf(
			"etcd at %s: authentication failed for %s: wrong user or password (--etcd-user; password from IMMORTALD_ETCD_PASSWORD or --etcd-password-file)", eps, who)}
	case errors.Is(err, rpctypes.ErrUserEmpty) || strings.Contains(msg, rpctypes.ErrUserEmpty.Error()):
		return &Problem{Cause: "authentication failed", Err: err, Msg: fmt.Sprintf(
			"etcd at %s: authentication failed: etcd has auth enabled and no user was given; set --etcd-user with IMMORTALD_ETCD_PASSWORD or --etcd-password-file, or a client certificate (--etcd-cert) whose common name is an etcd user", eps)}
	case errors.Is(err, rpctypes.ErrPermissionDenied) || strings.Contains(msg, rpctypes.ErrPermissionDenied.Error()):
		return &Problem{Cause: "permission denied", Err: err, Msg: fmt.Sprintf(
			"etcd at %s: permission denied on %s for %s: its roles must read and write every key under the prefix; "+
				"an etcd root user fixes it with: etcdctl role add %s; etcdctl role grant-permission %s --prefix=true readwrite %s; etcdctl user grant-role %s %s",
			eps, prefix, who, role, role, prefix, user, role)}
	}
	if t := tlsCause(msg, cfg); t != "" {
		return &Problem{Cause: "TLS", Err: err, Msg: fmt.Sprintf("etcd at %s: TLS: %s", eps, t)}
	}
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "context deadline exceeded") || strings.Contains(msg, "Unavailable") {
		// gRPC says only that it timed out: a handshake of our own says why.
		if d := diagnose(cfg); d != "" {
			return &Problem{Cause: "TLS", Err: err, Msg: fmt.Sprintf("etcd at %s: TLS: %s", eps, d)}
		}
		return &Problem{Cause: "unreachable", Err: err, Msg: fmt.Sprintf("cannot reach etcd at %s (timed out): %s", eps, probeAll(cfg))}
	}
	return err
}

// tlsCause names the TLS problem in an error text from gRPC, which carries
// the handshake error as text only; "" when there is none.
func tlsCause(msg string, cfg Config) string {
	ca := "the system roots"
	if cfg.CACert != "" {
		ca = "--etcd-cacert " + cfg.CACert
	}
	switch {
	case strings.Contains(msg, "certificate signed by unknown authority"):
		return fmt.Sprintf("etcd's server certificate is not signed by a CA in %s", ca)
	case strings.Contains(msg, "x509: certificate is valid for") || strings.Contains(msg, "x509: cannot validate certificate"):
		return fmt.Sprintf("etcd's server certificate does not name the endpoint's host (%s)", x509Detail(msg))
	case strings.Contains(msg, "x509: certificate has expired or is not yet valid"):
		return fmt.Sprintf("etcd's server certificate has expired or is not yet valid (%s)", x509Detail(msg))
	case strings.Contains(msg, "tls: expired certificate"):
		return fmt.Sprintf("etcd refused the client certificate --etcd-cert %s: it has expired", cfg.Cert)
	case strings.Contains(msg, "tls: unknown certificate authority"):
		return fmt.Sprintf("etcd refused the client certificate --etcd-cert %s: it is not signed by a CA etcd trusts (--trusted-ca-file)", cfg.Cert)
	case strings.Contains(msg, "tls: certificate required"):
		return "etcd requires a client certificate (it runs with --client-cert-auth): give --etcd-cert and --etcd-key"
	case strings.Contains(msg, "tls: bad certificate"):
		return fmt.Sprintf("etcd refused the client certificate --etcd-cert %s", cfg.Cert)
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "the endpoint speaks plain http, not TLS: use an http:// endpoint without TLS settings, or enable TLS on etcd"
	case strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:"):
		return x509Detail(msg)
	}
	return ""
}

// x509Detail cuts the x509 or tls error out of a gRPC error text.
func x509Detail(msg string) string {
	for _, k := range []string{"x509: ", "tls: "} {
		if i := strings.Index(msg, k); i >= 0 {
			return strings.TrimRight(msg[i:], `"`)
		}
	}
	return msg
}

// diagnoseTimeout bounds each step of diagnose's handshake.
const diagnoseTimeout = 3 * time.Second

// diagnose makes a TLS handshake with each endpoint as New would and
// returns the first TLS problem found, worded; "" when there is none (the
// endpoints cannot be reached, or accept the handshake). With a plain
// endpoint it checks whether the endpoint speaks TLS.
func diagnose(cfg Config) string {
	for _, e := range cfg.Endpoints {
		host := e
		if u, err := url.Parse(e); err == nil && u.Host != "" {
			host = u.Host
		}
		var tc *tls.Config
		if cfg.TLS() {
			c, err := (&reloadingTLS{info: tlsInfo(cfg)}).config()
			if err != nil {
				return err.Error()
			}
			tc = c
		} else {
			// Does a plain endpoint speak TLS? Trust nothing, only look.
			tc = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // no data is sent
		}
		tc.NextProtos = []string{"h2"}
		if h, _, err := net.SplitHostPort(host); err == nil && tc.ServerName == "" {
			tc.ServerName = h
		}
		reached, err := handshake(host, tc)
		if !reached {
			continue
		}
		if !cfg.TLS() {
			if err == nil || strings.Contains(err.Error(), "remote error: tls:") {
				return "the endpoint speaks TLS but is given as plain http: use https:// (with --etcd-cacert, and --etcd-cert and --etcd-key if etcd checks client certificates)"
			}
			continue
		}
		if err != nil {
			if t := tlsCause(err.Error(), cfg); t != "" {
				return t
			}
		}
	}
	return ""
}

// handshake dials addr, makes a TLS handshake with tc and waits a moment
// for the server's answer: with TLS 1.3 a server refuses a client
// certificate only after the client thinks the handshake is done. reached
// is false when addr cannot be reached; a nil error means the server
// accepted the connection.
func handshake(addr string, tc *tls.Config) (reached bool, err error) {
	d := net.Dialer{Timeout: diagnoseTimeout}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return false, nil
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(diagnoseTimeout))
	conn := tls.Client(raw, tc)
	if err := conn.Handshake(); err != nil {
		return true, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(diagnoseTimeout / 3))
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return true, nil // accepted, and waits for the client to speak
		}
		if strings.Contains(err.Error(), "tls:") {
			return true, err
		}
	}
	return true, nil
}

// probeAll probes every endpoint of cfg (ProbeEndpoints) and says why each
// that fails cannot be reached, or that all of them answer.
func probeAll(cfg Config) string {
	ctx, cancel := context.WithTimeout(context.Background(), diagnoseTimeout)
	defer cancel()
	var why []string
	for _, err := range ProbeEndpoints(ctx, cfg) {
		if err != nil {
			why = append(why, err.Error())
		}
	}
	if len(why) == 0 {
		return "every endpoint answers a status request, but requests time out (no etcd leader?)"
	}
	return strings.Join(why, "; ")
}
