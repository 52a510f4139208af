package lease

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
// Only the renewals this session sends itself, and their answers, decide
// whether it lives: a stream that stalls on an etcd member cut off from its
// peers is given up at the next renewal (see renew), while the lease is
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

// streamsOpen bounds the keep-alive streams open at once: the current one
// and those given up as stalled that may still answer.
const streamsOpen = 4

// noLeaderTries is how many streams a renewal is sent on, at most, while
// the answer is "no leader" or a broken stream: as many endpoints, balanced
// round robin, when there are three.
const noLeaderTries = 3

// renew sends a keep-alive every 3/8 of the TTL and moves the safe deadline
// with each acknowledgement. It looks for a stalled stream three times as
// often, every TTL/8, so that a renewal lost on a stream that stalls goes
// out again TTL/2 after the last one answered (9/16 of the TTL after one
// sent between two looks, as on a stream just opened), with TTL/2 minus
// the margin left for its answer (at TTL 2 s: a renewal every 750 ms, one unanswered
// for 250 ms sent again on a new stream 1 s after the last answered one,
// which must be answered by 1.6 s). The longer the renewal period, the less
// of its TTL a crashed member's lease has left on average (TTL minus half
// the period), which is how long its lives wait for a peer. The renewals go on one long-lived
// LeaseKeepAlive stream, not a stream each: a client with a user and password authenticates at
// every stream it opens (clientv3's stream interceptor calls getToken), so
// a stream per renewal would mean an Authenticate per renewal.
//
// Renewals do not wait for each other. etcd answers a stream's requests in
// order, one answer each (v3rpc's LeaseKeepAlive loop), and an answer
// counts with the send time of the oldest request of its stream not yet
// answered: its own or an earlier one, so never later than its own. A
// stream whose last renewal is still unanswered at the next look (stuck on
// an etcd member that just died, or cut off from its leader) is given up
// for new renewals, and so is one that broke; a new stream is opened
// beside the loop (up to maxOpeners at once: with a password the open
// authenticates first, which can hang too) and the renewal goes out on it
// once it is open. The client's round-robin balancer puts the new stream
// on the next endpoint (with a password the Authenticate takes a pick of
// its own, so it may be the same one; the next tick opens another). A
// stream given up as stalled stays open, and an answer it still gives
// counts, for TTL minus the margin, about when no answer of it could move
// the deadline any more. A stream that breaks with a renewal unanswered (a
// refusal for want of a leader, most often) has it sent again at once, up
// to noLeaderTries times a renewal.
func (s *Session) renew(ctx context.Context) {
	defer s.wg.Done()
	look := s.cfg.TTL / 8 // a look for a stalled stream
	every := 3 * look     // a renewal
	t := time.NewTicker(look)
	defer t.Stop()
	var (
		lastSent time.Time // of the last renewal sent on a stream
		cur      *kaStream
		opening  int                                 // openers in flight
		opened   = make(chan *kaStream, streamsOpen) // from the openers
		failed   = make(chan struct{}, streamsOpen)  // an opener failed
		wg       sync.WaitGroup                      // openers and receivers
		live     = make(chan struct{}, streamsOpen)  // a slot per stream opening or open
		kicked   = make(chan struct{}, 1)            // a stream broke with a renewal unanswered
		kicks    = 0                                 // renewals sent again since the last tick
	)
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx) // every stream and opener ends with renew
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-t.C:
			// Every third tick renews; the ones between only look for a
			// stalled stream.
			if now := s.cfg.Clock.Now(); cur != nil && now.Sub(lastSent) < every-look/2 && !cur.stalled(now.Add(-look/2)) {
				continue
			}
			kicks = 0
		case <-kicked:
			// Refused for want of a leader, most often: send one again
			// at once, on a new stream.
			if kicks++; kicks >= noLeaderTries {
				continue
			}
		case <-failed:
			opening--
			if kicks++; kicks >= noLeaderTries {
				continue
			}
		case ks := <-opened:
			opening--
			if cur != nil {
				ks.retire(0) // another opener was first
				continue
			}
			cur = ks
		}
		sent := s.cfg.Clock.Now()
		if cur != nil && cur.stalled(sent.Add(-look/2)) {
			cur.retire(s.cfg.TTL - s.cfg.Margin)
			cur = nil
		}
		if cur != nil {
			err := cur.send(s.Lease(), sent)
			if err == nil {
				lastSent = sent
				continue
			}
			s.cfg.Logger.Debug("lease keep-alive stream ended", "err", err)
			cur.retire(0)
			cur = nil
		}
		// No stream to send on: open one, without waiting for it here (an
		// open can hang on the endpoint that stalled: see openStream); the
		// renewal goes out as soon as it is open.
		if opening >= maxOpeners {
			continue
		}
		select {
		case live <- struct{}{}:
		default:
			s.cfg.Logger.Debug("lease renewal failed", "err", "every keep-alive stream is stalled")
			continue // etcd answers none of them: the deadline decides
		}
		opening++
		wg.Add(1)
		go func() {
			defer wg.Done()
			ks, err := s.openStream(ctx, &wg, live, kicked)
			if err != nil {
				<-live
				if ctx.Err() == nil {
					s.cfg.Logger.Debug("lease renewal failed", "err", err)
				}
				failed <- struct{}{}
				return
			}
			opened <- ks
		}()
	}
}

