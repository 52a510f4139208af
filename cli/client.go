package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	etcdversion "go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

// client connects to etcd for a client command, with the TLS and auth
// settings of every command. Bad settings are usage errors (exit 2);
// refused credentials are worded by etcdclient.Explain.
func (a *app) client() (*clientv3.Client, registry.Keys, error) {
	keys, err := a.keys()
	if err != nil {
		return nil, keys, err
	}
	cfg, err := a.clientConfig()
	if err != nil {
		return nil, keys, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, keys, usageError{err}
	}
	cli, err := etcdclient.New(cfg)
	if err != nil {
		return nil, keys, etcdclient.Explain(err, cfg, keys.Prefix())
	}
	return cli, keys, nil
}

// clientConfig is etcdConfig with the client commands' default endpoint.
func (a *app) clientConfig() (etcdclient.Config, error) {
	cfg, err := a.etcdConfig()
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = []string{etcdclient.DefaultEndpoint}
	}
	cfg.DialTimeout = 5 * time.Second
	return cfg, err
}

// reach words an etcd error so the user sees where and why it failed:
// unreachable, TLS, authentication or permission on the prefix.
func (a *app) reach(err error) error {
	cfg, cerr := a.clientConfig()
	keys, kerr := a.keys()
	if cerr != nil || kerr != nil {
		return err // client() checked both before any request
	}
	return etcdclient.Explain(err, cfg, keys.Prefix())
}

// output reads and checks the output setting: -o, IMMORTALD_OUTPUT or the
// config file, like every other setting.
func (a *app) output() (string, error) {
	o := a.v.GetString("output")
	switch o {
	case "", "text":
		return "text", nil
	case "json":
		return "json", nil
	}
	return "", usagef("--output %q: want text or json", o)
}

// withClient runs f, the body of a client command, with the output
// format, a client and the keyspace, under signalContext.
func (a *app) withClient(cmd *cobra.Command, f clientFunc) error {
	return a.withClientIn(cmd, func(*clientv3.Client) (context.Context, context.CancelFunc) { return signalContext(cmd) }, f)
}

// clientFunc is the body of a client command.
type clientFunc func(ctx context.Context, cli *clientv3.Client, keys registry.Keys, out string) error

// withClientIn is withClient under the context that ctxOf makes for the
// client.
func (a *app) withClientIn(cmd *cobra.Command, ctxOf func(*clientv3.Client) (context.Context, context.CancelFunc), f clientFunc) error {
	out, err := a.output()
	if err != nil {
		return err
	}
	cli, keys, err := a.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := ctxOf(cli)
	defer cancel()
	return f(ctx, cli, keys, out)
}

func addOutput(cmd *cobra.Command) {
	cmd.Flags().StringP("output", "o", "text", "output format: text or json")
}

func (a *app) startCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "start NAME",
		Short: "Request a life (same as: etcdctl put <prefix>lives/NAME '', or '{\"kind\":\"KIND\"}' with --kind)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateName(name); err != nil {
				return usagef("bad life name %q: %v", name, err)
			}
			value := ""
			if kind, _ := cmd.Flags().GetString("kind"); kind != "" && kind != workload.AgeKind {
				if err := workload.ValidateKindName(kind); err != nil {
					return usagef("--kind: %v", err)
				}
				b, _ := json.Marshal(registry.Options{Kind: kind})
				value = string(b)
			}
			cli, keys, err := a.client()
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := signalContext(cmd)
			defer cancel()
			key := keys.Life(name)
			resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, value)).Commit()
			if err != nil {
				return a.reach(err)
			}
			if !resp.Succeeded {
				fmt.Fprintf(a.stdout, "%s is already wanted\n", name)
				return nil
			}
			fmt.Fprintf(a.stdout, "%s is wanted (life id %d)\n", name, resp.Header.Revision)
			return nil
		},
	}
	cmd.Flags().String("kind", "", "the life's kind, one that members declare in their config (default: the built-in age)")
	return cmd
}

func (a *app) stopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop NAME",
		Short: "End a life (same as: etcdctl del <prefix>lives/NAME)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, keys, err := a.client()
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := signalContext(cmd)
			defer cancel()
			resp, err := cli.Delete(ctx, keys.Life(args[0]))
			if err != nil {
				return a.reach(err)
			}
			if resp.Deleted == 0 {
				return fmt.Errorf("%w: %q", registry.ErrNoLife, args[0])
			}
			fmt.Fprintf(a.stdout, "%s is ended\n", args[0])
			return nil
		},
	}
}

func (a *app) getAgeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get-age NAME",
		Short: "Print a life's age in whole seconds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if watching(cmd) {
				return a.withWatch(cmd, func(ctx context.Context, cli *clientv3.Client, keys registry.Keys, out string) error {
					return a.watchAge(ctx, cli, keys, args[0], out)
				})
			}
			return a.withClient(cmd, func(ctx context.Context, cli *clientv3.Client, keys registry.Keys, out string) error {
				st, err := registry.GetStatus(ctx, cli, keys, args[0])
				if err != nil {
					return a.reach(err)
				}
				if out == "json" {
					return json.NewEncoder(a.stdout).Encode(st)
				}
				if st.State == registry.StateInvalid {
					return invalidLife(st)
				}
				fmt.Fprintln(a.stdout, st.Age)
				return nil
			})
		},
	}
	addOutput(cmd)
	addWatch(cmd, "print the age again whenever the life's status changes and once a second, until Ctrl-C")
	return cmd
}

