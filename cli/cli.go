// Package cli is immortald's command line: the cobra commands, settings from
// flags, IMMORTALD_* environment variables and an optional config file
// (viper, in that order of precedence), and the output formats.
//
// Guarantees: a setting that is unknown, malformed or breaks a rule stops the
// command before it touches etcd, with a message naming the setting; client
// commands exit non-zero with one line on stderr when they fail.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/watchdog"
	"github.com/immortald/immortald/workload/execkind"
)

// Execute runs the command line with args and returns the exit code.
func Execute(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	root.SetContext(context.WithValue(context.Background(), argsKey{}, args))
	if err := root.Execute(); err != nil {
		var q quietExit
		if errors.As(err, &q) {
			return q.code
		}
		fmt.Fprintf(stderr, "immortald: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// usageError marks bad input on the command line or in settings: exit 2.
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// app carries the settings shared by every command.
type app struct {
	v              *viper.Viper
	stdout, stderr io.Writer
}

// settings known to the config file: every flag of every command.
var knownSettings = []string{
	"config", "etcd-endpoints", "etcd-cacert", "etcd-cert", "etcd-key", "etcd-user", "etcd-password-file",
	"prefix", "log-format", "log-level",
	"id", "lease-ttl", "checkpoint-interval", "http-addr", "advertise-addr", "data-dir", "output",
	"watchdog", "restart-member", "state-dir",
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	a := &app{v: viper.New(), stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "immortald",
		Short:         "Run named lives that survive the death of their daemon",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.load(cmd)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.String("config", "", "config file (YAML, JSON or TOML); keys are the flag names")
	pf.String("etcd-endpoints", "", "comma-separated etcd endpoints (run: empty starts an embedded etcd; other commands: default 127.0.0.1:2379)")
	pf.String("etcd-cacert", "", "PEM file of the CAs that sign etcd's certificate (with https:// endpoints; default: the system roots)")
	pf.String("etcd-cert", "", "PEM file of the client certificate, for an etcd with --client-cert-auth (read again for each new connection)")
	pf.String("etcd-key", "", "PEM file of the client certificate's key")
	pf.String("etcd-user", "", "etcd user; the password comes from IMMORTALD_ETCD_PASSWORD or --etcd-password-file")
	pf.String("etcd-password-file", "", "file holding the etcd user's password (one line)")
	pf.String("prefix", registry.DefaultPrefix, "key prefix of the immortald keyspace")
	pf.String("log-format", "auto", "log format: auto (tint on a terminal, JSON otherwise), text or json")
	pf.String("log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(a.runCmd(), a.startCmd(), a.stopCmd(), a.getAgeCmd(), a.getStateCmd(), a.lsCmd(), a.membersCmd(), a.checkpointCmd(), a.versionCmd())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	for _, c := range root.Commands() {
		if c.Args != nil {
			args := c.Args
			c.Args = func(cmd *cobra.Command, a []string) error {
				if err := args(cmd, a); err != nil {
					return usageError{err}
				}
				return nil
			}
		}
	}
	root.Args = func(_ *cobra.Command, a []string) error {
		if len(a) > 0 {
			return usagef("unknown command %q; see immortald --help", a[0])
		}
		return nil
	}
	root.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	return root
}

// load merges flags, environment and config file into a.v.
func (a *app) load(cmd *cobra.Command) error {
	v := a.v
	v.SetEnvPrefix("IMMORTALD")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	var bindErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err := v.BindPFlag(f.Name, f); err != nil {
			bindErr = err
		}
	})
	if bindErr != nil {
		return bindErr
	}
	if path := v.GetString("config"); path != "" {
		file := viper.New()
		file.SetConfigFile(path)
		if err := file.ReadInConfig(); err != nil {
			return usagef("config file %s: %v", path, err)
		}
		for _, k := range file.AllKeys() {
			if k == daemon.KindsKey || strings.HasPrefix(k, daemon.KindsKey+".") {
				continue // read and checked by daemon.LoadKinds and daemon.New
			}
			if !slices.Contains(knownSettings, k) || k == "config" {
				return usagef("config file %s: unknown setting %q (known: %s)", path, k, strings.Join(knownSettings[1:], ", "))
			}
		}
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return usagef("config file %s: %v", path, err)
		}
	}
	for _, k := range []string{"log-format", "log-level"} {
		if _, err := newLogger(a.stderr, v.GetString("log-format"), v.GetString("log-level")); err != nil {
			return usagef("--%s: %v", k, err)
		}
	}
	return nil
}

func (a *app) endpoints() []string {
	var out []string
	for _, e := range strings.Split(a.v.GetString("etcd-endpoints"), ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// passwordEnv is the one place a password may be given directly; a flag
// would show it in ps.
const passwordEnv = "IMMORTALD_ETCD_PASSWORD"

// etcdConfig reads the etcd connection settings: TLS files, user and
// password. Its Endpoints are a.endpoints(), possibly empty. The password is
// read from passwordEnv or the file of --etcd-password-file, never both.
func (a *app) etcdConfig() (etcdclient.Config, error) {
	cfg := etcdclient.Config{
		Endpoints: a.endpoints(),
		CACert:    a.v.GetString("etcd-cacert"),
		Cert:      a.v.GetString("etcd-cert"),
		Key:       a.v.GetString("etcd-key"),
		User:      a.v.GetString("etcd-user"),
	}
	env, inEnv := os.LookupEnv(passwordEnv)
	file := a.v.GetString("etcd-password-file")
	switch {
	case inEnv && file != "":
		return cfg, usagef("%s and --etcd-password-file are both set: give the password once", passwordEnv)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return cfg, usagef("--etcd-password-file: %v", err)
		}
		cfg.Password = strings.TrimRight(string(b), "\r\n")
		if cfg.Password == "" {
			return cfg, usagef("--etcd-password-file %s is empty", file)
		}
	case inEnv:
		cfg.Password = env
	}
	return cfg, nil
}

func (a *app) keys() (registry.Keys, error) {
	k, err := registry.NewKeys(a.v.GetString("prefix"))
	if err != nil {
		return k, usagef("--prefix: %v", err)
	}
	return k, nil
}

// duration reads a duration setting with a message that names it.
func (a *app) duration(name string) (time.Duration, error) {
	s := a.v.GetString(name)
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, usagef("--%s %q: not a duration (for example 5s or 500ms)", name, s)
	}
	if d <= 0 {
		// Zero would silently become the default in daemon.Config.
		return 0, usagef("--%s (%s) must be positive", name, d)
	}
	return d, nil
}

func (a *app) runCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a member (with an embedded etcd when no endpoints are given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, _ := newLogger(a.stderr, a.v.GetString("log-format"), a.v.GetString("log-level"))
			ttl, err := a.duration("lease-ttl")
			if err != nil {
				return err
			}
			interval, err := a.duration("checkpoint-interval")
			if err != nil {
				return err
			}
			etcd, err := a.etcdConfig()
			if err != nil {
				return err
			}
			cfg := daemon.Config{
				ID:                 a.v.GetString("id"),
				Endpoints:          etcd.Endpoints,
				Etcd:               etcd,
				Prefix:             a.v.GetString("prefix"),
				LeaseTTL:           ttl,
				CheckpointInterval: interval,
				HTTPAddr:           a.v.GetString("http-addr"),
				AdvertiseAddr:      a.v.GetString("advertise-addr"),
				DataDir:            a.v.GetString("data-dir"),
				StateDir:           a.v.GetString("state-dir"),
				Logger:             log,
			}
			if path := a.v.GetString("config"); path != "" {
				if cfg.Kinds, err = daemon.LoadKinds(path); err != nil {
					return usageError{err}
				}
			}
			link, err := watchdog.Attach()
			if err != nil {
				return err
			}
			if link == nil && a.v.GetBool("watchdog") {
				if _, err := daemon.New(cfg); err != nil {
					return usageError{err} // bad settings stop here, not in a restart loop
				}
				return a.runWatchdog(cmd, cfg, log)
			}
			if link != nil {
				cfg.OnSession = func(id clientv3.LeaseID) { link.Session(int64(id)) }
				for _, id := range link.Leftover() {
					cfg.Leftover = append(cfg.Leftover, clientv3.LeaseID(id))
				}
				injectPanic(link)
			}
			// The member process starts no processes but its command
			// lives': the orphans it adopts are theirs to reap.
			execkind.ReapOrphans()
			m, err := daemon.New(cfg)
			if err != nil {
				return usageError{err}
			}
			if err := m.Open(); err != nil {
				return fatalToWatchdog(link, err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if link != nil {
				closing := context.AfterFunc(ctx, link.Closing)
				defer closing()
				stopDeadlines := reportWorkDeadline(link, m)
				defer stopDeadlines()
			}
			return fatalToWatchdog(link, m.Run(ctx))
		},
	}
	f := cmd.Flags()
	f.String("id", "", "member id (default: the hostname; in Kubernetes, the pod name)")
	f.String("lease-ttl", lease.DefaultTTL.String(), "session lease TTL: whole seconds, from 2s to 10m")
	f.String("checkpoint-interval", "1s", "time between heartbeats, each a checkpoint of every life's age: from 100ms to 1m, at most half of --lease-ttl")
	f.String("http-addr", ":8080", "address of /livez, /readyz, /metrics and the live page at /ui (empty: off)")
	f.String("advertise-addr", "", "host:port published as this member's address (default: --http-addr as bound, an unspecified host replaced by the hostname)")
	f.String("data-dir", "immortald.etcd", "data directory of the embedded etcd")
	f.String("state-dir", "", "root of the state directories of command lives (default: $TMPDIR/immortald-<id>)")
	f.Bool("watchdog", true, "run the member as the child of a watchdog that hands its lives to peers at once when it crashes (false: run it in this process)")
	f.Bool("restart-member", true, "restart a crashed member, with backoff (false: exit 1 after the revoke; let Kubernetes or systemd restart the process)")
	return cmd
}

// requestTimeout bounds what a client command asks of etcd.
const requestTimeout = 10 * time.Second

// signalContext is the parent of client commands: Ctrl-C (SIGINT) and
// SIGTERM end them, and so does requestTimeout.
func signalContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx, stop := untilSignal(cmd)
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	return ctx, func() { cancel(); stop() }
}

// untilSignal ends at Ctrl-C (SIGINT) or SIGTERM, and at nothing else.
func untilSignal(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
}
