// Leaders and connections.
//
// Every call through a client of New requires an etcd leader. An etcd member
// cut off from its peers still answers clients: without this, a write or a
// linearizable read sent to it waits for etcd's request timeout (7 s by
// default) and a watch or keep-alive stream on it just goes quiet, while the
// other members form a healthy quorum. With it, such a member refuses a call
// at once ("etcdserver: no leader") as soon as it knows it has no leader, and
// cancels its streams a few election timeouts later; the call is then tried
// again on the next endpoint (the client balances calls round robin over
// every endpoint whose connection is up, and knows nothing of partitions:
// etcd-io/etcd#8673). A call refused for want of a leader never reached the
// handler, so even a write is safe to send again.
//
// The connection settings bound how long a member takes to talk to etcd
// again after a path that dropped bytes. A dead connection is noticed by the
// kernel once data sent on it goes unacknowledged for KeepAliveTimeout (gRPC
// sets it as the socket's TCP_USER_TIMEOUT; a member always has a request out
// within a checkpoint interval), or else by a keep-alive ping unanswered for
// KeepAliveTimeout; a connection attempt that hangs is given up after
// MinConnectTimeout, and attempts are at most MaxReconnectDelay apart
// (gRPC's defaults are 20 s and 120 s).
package etcdclient

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Connection settings; see the comment at the top of this file.
const (
	DialTimeout = 5 * time.Second
	// KeepAliveTime is gRPC's floor: it raises anything lower to 10 s
	// (the 2 s asked for before was silently raised).
	KeepAliveTime     = 10 * time.Second
	KeepAliveTimeout  = 2 * time.Second
	MinConnectTimeout = 3 * time.Second
	MaxReconnectDelay = 2 * time.Second
)

// noLeaderTries is how many times a call is sent when each answer is "no
// leader": on as many endpoints, balanced round robin, when there are three.
const noLeaderTries = 3

// requireLeaderUnary sends every call with the require-leader flag, and
// again, up to noLeaderTries times, while the member asked has no leader.
func requireLeaderUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx = clientv3.WithRequireLeader(ctx)
	var err error
	for range noLeaderTries {
		err = invoker(ctx, method, req, reply, cc, opts...)
		if !IsNoLeader(err) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// requireLeaderStream opens every stream with the require-leader flag: the
// member refuses it without a leader, and cancels it when it loses its
// leader for a while (three election timeouts), so that watches and lease
// keep-alives move to another member instead of going quiet.
func requireLeaderStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(clientv3.WithRequireLeader(ctx), desc, cc, method, opts...)
}

// IsNoLeader reports whether err is etcd's "no leader" refusal.
func IsNoLeader(err error) bool {
	return err != nil && errors.Is(rpctypes.Error(err), rpctypes.ErrNoLeader)
}

// connectOptions are the gRPC dial options of every client: reconnection
// bounded as above, and every call and stream requiring a leader.
func connectOptions() []grpc.DialOption {
	return []grpc.DialOption{
		connectParams(),
		// Chained: they run inside clientv3's own retry interceptors,
		// once per attempt.
		grpc.WithChainUnaryInterceptor(requireLeaderUnary),
		grpc.WithChainStreamInterceptor(requireLeaderStream),
	}
}

// connectParams bound connection attempts (see the top of this file).
func connectParams() grpc.DialOption {
	return grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: MaxReconnectDelay},
		MinConnectTimeout: MinConnectTimeout,
	})
}
