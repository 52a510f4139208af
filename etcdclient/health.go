// Endpoint health: an etcd member that stops answering while its host
// still acknowledges TCP (its process frozen, its VM or container paused,
// its node's kubelet and runtime stuck) is taken out of the client's
// endpoints until it answers again.
//
// gRPC learns of such a connection only from its keep-alive ping, at the
// earliest KeepAliveTime + KeepAliveTimeout (10 s + 2 s: gRPC raises a time
// below 10 s to 10 s) after the last frame it received; TCP_USER_TIMEOUT does
// not fire, since the peer's kernel acknowledges every byte. Until then the
// round-robin balancer keeps sending calls and streams there, where they
// hang: a standby's watch on that member sees no deletion, a campaign Txn
// sent there waits out its timeout, and the failover of a lost node's lives
// waits for gRPC rather than for the lease.
//
// With Config.HealthInterval set, New starts a monitor that asks every
// endpoint for its status (etcd's Maintenance Status; any answer counts,
// a refusal for want of a user included) over a connection of its own, every HealthInterval, each
// bounded by twice that. An endpoint that fails HealthFailures probes in a
// row is taken out with clientv3.Client.SetEndpoints, so no new call or
// stream goes there, and the client's TCP connections to it are closed
// (New dials through a dialer that keeps them; gRPC alone would only drain
// them, and the streams on them would hang on): the calls on them fail at
// once (clientv3 retries them on the others where that is safe), the
// streams break and are opened again on the others (a watch resumes from
// its revision, a lease keep-alive stream is opened anew). An endpoint is
// put back at its first answer. The monitor never takes out the last endpoint
// that answered: with none answering, the client keeps them all, as it
// would without it. It stops when the client is closed.
//
// Bound: an endpoint that stopped answering is out of the client within
// (1 + 2·HealthFailures) × HealthInterval (2.5 s at the daemon's 500 ms)
// instead of 12 s. A false alarm (two probes in a row without an answer
// within a second from a member that is only slow) costs its connection's
// calls a retry on the others. A member that answers Status but has no
// leader is not this monitor's concern: every call requires a leader
// (leader.go).

package etcdclient

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// HealthFailures is how many probes in a row an endpoint fails before it
// is taken out of the client's endpoints.
const HealthFailures = 2

// DefaultHealthInterval is the probe interval the daemon uses.
const DefaultHealthInterval = 500 * time.Millisecond

// health is the monitor of one client's endpoints.
type health struct {
	cli       *clientv3.Client
	endpoints []string           // as configured, in order
	conns     []*grpc.ClientConn // one per endpoint; nil where there is no host to probe
	dialed    *dialer            // the client's connections
	interval  time.Duration
	log       *slog.Logger
	onChange  func(out []string)
}

// wantHealth reports whether New starts the monitor for cfg: with an
// interval and two endpoints or more (with one there is nowhere else to
// send calls).
func wantHealth(cfg Config) bool { return cfg.HealthInterval > 0 && len(cfg.Endpoints) >= 2 }

// startHealth starts the monitor of cli's endpoints, whose connections d
// dialed. creds are the connections' TLS credentials, nil for plain ones.
func startHealth(cli *clientv3.Client, cfg Config, d *dialer, creds credentials.TransportCredentials) error {
	h := &health{cli: cli, endpoints: slices.Clone(cfg.Endpoints), dialed: d, interval: cfg.HealthInterval, log: cfg.Logger, onChange: cfg.OnEndpointsOut}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	for _, ep := range h.endpoints {
		addr, secure, ok := hostPort(ep, creds != nil)
		if !ok {
			h.conns = append(h.conns, nil)
			continue
		}
		c := insecure.NewCredentials()
		if secure { // only with TLS on (Config.TLS), so creds is set
			c = creds
		}
		// Keep-alive, so that a probe connection whose peer went away for
		// good (a killed node) is closed and dialed again.
		conn, err := grpc.NewClient("passthrough:///"+addr, connectParams(), grpc.WithTransportCredentials(c),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepAliveTime, Timeout: KeepAliveTimeout}))
		if err != nil {
			h.close()
			return err
		}
		h.conns = append(h.conns, conn)
	}
	go h.run(cli.Ctx())
	return nil
}

func (h *health) close() {
	for _, c := range h.conns {
		if c != nil {
			_ = c.Close()
		}
	}
}

