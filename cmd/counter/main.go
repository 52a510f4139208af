// Command counter is the workload of the counter kind used by immortald's
// tests and end-to-end checks: a child that follows the process contract of
// package workload/execkind.
//
// It reads n from its state file (decimal; missing or empty: 0), then every
// tick increments n, writes the state file atomically (a temporary file in
// the same directory, then a rename) and appends the line
// "<token> <n> <unix-ms>" to its log file, where token is
// $IMMORTALD_FENCING_TOKEN. On SIGTERM or SIGINT it writes the state once
// more and exits 0. A state file that is not a number is an error (exit 1):
// it is left as it is, never overwritten.
//
//	counter [--interval 100ms] [--state FILE] [--log FILE]
//
// --state defaults to $IMMORTALD_STATE_DIR/state, --log to $COUNTER_LOG
// (none: no log).
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
	if err := fs.Parse(args); err != nil {
		return err
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
			return writeState(*state, n)
		case <-t.C:
		}
		n++
		if err := writeState(*state, n); err != nil {
			return err
		}
		if log != nil {
			if _, err := fmt.Fprintf(log, "%s %d %d\n", token, n, time.Now().UnixMilli()); err != nil {
				return err
			}
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
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("state file %s holds %.40q, not a count", file, s)
	}
	return n, nil
}

// writeState replaces file with n atomically.
func writeState(file string, n int64) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), ".state-*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(strconv.FormatInt(n, 10) + "\n")
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
