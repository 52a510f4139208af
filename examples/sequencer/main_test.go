package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
)

// member runs the example program as member id until its stop is called.
func member(t *testing.T, ep, id, out string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logTo io.Writer = io.Discard
	if testing.Verbose() {
		logTo = os.Stderr
	}
	go func() {
		done <- run(ctx, []string{"--id", id, "--etcd-endpoints", ep, "--out", out, "--every", "20ms", "--checkpoint-every", "5"}, logTo)
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("member %s: %v", id, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("member %s did not stop", id)
		}
	}
	t.Cleanup(stop)
	return stop
}

type line struct{ token, n int64 }

func readLines(t *testing.T, path string) []line {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []line
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		tok, _ := strconv.ParseInt(f[0], 10, 64)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		out = append(out, line{tok, n})
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// The example's life runs on one member, checkpoints, and after a graceful
// stop of that member goes on on the other from the very next number, under
// a greater fencing token.
func TestSequencerHandsOverGracefully(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys, _ := registry.NewKeys(registry.DefaultPrefix)
	out := filepath.Join(t.TempDir(), "seq.out")

	stopA := member(t, srv.Endpoint(), "a", out)
	if _, err := cli.Put(context.Background(), keys.Life("seq"), `{"kind":"sequencer"}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "20 numbers", func() bool { return len(readLines(t, out)) >= 20 })
	waitFor(t, "a checkpoint", func() bool {
		st, _, err := registry.GetState(context.Background(), cli, keys, "seq")
		return err == nil && len(st.Data) > 0
	})
	member(t, srv.Endpoint(), "b", out)
	first := readLines(t, out)[0].token
	stopA()
	waitFor(t, "numbers under a new token", func() bool {
		ls := readLines(t, out)
		return len(ls) > 0 && ls[len(ls)-1].token != first && ls[0].token == first
	})
	time.Sleep(200 * time.Millisecond)

	ls := readLines(t, out)
	tokens := 1
	for i := 1; i < len(ls); i++ {
		if ls[i].n != ls[i-1].n+1 {
			t.Fatalf("line %d: %d after %d: a graceful handoff must lose or repeat no number", i+1, ls[i].n, ls[i-1].n)
		}
		if ls[i].token < ls[i-1].token {
			t.Fatalf("line %d: token %d after %d", i+1, ls[i].token, ls[i-1].token)
		}
		if ls[i].token != ls[i-1].token {
			tokens++
		}
	}
	if ls[0].n != 1 || tokens < 2 {
		t.Fatalf("first number %d, %d tokens; want 1 and at least 2", ls[0].n, tokens)
	}
	t.Logf("%d numbers under %d tokens", len(ls), tokens)
}