// maxOpeners bounds the keep-alive streams being opened at once.
const maxOpeners = 2

// kaStream is one LeaseKeepAlive stream and the send times of its
// renewals not yet answered, oldest first.
type kaStream struct {
	stream pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc

	mu      sync.Mutex
	pending []time.Time
	broken  bool
	retired bool
	keep    *time.Timer // closes a retired stream at the latest
}

// openStream opens a keep-alive stream, requiring a leader, and starts its
// receiver, which holds a slot of live until the stream ends, and sends on
// kicked (without blocking) when the stream breaks with a renewal
// unanswered. It runs beside the renew loop: with a user and password,
// clientv3 authenticates before it opens a stream (a unary call, which can
// hang on the very endpoint that stalled), and the loop must go on meanwhile.
// It gives up after the TTL.
func (s *Session) openStream(ctx context.Context, wg *sync.WaitGroup, live, kicked chan struct{}) (*kaStream, error) {
	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	slow := time.AfterFunc(s.cfg.TTL, cancel)
	st, err := pb.NewLeaseClient(s.cli.ActiveConnection()).LeaseKeepAlive(sctx)
	if !slow.Stop() && err == nil {
		err = fmt.Errorf("opening a keep-alive stream took over %s", s.cfg.TTL)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	ks := &kaStream{stream: st, cancel: cancel}
	wg.Add(1)
	go func() {
		defer func() { <-live; wg.Done() }()
		if s.receive(ctx, ks) {
			select {
			case kicked <- struct{}{}:
			default:
			}
		}
	}()
	return ks, nil
}

// send sends one renewal of lease, sent at sent.
func (ks *kaStream) send(lease clientv3.LeaseID, sent time.Time) error {
	ks.mu.Lock()
	if ks.broken {
		ks.mu.Unlock()
		return io.EOF
	}
	ks.pending = append(ks.pending, sent)
	ks.mu.Unlock()
	// Only the renew loop sends: gRPC allows one sender at a time.
	return ks.stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(lease)})
}

// stalled reports whether the stream is broken or has a renewal sent
// before by that is unanswered.
func (ks *kaStream) stalled(by time.Time) bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.broken || len(ks.pending) > 0 && ks.pending[0].Before(by)
}

// retire takes the stream out of use for new renewals; it is closed once
// every renewal on it is answered, or keep after it was retired at the
// latest.
func (ks *kaStream) retire(keep time.Duration) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.retired = true
	if len(ks.pending) == 0 || ks.broken || keep <= 0 {
		ks.cancel()
		return
	}
	ks.keep = time.AfterFunc(keep, ks.cancel)
}

// ended marks the stream broken and stops its keep timer: its receiver
// returned.
func (ks *kaStream) ended() {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.broken = true
	if ks.keep != nil {
		ks.keep.Stop()
	}
}

// answered pops the send time the next answer counts with; ok is false
// when no renewal is pending (an answer etcd should not send). A retired
// stream with nothing left pending is closed.
func (ks *kaStream) answered() (sent time.Time, ok bool) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if len(ks.pending) == 0 {
		return time.Time{}, false
	}
	sent = ks.pending[0]
	ks.pending = ks.pending[1:]
	if ks.retired && len(ks.pending) == 0 {
		ks.cancel()
	}
	return sent, true
}

// receive counts the stream's answers until it ends. An answer with no
// TTL is etcd's word that the lease is gone. It reports whether the stream
// broke, not retired, with a renewal unanswered, for a reason worth
// sending it again at once (see retryable).
func (s *Session) receive(ctx context.Context, ks *kaStream) (again bool) {
	defer ks.ended()
	defer ks.cancel()
	for {
		resp, err := ks.stream.Recv()
		if err != nil {
			ks.mu.Lock()
			ks.broken = true
			again = len(ks.pending) > 0 && !ks.retired && retryable(err)
			ks.mu.Unlock()
			if ctx.Err() == nil && status.Code(err) != codes.Canceled {
				s.cfg.Logger.Debug("lease keep-alive stream ended", "err", err)
			}
			return again && ctx.Err() == nil
		}
		sent, ok := ks.answered()
		switch {
		case !ok:
		case resp.TTL <= 0:
			s.cfg.Logger.Warn("lease is gone on the server", "lease", fmt.Sprintf("%x", int64(s.Lease())))
			s.dl.expire()
		default:
			s.dl.renewed(sent, time.Duration(resp.TTL)*time.Second)
		}
	}
}

// retryable reports whether a failed stream open may be tried again at
// once: refused for want of a leader, or closed under it.
func retryable(err error) bool {
	return etcdclient.IsNoLeader(err) || errors.Is(err, io.EOF) || status.Code(err) == codes.Unavailable
}
