// Command immortalbench measures immortald against real processes on
// loopback, and the do-it-yourself baseline (one `etcdctl lock` process per
// life) against the same etcd, in one run: see package internal/bench.
//
//	go run ./cmd/immortalbench [-quick] [-check] [-out FILE]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/immortald/immortald/internal/bench"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("immortalbench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "small and fast (about a minute once the binaries are built)")
	out := fs.String("out", "", "also write the JSON figures to this file")
	immortald := fs.String("immortald", "", "prebuilt immortald binary (default: go build ./cmd/immortald)")
	etcd := fs.String("etcd", "", "prebuilt etcd binary (default: go build go.etcd.io/etcd/server/v3)")
	etcdctl := fs.String("etcdctl", "", "prebuilt etcdctl binary (default: go build go.etcd.io/etcd/etcdctl/v3)")
	counter := fs.String("counter", "", "prebuilt counter binary, the exec phase's command kind (default: go build ./cmd/counter)")
	binDir := fs.String("bindir", filepath.Join(os.TempDir(), "immortalbench-bin"), "where to build the binaries (kept, so later builds are fast)")
	lives := fs.Int("lives", 0, "lives of the bulk phase (default 10000 quick, 100000 full)")
	failovers := fs.Int("failover-trials", 0, "SIGKILLs of a member's top-level process in the latency phase, the failover figures (default 2 quick, 60 full)")
	blLives := fs.Int("baseline-lives", 0, "lives of the baseline (default 100 quick, 1000 full)")
	only := fs.String("only", "", "run only these phases, comma-separated: latency,baseline,exec,scale,bulk,etcd,scale-1m (etcd: the full run only, unless named; scale-1m: only when named, 1,000,000 lives over 10 members, 100k with -quick)")
	budget := fs.Duration("budget", 0, "time limit of the run after the build (default 105s quick, 27m30s full); each phase reports what it measured by then")
	leaseTTL := fs.String("lease-ttl", "2s", "the members' --lease-ttl (the failover figures are defined at 2s)")
	keep := fs.Bool("keep", false, "keep etcd's data directory too (logs are always kept)")
	check := fs.Bool("check", false, "exit 1 unless every target (the == targets section) is met")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "immortalbench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	return bench.Run(bench.Options{
		Quick: *quick, Check: *check, Out: *out,
		Bins:   bench.Binaries{Immortald: *immortald, Etcd: *etcd, Etcdctl: *etcdctl, Counter: *counter},
		BinDir: *binDir, Lives: *lives, BaselineLives: *blLives, FailoverTrials: *failovers, Only: *only,
		Budget: *budget, LeaseTTL: *leaseTTL, Keep: *keep,
	})
}