// run probes until ctx (the client's) ends.
func (h *health) run(ctx context.Context) {
	defer h.close()
	fails := make([]int, len(h.endpoints))
	out := make([]bool, len(h.endpoints))
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		errs := h.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		changed := false
		for i, err := range errs {
			switch {
			case err == nil:
				fails[i] = 0
				if out[i] {
					out[i], changed = false, true
					h.log.Info("etcd endpoint answers again: using it again", "endpoint", h.endpoints[i])
				}
			case !out[i]:
				if fails[i]++; fails[i] >= HealthFailures {
					out[i], changed = true, true
					h.log.Warn("etcd endpoint does not answer: not using it until it does", "endpoint", h.endpoints[i],
						"probes_failed", fails[i], "err", err)
				}
			}
		}
		if changed {
			h.apply(out)
		}
	}
}

// probe asks every endpoint for its status at once, each within twice the
// interval; nil where it answered (or has no host to probe).
func (h *health) probe(ctx context.Context) []error {
	errs := make([]error, len(h.conns))
	ctx, cancel := context.WithTimeout(ctx, 2*h.interval)
	defer cancel()
	var wg sync.WaitGroup
	for i, c := range h.conns {
		if c == nil {
			continue
		}
		wg.Go(func() { errs[i] = askStatus(ctx, c) })
	}
	wg.Wait()
	return errs
}

// askStatus sends one Status request on conn: nil when the server
// answered (answered), else the call's error.
func askStatus(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := pb.NewMaintenanceClient(conn).Status(ctx, &pb.StatusRequest{})
	if answered(err) {
		return nil
	}
	return err
}

// answered reports whether a probe's outcome came from the etcd server: a
// status, or a refusal (with auth on, etcd 3.7 wants a user for Status, and
// the probe sends no password: "user name is empty" is an answer too).
// Only no answer in time, a connection that cannot be made or broke, and a
// probe cancelled are not.
func answered(err error) bool {
	if err == nil {
		return true
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Unavailable, codes.Canceled:
		return false
	}
	return !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)
}

// apply sets the client's endpoints to those not out, in their configured
// order, and closes the connections to the others; when every one is out,
// it uses them all (nothing answers: gRPC's own handling is as good as
// any). onChange hears of the ones out either way.
func (h *health) apply(out []bool) {
	var in, gone []string
	for i, ep := range h.endpoints {
		if out[i] {
			gone = append(gone, ep)
		} else {
			in = append(in, ep)
		}
	}
	if len(in) == 0 {
		h.log.Warn("no etcd endpoint answers: using them all", "endpoints", strings.Join(h.endpoints, ","))
		h.cli.SetEndpoints(h.endpoints...)
	} else {
		h.cli.SetEndpoints(in...)
		for _, ep := range gone {
			if addr, _, ok := hostPort(ep, false); ok {
				h.dialed.closeAll(addr)
			}
		}
	}
	if h.onChange != nil {
		h.onChange(gone)
	}
}

// dialer dials the client's TCP connections and keeps them by address, so
// that the monitor can close those to an endpoint it takes out. It sets
// TCP_USER_TIMEOUT on each itself, as gRPC does on the connections its own
// dialer makes (gRPC sets it only on a *net.TCPConn, and what it gets from
// here is a wrapper that leaves the set when closed).
type dialer struct {
	userTimeout time.Duration
	mu          sync.Mutex
	conns       map[string]map[*trackedConn]struct{}
}

func newDialer(userTimeout time.Duration) *dialer {
	return &dialer{userTimeout: userTimeout, conns: map[string]map[*trackedConn]struct{}{}}
}

// dial is the client's grpc.WithContextDialer: addr is host:port (or
// unix:path, as gRPC's own dialer takes it).
func (d *dialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	network, target := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, target = "unix", path
	} else if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, target = "unix", path
	}
	nd := net.Dialer{Control: func(network, _ string, rc syscall.RawConn) error {
		if !strings.HasPrefix(network, "tcp") || d.userTimeout <= 0 {
			return nil
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = setUserTimeout(fd, d.userTimeout) }); err != nil {
			return err
		}
		return serr
	}}
	c, err := nd.DialContext(ctx, network, target)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, d: d, addr: addr}
	d.mu.Lock()
	if d.conns[addr] == nil {
		d.conns[addr] = map[*trackedConn]struct{}{}
	}
	d.conns[addr][tc] = struct{}{}
	d.mu.Unlock()
	return tc, nil
}

// closeAll closes every open connection to addr.
func (d *dialer) closeAll(addr string) {
	d.mu.Lock()
	var cs []*trackedConn
	for c := range d.conns[addr] {
		cs = append(cs, c)
	}
	d.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
}

// open is how many connections to addr are open.
func (d *dialer) open(addr string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns[addr])
}

// trackedConn leaves its dialer's set when closed.
type trackedConn struct {
	net.Conn
	d    *dialer
	addr string
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		delete(c.d.conns[c.addr], c)
		if len(c.d.conns[c.addr]) == 0 {
			delete(c.d.conns, c.addr)
		}
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}
