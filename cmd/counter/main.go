// Command counter is the workload of the counter kind used by immortald's
// tests and end-to-end checks: a child that follows the process contract of
// package workload/execkind.
//
// It reads n from its state file (decimal; missing or empty: 0), then every
// tick increments n, writes the state file atomically (a temporary file in
// the same directory, then a rename) and appends the line
// "<token> <n> <unix-ms>" to its log file, where token is
// $IMMORTALD_FENCING_TOKEN. On SIGTERM or SIGINT it writes the state once
// more and exits 0. The state file's first line is n; a first line that is
// not a number is an error (exit 1): the file is left as it is, never
// overwritten. What follows the first line is padding, ignored.
//
//	counter [--interval 100ms] [--state FILE] [--log FILE | --log-dir DIR] [--pad SIZE] [--sync]
//
// --state defaults to $IMMORTALD_STATE_DIR/state, --log to $COUNTER_LOG
// (none: no log). --log-dir logs to DIR/$IMMORTALD_LIFE.log instead: one
// log per life, for many lives of one kind. --pad fills the state file to
// SIZE bytes (a number, or with a unit: 64KiB, 1MiB) with a line of dots, to
// give the life a state of that size.
//
// --sync checkpoints every write synchronously, through the member's
// checkpoint socket (package workload/execkind/childapi), before logging
// it: a logged n is durable. When the checkpoint is fenced (this holder no
// longer holds the life) the counter exits 0; another failure is printed
// on stderr and the checkpoint retried every interval.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/immortald/immortald/workload/execkind/childapi"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "counter:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("counter", flag.ContinueOnError)
	interval := fs.Duration("interval", 100*time.Millisecond, "time between increments")
	state := fs.String("state", "", "state file (default $IMMORTALD_STATE_DIR/state)")
	logFile := fs.String("log", os.Getenv("COUNTER_LOG"), "file to append \"token n unix-ms\" lines to (default $COUNTER_LOG; empty: none)")
	logDir := fs.String("log-dir", "", "log to DIR/$IMMORTALD_LIFE.log instead of --log")
	padFlag := fs.String("pad", "0", "fill the state file to this size: a number of bytes, or with a unit (64KiB, 1MiB)")
	sync := fs.Bool("sync", false, "checkpoint every write through the member's checkpoint socket before logging it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pad, err := parseSize(*padFlag)
	if err != nil {
		return fmt.Errorf("--pad %q: %v", *padFlag, err)
	}
	if *logDir != "" {
		life := os.Getenv("IMMORTALD_LIFE")
		if life == "" || strings.ContainsRune(life, '/') || life == "." || life == ".." {
			return fmt.Errorf("--log-dir needs IMMORTALD_LIFE, a life name, not %q", life)
		}
		*logFile = filepath.Join(*logDir, life+".log")
	}
	if *interval <= 0 {
		return fmt.Errorf("--interval %s must be positive", *interval)
	}
	if *state == "" {
		dir := os.Getenv("IMMORTALD_STATE_DIR")
		if dir == "" {
			return errors.New("no --state and no IMMORTALD_STATE_DIR")
		}
		*state = filepath.Join(dir, "state")
	}
	token := os.Getenv("IMMORTALD_FENCING_TOKEN")
	if token == "" {
		token = "0"
	}
	var ck *childapi.Client
	if *sync {
		if ck, err = childapi.FromEnv(); err != nil {
			return fmt.Errorf("--sync: %w", err)
		}
	}
	n, err := readState(*state)
	if err != nil {
		return err
	}
	var log *os.File
	if *logFile != "" {
		if log, err = os.OpenFile(*logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err != nil {
			return err
		}
		defer log.Close()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return writeState(*state, n, pad)
		case <-t.C:
		}
		n++
		if err := writeState(*state, n, pad); err != nil {
			return err
		}
		if ck != nil {
			if err := syncCheckpoint(ctx, ck, *interval); errors.Is(err, childapi.ErrFenced) {
				fmt.Fprintln(os.Stderr, "counter: stopping:", err)
				return nil
			} else if err != nil {
				continue // a signal: the state is written once more above
			}
		}
		if log != nil {
			if _, err := fmt.Fprintf(log, "%s %d %d\n", token, n, time.Now().UnixMilli()); err != nil {
				return err
			}
		}
	}
}

// syncCheckpoint checkpoints the state file through c, retrying every
// interval after a failure that is safe to retry (printed on stderr), until
// it was applied (nil), it is fenced (childapi.ErrFenced) or ctx ends
// (ctx's error).
func syncCheckpoint(ctx context.Context, c *childapi.Client, interval time.Duration) error {
	for {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := c.Checkpoint(cctx)
		cancel()
		if err == nil || errors.Is(err, childapi.ErrFenced) {
			return err
		}
		fmt.Fprintln(os.Stderr, "counter: checkpoint failed, retrying:", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// readState reads n from file: missing or blank is 0.
func readState(file string) (int64, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	s := strings.TrimSpace(first)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("state file %s holds %.40q, not a count", file, s)
	}
	return n, nil
}

// writeState replaces file with n atomically, padded to pad bytes.
func writeState(file string, n int64, pad int) error {
	content := strconv.FormatInt(n, 10) + "\n"
	if fill := pad - len(content); fill > 0 {
		content += strings.Repeat(".", fill-1) + "\n"
	}
	return childapi.WriteState(file, []byte(content))
}

// parseSize reads a size in bytes: a number, with an optional unit B, KiB,
// MiB (or K, M).
func parseSize(s string) (int, error) {
	units := []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"K", 1 << 10}, {"M", 1 << 20}, {"B", 1}}
	mult := 1
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.mult
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 || n > 64<<20/mult {
		return 0, errors.New("want a size such as 65536 or 64KiB, at most 64MiB")
	}
	return n * mult, nil
}
