package lease

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/etcdclient"
)

// MinTTL is the shortest lease TTL accepted: etcd's practical floor (its
// leader election and a renewal round trip must fit in it).
const MinTTL = 2 * time.Second

// DefaultTTL is the lease TTL when none is given: the member's, the
// supervisor's and the watchdog's default (--lease-ttl).
const DefaultTTL = 5 * time.Second

// MaxTTL is the longest lease TTL accepted. The TTL is how long a crashed
// member's lives wait for a peer; etcd itself takes up to 9e9 s
// (MaxLeaseTTL), which would mean a crash is never failed over.
const MaxTTL = 10 * time.Minute

// Config configures a Session.
type Config struct {
	// TTL of the lease; whole seconds, from MinTTL to MaxTTL. Default
	// DefaultTTL (5s).
	TTL time.Duration
	// Margin is subtracted from every renewal's TTL to get the safe
	// deadline. Default: TTL/5, at least 250ms. Must be below TTL/2.
	Margin time.Duration
	// Clock drives the safe deadline. Default: RealClock.
	Clock Clock
	// Logger receives renewal trouble. Default: slog.Default().
	Logger *slog.Logger
}

// DefaultMargin is the margin used for ttl when none is given.
func DefaultMargin(ttl time.Duration) time.Duration {
	return max(ttl/5, 250*time.Millisecond)
}

