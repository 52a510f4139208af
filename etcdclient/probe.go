// Probe: why an etcd endpoint cannot be reached.
//
// The etcd client retries every failed connection behind its balancer, so
// a call to an endpoint that refuses connections, never answers, speaks
// plain HTTP or expects TLS ends only as "context deadline exceeded". Probe
// asks one endpoint for its status over a connection of its own, without
// retries, and returns the transport's own reason: connection refused, no
// answer in time, a TLS handshake that failed, or a server that is not an
// etcd. It sends one Status request (etcd's Maintenance service; with auth
// on, etcd 3.7 refuses it to a connection without a user, and that refusal
// is an answer too) to the endpoint named and nowhere else, returns within
// the context's deadline, and its errors carry no credential.

package etcdclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Probe returns nil when endpoint answers as an etcd server, else an error
// that names the endpoint and why. endpoint is host:port, http://host:port
// or https://host:port, as in --etcd-endpoints; https uses tlsCfg (nil: the
// system's roots), and so does a bare host:port when tlsCfg is not nil.
func Probe(ctx context.Context, endpoint string, tlsCfg *tls.Config) error {
	addr, secure, ok := hostPort(endpoint, tlsCfg != nil)
	if !ok {
		return nil // unix sockets and other schemes: nothing to say
	}
	creds := insecure.NewCredentials()
	if secure {
		if tlsCfg == nil {
			tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		creds = credentials.NewTLS(tlsCfg)
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("etcd endpoint %s: %w", endpoint, err)
	}
	defer conn.Close()
	if err := askStatus(ctx, conn); err != nil {
		return fmt.Errorf("etcd endpoint %s: %s", endpoint, reason(err))
	}
	return nil
}

// hostPort is the host:port of an endpoint and whether it takes TLS (an
// https:// one, or a bare host:port when tlsOn); ok is false for other
// schemes (unix sockets), which have no host to probe.
func hostPort(endpoint string, tlsOn bool) (addr string, secure, ok bool) {
	switch {
	case strings.HasPrefix(endpoint, "https://"):
		addr, secure = strings.TrimPrefix(endpoint, "https://"), true
	case strings.HasPrefix(endpoint, "http://"):
		addr = strings.TrimPrefix(endpoint, "http://")
	case strings.Contains(endpoint, "://"), strings.HasPrefix(endpoint, "unix:"), strings.HasPrefix(endpoint, "unixs:"):
		return "", false, false
	default:
		addr, secure = endpoint, tlsOn
	}
	// A path after the authority (https://h:2379/) is not part of the
	// address, as clientv3 takes it.
	addr, _, _ = strings.Cut(addr, "/")
	return addr, secure, true
}

// reason words a failed Status call.
func reason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return "no answer in time"
		}
		return err.Error()
	}
	msg := st.Message()
	switch {
	case st.Code() == codes.DeadlineExceeded:
		return "no answer in time (a firewall that drops packets, a frozen server, or a wrong address)"
	case strings.Contains(msg, "connection refused"):
		return "connection refused: nothing listens there"
	case strings.Contains(msg, "looked like an HTTP/1.1"), st.Code() == codes.Unimplemented:
		return "not an etcd server: " + msg
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "TLS was asked for, but the server does not speak TLS (use an http:// endpoint?): " + msg
	case strings.Contains(msg, "authentication handshake failed: EOF"):
		return "TLS handshake failed: the server hung up (does it speak TLS? use an http:// endpoint if not): " + msg
	case strings.Contains(msg, "authentication handshake failed"):
		return "TLS handshake failed: " + msg
	case strings.Contains(msg, "error reading server preface"):
		return "the server closed the connection or does not speak gRPC (does it want TLS? use an https:// endpoint): " + msg
	}
	return msg
}

// ProbeEndpoints probes every endpoint of cfg at once, with its TLS files
// as they are now, and returns each one's error (nil: it answers), in the
// order of cfg.Endpoints. A TLS configuration that cannot be read is every
// endpoint's error.
func ProbeEndpoints(ctx context.Context, cfg Config) []error {
	errs := make([]error, len(cfg.Endpoints))
	tc, err := cfg.TLSConfig()
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	var wg sync.WaitGroup
	for i, ep := range cfg.Endpoints {
		wg.Go(func() { errs[i] = Probe(ctx, ep, tc) })
	}
	wg.Wait()
	return errs
}