func invalidLife(st registry.Status) error {
	return fmt.Errorf("life %q is invalid: %s", st.Name, st.Error)
}

// StateInfo is what `immortald get-state NAME -o json` prints: the last
// checkpointed state of a life with its metadata; Data is base64 in JSON.
type StateInfo struct {
	Name         string    `json:"name"`
	LifeID       int64     `json:"life_id"`
	Holder       string    `json:"holder"`
	FencingToken int64     `json:"fencing_token"`
	Incarnation  int64     `json:"incarnation"`
	Time         time.Time `json:"time"`
	Size         int       `json:"size"`
	// Child is the workload's status, written with that state (its child
	// record); zero when there is none of the same holder.
	Child workload.ChildStatus `json:"child"`
	Data  []byte               `json:"data"`
}

func (a *app) getStateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get-state NAME",
		Short: "Print a life's last checkpointed state: the raw bytes, or with -o json its metadata and the bytes in base64",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, cli *clientv3.Client, keys registry.Keys, out string) error {
				rec, child, err := registry.GetState(ctx, cli, keys, args[0])
				if err != nil {
					if errors.Is(err, registry.ErrNoLife) || errors.Is(err, registry.ErrNoState) || errors.Is(err, registry.ErrCorrupt) {
						return err
					}
					return a.reach(err)
				}
				if out == "json" {
					info := StateInfo{Name: args[0], LifeID: rec.LifeID, Holder: rec.Holder,
						FencingToken: rec.HolderRev, Incarnation: rec.Incarnation, Time: rec.Time, Size: len(rec.Data), Data: rec.Data}
					if child != nil {
						info.Child = child.Child
					}
					return json.NewEncoder(a.stdout).Encode(info)
				}
				_, err = a.stdout.Write(rec.Data)
				return err
			})
		},
	}
	addOutput(cmd)
	return cmd
}

func (a *app) lsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List every life: name, kind, state, age, holder, incarnation, error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if watching(cmd) {
				return a.withWatch(cmd, a.watchLs)
			}
			return a.withClient(cmd, func(ctx context.Context, cli *clientv3.Client, keys registry.Keys, out string) error {
				all, err := registry.ListStatus(ctx, cli, keys)
				if err != nil {
					return a.reach(err)
				}
				if out == "json" {
					return json.NewEncoder(a.stdout).Encode(all)
				}
				return a.printTable(all)
			})
		},
	}
	addOutput(cmd)
	addWatch(cmd, "after the list, print one line per change of a life (not of its age), until Ctrl-C")
	return cmd
}

// printTable prints the table of ls.
func (a *app) printTable(all []registry.Status) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tAGE\tHOLDER\tINCARNATION\tERROR")
	for _, s := range all {
		state := stateWord(s)
		if s.Child != nil && s.Child.Restarts > 0 {
			state += fmt.Sprintf(" (exit %d, %d restarts)", s.Child.ExitCode, s.Child.Restarts)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", shownName(s.Name), s.Kind, state, s.Age, s.Holder, s.Incarnation, errorText(s))
	}
	return tw.Flush()
}

// shownName quotes a name that is not a valid one, to show white space and
// control characters.
func shownName(name string) string {
	if registry.ValidateName(name) != nil {
		return strconv.Quote(name)
	}
	return name
}

// stateWord is the state, with the child's own state when it is not simply
// running: running/backoff.
func stateWord(s registry.Status) string {
	if s.Child != nil && s.Child.State != workload.ChildRunning {
		return s.State + "/" + s.Child.State
	}
	return s.State
}

// errorText is the life's error and its child's, joined by "; ".
func errorText(s registry.Status) string {
	errs := s.Error
	if s.Child != nil && s.Child.Error != "" {
		errs = strings.TrimPrefix(errs+"; "+s.Child.Error, "; ")
	}
	return errs
}

func (a *app) membersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the running members",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, cli *clientv3.Client, keys registry.Keys, out string) error {
				_, kvs, err := registry.RangeAll(ctx, cli, keys.Members(), 0)
				if err != nil {
					return a.reach(err)
				}
				members := make([]registry.MemberRecord, 0, len(kvs))
				for _, kv := range kvs {
					var m registry.MemberRecord
					if err := json.Unmarshal(kv.Value, &m); err != nil {
						m.ID = registry.NameOf(keys.Members(), string(kv.Key)) + " (record does not parse)"
					}
					members = append(members, m)
				}
				if out == "json" {
					return json.NewEncoder(a.stdout).Encode(members)
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tADDRESS\tVERSION\tSTARTED\tLIVES\tPID")
				for _, m := range members {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", m.ID, m.Address, m.Version, m.Started.Format(time.RFC3339), m.Lives, m.PID)
				}
				return tw.Flush()
			})
		},
	}
	addOutput(cmd)
	return cmd
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintf(a.stdout, "immortald %s (%s, etcd client %s)\n", daemon.Version, runtime.Version(), etcdversion.Version)
			return nil
		},
	}
}