// Validate checks c, one rule per line, naming the values.
func (c *Config) Validate() error {
	if c.TTL < MinTTL || c.TTL > MaxTTL {
		return fmt.Errorf("lease TTL (%s) must be from %s (etcd's practical floor) to %s (the longest a crashed member's lives may wait)", c.TTL, MinTTL, MaxTTL)
	}
	if c.TTL%time.Second != 0 {
		return fmt.Errorf("lease TTL (%s) must be whole seconds: etcd leases count seconds", c.TTL)
	}
	if c.Margin <= 0 || c.Margin >= c.TTL/2 {
		return fmt.Errorf("lease margin (%s) must be above 0 and below half the TTL (%s)", c.Margin, c.TTL)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Margin == 0 {
		c.Margin = DefaultMargin(c.TTL)
	}
	if c.Clock == nil {
		c.Clock = RealClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Session is one member's lease, with its safe deadline.
type Session struct {
	cfg   Config
	cli   *clientv3.Client
	lease clientv3.LeaseID
	dl    *deadline

	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{}
	once   sync.Once
}

// Open grants a lease and starts renewing it. Like a renewal, the grant
// requires an etcd leader and gives up when its answer would come too late
// to be of use (after TTL minus the margin, the safe deadline of the lease).
//
// Only the renewals this session sends itself decide whether it lives: no
// keep-alive stream of the client (concurrency.Session's) can end it, since
// such a stream can sit on an etcd member cut off from its peers until the
// client's own deadline for it closes it, a TTL later, while the lease is
// renewed through the other members.
func Open(ctx context.Context, cli *clientv3.Client, cfg Config) (*Session, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sent := cfg.Clock.Now()
	// A grant that etcd does not answer before the safe deadline it would
	// start would leave no useful deadline; without a bound it would wait
	// forever on an endpoint that cannot be reached, and say nothing.
	gctx, gcancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), cfg.TTL-cfg.Margin)
	grant, err := cli.Grant(gctx, int64(cfg.TTL/time.Second))
	gcancel()
	if err != nil {
		return nil, fmt.Errorf("grant lease of %s: %w", cfg.TTL, err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	s := &Session{
		cfg:    cfg,
		cli:    cli,
		lease:  grant.ID,
		dl:     newDeadline(cfg.Clock, cfg.Margin, sent, time.Duration(grant.TTL)*time.Second),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	s.wg.Add(2)
	go s.renew(rctx)
	go s.watch(rctx)
	return s, nil
}

// Lease returns the lease id.
func (s *Session) Lease() clientv3.LeaseID { return s.lease }

// Done is closed when the session is lost or closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// Deadline returns the current safe deadline.
func (s *Session) Deadline() time.Time { return s.dl.get() }

// Close stops renewing and revokes the lease, so that everything on it goes
// in one revision. Pass a fresh context: a cancelled one would leave the
// lease to expire on its own.
func (s *Session) Close(ctx context.Context) error {
	s.stop()
	if _, err := s.cli.Revoke(ctx, s.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoke lease %x: %w", int64(s.Lease()), err)
	}
	return nil
}

// Abandon stops renewing without revoking: the lease expires on the server
// after its TTL. This is what a crash looks like to peers.
func (s *Session) Abandon() { s.stop() }

func (s *Session) stop() {
	s.lose()
	s.cancel()
	s.wg.Wait()
	s.dl.close()
}

func (s *Session) lose() { s.once.Do(func() { close(s.done) }) }

// watch turns every sign of loss into Done.
func (s *Session) watch(ctx context.Context) {
	defer s.wg.Done()
	select {
	case <-s.dl.expired:
		if ctx.Err() == nil {
			s.cfg.Logger.Warn("lease safe deadline passed without a renewal", "lease", fmt.Sprintf("%x", int64(s.Lease())))
		}
	case <-ctx.Done():
	}
	s.lose()
}

// renewalsInFlight bounds the renewals outstanding at once.
const renewalsInFlight = 4

// noLeaderTries is how many times a renewal is sent while the answer is "no
// leader": on as many endpoints, balanced round robin, when there are three.
const noLeaderTries = 3

// renew sends a keep-alive every TTL/4 and moves the safe deadline with each
// acknowledgement. Renewals do not wait for each other: one stuck on an etcd
// member that just died must not hold back the next until the safe deadline
// has passed, and one that etcd answers slowly still counts, with its own
// send time, when its answer comes.
func (s *Session) renew(ctx context.Context) {
	defer s.wg.Done()
	every := s.cfg.TTL / 4
	t := time.NewTicker(every)
	defer t.Stop()
	slots := make(chan struct{}, renewalsInFlight)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-t.C:
		}
		select {
		case slots <- struct{}{}:
		default:
			continue // etcd answers none of them: the deadline decides
		}
		inflight.Add(1)
		go func(sent time.Time) {
			defer func() { <-slots; inflight.Done() }()
			s.renewOnce(ctx, sent)
		}(s.cfg.Clock.Now())
	}
}

// renewOnce sends one keep-alive, sent at sent. A member without an etcd
// leader refuses it at once, before doing anything, and clientv3 does not
// send it again: it is sent again here, to the next endpoint, up to
// noLeaderTries times in all. The refusal reaches the client as "no
// leader", or as a bare EOF when the member closed the keep-alive stream
// before the request was written; a keep-alive is idempotent, so any
// failure but a lease that is gone is worth another try. It gives up when
// its answer could no longer move the deadline.
func (s *Session) renewOnce(ctx context.Context, sent time.Time) {
	rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.cfg.TTL-s.cfg.Margin)
	defer cancel()
	resp, err := s.cli.KeepAliveOnce(rctx, s.Lease())
	for try := 1; try < noLeaderTries && retryable(err) && rctx.Err() == nil; try++ {
		resp, err = s.cli.KeepAliveOnce(rctx, s.Lease())
	}
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		s.cfg.Logger.Warn("lease is gone on the server", "lease", fmt.Sprintf("%x", int64(s.Lease())))
		s.dl.expire()
	case err != nil:
		if ctx.Err() == nil {
			s.cfg.Logger.Debug("lease renewal failed", "err", err)
		}
	case resp.TTL <= 0:
		s.dl.expire()
	default:
		s.dl.renewed(sent, time.Duration(resp.TTL)*time.Second)
	}
}

// retryable reports whether a failed keep-alive may be sent again at once:
// refused for want of a leader, or its stream closed under it.
func retryable(err error) bool {
	return etcdclient.IsNoLeader(err) || errors.Is(err, io.EOF)
}
