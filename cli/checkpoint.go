package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/execkind/childapi"
)

// exitFenced is the exit code of `immortald checkpoint` when the holder no
// longer holds the life: the child should stop.
const exitFenced = 3

func (a *app) checkpointCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "checkpoint [--stdin]",
		Short: "For the child of a command life: checkpoint its state file now (--stdin: replace it with stdin first) and return once etcd applied it",
		Long: `For the child of a command life: checkpoint the state file now, or with --stdin
replace it with stdin (atomically) and checkpoint that, through the member's socket
($` + childapi.EnvCheckpointSocket + `, with $` + childapi.EnvFencingToken + `).
Exit 0 once etcd applied the write: the state is what the next holder restores,
unless a newer checkpoint replaced it. Exit 3 when fenced (this holder no longer
holds the life: stop), 1 on another failure (the message says whether retrying is
safe), 2 when not run by a life.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := childapi.FromEnv()
			if err != nil {
				return usageError{err}
			}
			ctx, cancel := signalContext(cmd)
			defer cancel()
			stdin, _ := cmd.Flags().GetBool("stdin")
			if stdin {
				b, rerr := io.ReadAll(io.LimitReader(cmd.InOrStdin(), workload.MaxStateBytes+1))
				switch {
				case rerr != nil:
					return fmt.Errorf("checkpoint --stdin: reading stdin: %w (nothing sent)", rerr)
				case len(b) > workload.MaxStateBytes:
					return fmt.Errorf("checkpoint --stdin: %w: over %d bytes; nothing written", childapi.ErrStateTooLarge, workload.MaxStateBytes)
				}
				err = c.PutState(ctx, b)
			} else {
				err = c.Checkpoint(ctx)
			}
			if errors.Is(err, childapi.ErrFenced) {
				fmt.Fprintf(a.stderr, "immortald: %v\n", err)
				return quietExit{code: exitFenced}
			}
			return err
		},
	}
	cmd.Flags().Bool("stdin", false, "replace the state file with stdin (at most 512 KiB), then checkpoint it")
	return cmd
}
