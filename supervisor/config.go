package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/age"
)

// Config configures a Supervisor.
type Config struct {
	// ID is this member's id; it is the value of its election keys.
	ID string
	// Client reaches etcd.
	Client *clientv3.Client
	// Keys is the keyspace.
	Keys registry.Keys
	// Lease configures the member's session. TTL default lease.DefaultTTL
	// (5s), margin lease.DefaultMargin of the TTL.
	Lease lease.Config
	// CheckpointInterval is the time between age checkpoints. Default 1s.
	// Must be below the lease TTL.
	CheckpointInterval time.Duration
	// Candidates is how many members campaign for each life, chosen by
	// rendezvous hashing over the live members: the first runs it, the
	// others wait to take over at once. Default 2.
	Candidates int
	// InFlight bounds the election Txns (each for up to
	// engine.ElectBatch = 120 lives) a member has in flight at once, so
	// that a member that sees 100k lives at once paces itself by etcd's
	// answers. Default 8.
	InFlight int
	// ShutdownTimeout bounds each step of a graceful stop. Default 5s.
	ShutdownTimeout time.Duration
	// AbandonAfter is how long the work of a life (a Run) may go on after
	// it was told to stop at once (workload.Handle.Expired closed: the safe
	// deadline, a lost session or life, or a graceful stop past its kind's
	// stop grace and one checkpoint round) before the member gives it up:
	// its writes are fenced, the life is given up in this member (last age
	// written, election key resigned) so a peer can run it, and the member
	// does not campaign for it again until the Run returns. Default 10s.
	AbandonAfter time.Duration
	// Address is published in the member record (the HTTP address).
	Address string
	// Version is published in the member record.
	Version string
	// Logger receives life events. Default slog.Default().
	Logger *slog.Logger
	// Metrics, if set, is updated as lives come and go.
	Metrics *Metrics
	// OnSession, if set, is called with each session's lease as soon as it
	// is granted, before any key is written on it (the watchdog revokes the
	// leases of a member that died).
	OnSession func(clientv3.LeaseID)
	// Leftover are leases of a dead predecessor of this member (told by its
	// watchdog) to revoke before the first session, as those of lost
	// sessions are.
	Leftover []clientv3.LeaseID
	// Kinds are the kinds this member runs, by name (each key is its
	// Kind's Name; see package workload). The built-in kind "age"
	// (workload/age) is always run and added when missing; an entry for it
	// must have a nil New. The member campaigns only for lives of its
	// kinds, and lists them in its member record. Default: age alone.
	Kinds map[string]workload.Kind
}

// DefaultConfig returns the defaults of every setting that has one: lease
// TTL lease.DefaultTTL (5s) and its default margin, checkpoint interval
// 1s, 2 candidates per life, 8 election Txns in flight, 5s per shutdown
// step, 10s before a Run that ignores its stop is given up, slog.Default(). ID, Client and Keys have none. New fills each zero
// field of its Config from here.
func DefaultConfig() Config {
	return Config{
		Lease:              lease.Config{TTL: lease.DefaultTTL, Margin: lease.DefaultMargin(lease.DefaultTTL)},
		CheckpointInterval: time.Second,
		Candidates:         2,
		InFlight:           8,
		ShutdownTimeout:    5 * time.Second,
		AbandonAfter:       10 * time.Second,
		Logger:             slog.Default(),
	}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	if c.Lease.TTL == 0 {
		c.Lease.TTL = d.Lease.TTL
	}
	if c.Lease.Margin == 0 {
		c.Lease.Margin = lease.DefaultMargin(c.Lease.TTL)
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = d.CheckpointInterval
	}
	if c.Candidates == 0 {
		c.Candidates = d.Candidates
	}
	if c.InFlight == 0 {
		c.InFlight = d.InFlight
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = d.ShutdownTimeout
	}
	if c.AbandonAfter == 0 {
		c.AbandonAfter = d.AbandonAfter
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Lease.Logger == nil {
		c.Lease.Logger = c.Logger
	}
	if _, ok := c.Kinds[workload.AgeKind]; !ok {
		c.Kinds = maps.Clone(c.Kinds)
		if c.Kinds == nil {
			c.Kinds = make(map[string]workload.Kind, 1)
		}
		c.Kinds[workload.AgeKind] = age.Kind()
	}
}

// Validate checks c, one rule per line, naming the values.
func (c *Config) Validate() error {
	if c.ID == "" {
		return errors.New("member id is empty")
	}
	if err := registry.ValidateName(c.ID); err != nil {
		return fmt.Errorf("member id %q: %w", c.ID, err)
	}
	if c.Client == nil {
		return errors.New("etcd client is nil")
	}
	if c.Keys.Prefix() == "" {
		return errors.New("keyspace prefix is empty")
	}
	if err := c.Lease.Validate(); err != nil {
		return err
	}
	if c.CheckpointInterval <= 0 {
		return fmt.Errorf("checkpoint interval (%s) must be positive", c.CheckpointInterval)
	}
	if c.CheckpointInterval >= c.Lease.TTL {
		return fmt.Errorf("checkpoint interval (%s) must be below the lease TTL (%s)", c.CheckpointInterval, c.Lease.TTL)
	}
	if c.Candidates < 1 {
		return fmt.Errorf("candidates per life (%d) must be at least 1", c.Candidates)
	}
	if c.InFlight < 1 {
		return fmt.Errorf("election Txns in flight (%d) must be at least 1", c.InFlight)
	}
	if c.AbandonAfter < 0 {
		return fmt.Errorf("abandon-after (%s) must not be negative", c.AbandonAfter)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Kinds)) {
		k := c.Kinds[name]
		if k.Name != name {
			return fmt.Errorf("kind %q is listed under the name %q", k.Name, name)
		}
		if err := k.Validate(); err != nil {
			return err
		}
		if name == workload.AgeKind && k.New != nil {
			return fmt.Errorf("kind %q is built in: it runs nothing but the age (New must be nil)", name)
		}
	}
	return nil
}
