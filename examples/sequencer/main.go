// Command sequencer is an example of a Go program that embeds an immortald
// member (package daemon) and runs lives of a Go kind of its own.
//
// A life of kind "sequencer" hands out numbers, one every --every, each
// greater than the last, and appends "<fencing token> <number>" to the file
// --out: a stand-in for a writer that must run once, whose output a reader
// can fence by token (drop any line of an older token after a newer one).
// It restores its last number from its checkpointed state, checkpoints it
// every --checkpoint-every numbers, and once more when it is stopped
// gracefully (a handoff, a shutdown), so the next holder goes on from the
// very next number. After a crash the next holder goes on from the last
// checkpoint: numbers since then are handed out again, under a greater
// token.
//
//	sequencer --id a --etcd-endpoints 127.0.0.1:2379 --out /tmp/seq.log
//	etcdctl put /immortals/lives/seq '{"kind":"sequencer"}'
//
// Every member that runs the program can run the life; plain immortald
// members do not campaign for it (they lack the kind).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/workload"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "sequencer:", err)
		os.Exit(1)
	}
}

// run runs a member with the sequencer kind until ctx ends, logging to
// logTo.
func run(ctx context.Context, args []string, logTo io.Writer) error {
	fs := flag.NewFlagSet("sequencer", flag.ContinueOnError)
	id := fs.String("id", "", "member id (default: the hostname)")
	endpoints := fs.String("etcd-endpoints", "", "comma-separated etcd endpoints (empty: an embedded etcd)")
	httpAddr := fs.String("http-addr", "", "address of /livez, /readyz and /metrics (empty: off)")
	out := fs.String("out", "sequencer.out", "file the numbers are appended to")
	every := fs.Duration("every", 100*time.Millisecond, "time between numbers")
	ckEvery := fs.Int("checkpoint-every", 10, "numbers between checkpoints")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *every <= 0 || *ckEvery < 1 {
		return errors.New("--every must be positive and --checkpoint-every at least 1")
	}
	cfg := daemon.Config{
		ID:       *id,
		HTTPAddr: *httpAddr,
		Logger:   slog.New(slog.NewTextHandler(logTo, nil)),
		GoKinds:  []workload.Kind{Kind(*out, *every, *ckEvery)},
	}
	if *endpoints != "" {
		cfg.Endpoints = strings.Split(*endpoints, ",")
	}
	m, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	if err := m.Open(); err != nil {
		return err
	}
	return m.Run(ctx)
}

// Kind is the sequencer kind: lives that append numbers to out, one every
// every, checkpointing every ckEvery numbers.
func Kind(out string, every time.Duration, ckEvery int) workload.Kind {
	return workload.Kind{
		Name: "sequencer",
		New: func() workload.Runner {
			return &Sequencer{Out: out, Every: every, CheckpointEvery: ckEvery}
		},
		// Its graceful stop is one checkpoint: no grace beyond it.
		StopGrace: 0,
	}
}

// Sequencer is one hold of a sequencer life.
type Sequencer struct {
	Out             string
	Every           time.Duration
	CheckpointEvery int
}

// outMu serializes appends of the lives of this process to their files.
var outMu sync.Mutex

// Run hands out numbers until ctx ends; see the package doc.
func (s *Sequencer) Run(ctx context.Context, h workload.Handle) error {
	log := h.Logger()
	var n int64
	if st := h.State(); len(st) > 0 {
		v, err := strconv.ParseInt(string(st), 10, 64)
		if err != nil {
			return fmt.Errorf("restored state %q is not a number: %w", st, err)
		}
		n = v
	}
	log.Info("sequencer starts", "from", n+1, "token", h.FencingToken())
	save := func(ctx context.Context) error {
		return h.Checkpoint(ctx, []byte(strconv.FormatInt(n, 10)))
	}
	t := time.NewTicker(s.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if !errors.Is(context.Cause(ctx), workload.ErrStopped) {
				// The deadline: stop at once, write nothing more.
				return context.Cause(ctx)
			}
			// A graceful stop: the member holds the life until this
			// returns; the last number goes to the next holder.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			return save(sctx)
		case <-t.C:
		}
		n++
		if err := s.emit(h.FencingToken(), n); err != nil {
			return err
		}
		if n%int64(s.CheckpointEvery) == 0 {
			switch err := save(ctx); {
			case errors.Is(err, workload.ErrFenced):
				return err // another member holds the life now
			case err != nil && ctx.Err() == nil:
				log.Warn("checkpoint failed; the next one carries the number", "n", n, "err", err)
			}
		}
	}
}

// emit appends "<token> <n>" to s.Out.
func (s *Sequencer) emit(token, n int64) error {
	outMu.Lock()
	defer outMu.Unlock()
	f, err := os.OpenFile(s.Out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%d %d\n", token, n)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
