package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/watchdog"
	"github.com/immortald/immortald/workload/execkind"
)

// argsKey carries Execute's arguments in the root context: the watchdog
// starts its member with the same ones.
type argsKey struct{}

// runWatchdog runs `immortald run` as the watchdog parent of a member that
// is this binary with the same arguments and environment.
func (a *app) runWatchdog(cmd *cobra.Command, cfg daemon.Config, log *slog.Logger) error {
	args, _ := cmd.Context().Value(argsKey{}).([]string)
	var revoke func(context.Context, int64) error
	if len(cfg.Endpoints) > 0 {
		ec := cfg.Etcd
		ec.Endpoints = cfg.Endpoints
		cli, err := etcdclient.New(ec)
		if err != nil {
			return etcdclient.Explain(err, ec, cfg.Prefix)
		}
		defer cli.Close()
		revoke = func(ctx context.Context, id int64) error {
			_, err := cli.Revoke(ctx, clientv3.LeaseID(id))
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return nil // gone already: expired, or the member revoked it
			}
			return err
		}
		warm, stopWarm := context.WithCancel(cmd.Context())
		defer stopWarm()
		go warmUp(warm, cli, cfg.Prefix)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	w, err := watchdog.New(watchdog.Config{
		Args:     args,
		Revoke:   revoke,
		LeaseTTL: cfg.LeaseTTL,
		Restart:  a.v.GetBool("restart-member"),
		Signals:  sigs,
		Logger:   log,
	})
	if err != nil {
		return err
	}
	err = w.Run(context.Background())
	if errors.Is(err, watchdog.ErrMemberFatal) {
		return quietExit{code: 1} // the member said why on the same stderr
	}
	return err
}

// reportWorkDeadline tells the watchdog, every 20 ms when it changed, the
// safe deadline by which the member's work must have stopped (Link.Deadline)
// while processes of command lives run (execkind.Holds): they are what
// would run on while the member is stopped or hung. Go Runs are in the
// member process, stopped with it, and their writes are fenced. It reports
// once more when the returned func is called, and stops.
func reportWorkDeadline(link *watchdog.Link, m *daemon.Main) (stop func()) {
	report := func() {
		d, ok := m.Supervisor().WorkDeadline()
		link.Deadline(d, ok && execkind.Holds() > 0)
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			report()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() { close(done); <-finished; report() }
}

// fatalToWatchdog tells the watchdog, when there is one, that err is a
// reason to exit that a restart cannot fix: etcd refused the member's
// credentials, its permission on the prefix, or its TLS files. It returns
// err.
func fatalToWatchdog(link *watchdog.Link, err error) error {
	var p *etcdclient.Problem
	if link != nil && errors.As(err, &p) && p.Cause != "unreachable" {
		link.Fatal()
	}
	return err
}

// quietExit ends the command with code and prints nothing: what went wrong
// is said already.
type quietExit struct{ code int }

func (q quietExit) Error() string { return fmt.Sprintf("exit status %d", q.code) }

// warmUp makes one request, retried, so that the connection is up before
// the first revoke needs it. It reads under prefix, which a role limited to
// the prefix may.
func warmUp(ctx context.Context, cli *clientv3.Client, prefix string) {
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Get(rctx, prefix, clientv3.WithCountOnly())
		cancel()
		if err == nil {
			return
		}
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// panicAfterEnv makes a member under a watchdog panic that long after it
// started: the integration tests' crash that is not a signal.
const panicAfterEnv = "IMMORTALD_TEST_PANIC_AFTER"

func injectPanic(link *watchdog.Link) {
	d, err := time.ParseDuration(os.Getenv(panicAfterEnv))
	if err != nil || link == nil {
		return
	}
	time.AfterFunc(d, func() { panic(fmt.Sprintf("%s=%s: the panic a test asked for", panicAfterEnv, d)) })
}
