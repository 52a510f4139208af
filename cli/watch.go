package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/immortald/immortald/registry"
)

// lostAfter is how long a watching command (ls -w, get-age -w) waits for
// etcd's connection to come back before it gives up with exit 1.
const lostAfter = 5 * time.Second

// errLost is the cause of a watching command's context when etcd's
// connection was not ready for lostAfter.
var errLost = errors.New("etcd connection down")

// tick is how often get-age -w prints the age when nothing changes.
const tick = time.Second

// lineTime is the format of the TIME of ls -w lines: local time, in
// milliseconds.
const lineTime = "2006-01-02T15:04:05.000Z07:00"

func addWatch(cmd *cobra.Command, usage string) {
	cmd.Flags().BoolP("watch", "w", false, usage)
}

// watching reports whether -w was given. It is read from the flag alone,
// not from IMMORTALD_WATCH or the config file: a setting that made every
// ls run forever would break scripts.
func watching(cmd *cobra.Command) bool {
	w, _ := cmd.Flags().GetBool("watch")
	return w
}

// withWatch is withClient for a command that runs until Ctrl-C or SIGTERM
// (it returns nil then: exit 0) or until etcd's connection has been down
// for lostAfter: its context then ends with the cause errLost, which
// watchEnd words. Each read of etcd is f's to bound.
func (a *app) withWatch(cmd *cobra.Command, f clientFunc) error {
	return a.withClientIn(cmd, func(cli *clientv3.Client) (context.Context, context.CancelFunc) {
		ctx, stop := untilSignal(cmd)
		ctx, cancel := whileConnected(ctx, cli, lostAfter)
		return ctx, func() { cancel(); stop() }
	}, f)
}

// whileConnected returns a context that ends with the cause errLost once
// cli's connection has not been ready (connected to an etcd endpoint) for
// after in a row. It costs etcd nothing: it follows the gRPC connection's
// state. The returned cancel waits for its goroutine.
func whileConnected(parent context.Context, cli *clientv3.Client, after time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	conn := cli.ActiveConnection()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			s := conn.GetState()
			if s == connectivity.Ready {
				if !conn.WaitForStateChange(ctx, s) {
					return
				}
				continue
			}
			down, stop := context.WithTimeout(ctx, after)
			for s != connectivity.Ready {
				if s == connectivity.Idle {
					conn.Connect()
				}
				if !conn.WaitForStateChange(down, s) {
					break
				}
				s = conn.GetState()
			}
			stop()
			if ctx.Err() != nil {
				return
			}
			if s != connectivity.Ready {
				cancel(errLost)
				return
			}
		}
	}()
	return ctx, func() { cancel(context.Canceled); <-done }
}

// watchEnd is how a watching command ends once ctx has ended or err (from
// etcd) happened: nil after Ctrl-C or SIGTERM, else one worded error.
func (a *app) watchEnd(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errLost) {
		return fmt.Errorf("lost etcd (no connection for %s): %w", lostAfter, a.reach(context.DeadlineExceeded))
	}
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("lost etcd: %w", a.reach(err))
}

// openWatch starts a StatusWatch, its first read bounded by requestTimeout.
func (a *app) openWatch(ctx context.Context, cli *clientv3.Client, keys registry.Keys) (*registry.StatusWatch, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	w, err := registry.WatchStatus(rctx, cli, keys)
	if err != nil {
		if ctx.Err() != nil {
			return nil, a.watchEnd(ctx, err)
		}
		return nil, a.reach(err)
	}
	return w, nil
}

// WatchLine is one line of `immortald ls -w -o json`: a life as first
// listed (event "listed") or one change of it. Life has the fields of
// `ls -o json`; for "removed", as last seen.
type WatchLine struct {
	Event string `json:"event"`
	// Rev is the etcd revision of the change (of the first read, for
	// "listed").
	Rev int64 `json:"rev"`
	// Time is when this command saw the change.
	Time time.Time       `json:"time"`
	Life registry.Status `json:"life"`
}

// watchLs is ls -w: the list, then one line per change.
func (a *app) watchLs(ctx context.Context, cli *clientv3.Client, keys registry.Keys, out string) error {
	w, err := a.openWatch(ctx, cli, keys)
	if err != nil {
		return err
	}
	defer w.Close()
	enc := json.NewEncoder(a.stdout)
	all := w.List()
	if out == "json" {
		now := time.Now()
		for _, st := range all {
			if err := enc.Encode(WatchLine{Event: registry.EventListed, Rev: w.Rev(), Time: now, Life: st}); err != nil {
				return err
			}
		}
	} else if err := a.printTable(all); err != nil {
		return err
	}
	for {
		changes, err := w.Next(ctx)
		if err != nil {
			return a.watchEnd(ctx, err)
		}
		now := time.Now()
		for _, c := range changes {
			if out == "json" {
				err = enc.Encode(WatchLine{Event: c.Event, Rev: c.Rev, Time: now, Life: c.Status})
			} else {
				_, err = fmt.Fprintln(a.stdout, changeLine(now, c))
			}
			if err != nil {
				return err
			}
		}
	}
}

// changeLine is a text line of ls -w:
// TIME EVENT NAME STATE HOLDER INCARNATION AGE [ERROR]
// with "-" for no holder, the age in whole seconds and the error, if any, as
// the rest of the line.
func changeLine(now time.Time, c registry.StatusChange) string {
	s := c.Status
	holder := s.Holder
	if holder == "" {
		holder = "-"
	}
	line := fmt.Sprintf("%s %s %s %s %s %d %d", now.Format(lineTime), c.Event, shownName(s.Name), stateWord(s), holder, s.Incarnation, s.Age)
	if e := errorText(s); e != "" {
		line += " " + e
	}
	return line
}

// watchAge is get-age -w: the age line (get-age's, or its -o json), again
// at every change of the life and once every tick. It ends with exit 1
// when the life is removed.
func (a *app) watchAge(ctx context.Context, cli *clientv3.Client, keys registry.Keys, name, out string) error {
	w, err := a.openWatch(ctx, cli, keys)
	if err != nil {
		return err
	}
	defer w.Close()
	enc := json.NewEncoder(a.stdout)
	show := func() error {
		st, ok := w.Get(name)
		if !ok {
			return fmt.Errorf("%w: %q (at revision %d)", registry.ErrNoLife, name, w.Rev())
		}
		if out == "json" {
			return enc.Encode(st)
		}
		_, err := fmt.Fprintln(a.stdout, st.Age)
		return err
	}
	w.List()
	if st, ok := w.Get(name); ok && st.State == registry.StateInvalid && out != "json" {
		return invalidLife(st)
	}
	if err := show(); err != nil {
		return err
	}
	next := time.Now().Add(tick)
	for {
		nctx, cancel := context.WithDeadline(ctx, next)
		changes, err := w.Next(nctx)
		ticked := nctx.Err() != nil && ctx.Err() == nil
		cancel()
		if err != nil && !ticked {
			return a.watchEnd(ctx, err)
		}
		for _, c := range changes {
			if c.Status.Name == name {
				if err := show(); err != nil {
					return err
				}
				break
			}
		}
		if ticked {
			next = next.Add(tick)
			if now := time.Now(); next.Before(now) {
				next = now.Add(tick) // the machine stalled: no burst of lines
			}
			if err := show(); err != nil {
				return err
			}
		}
	}
}
