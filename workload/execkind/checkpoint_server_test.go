package execkind_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/execkind"
	"github.com/immortald/immortald/workload/execkind/childapi"
)

// childClientEnv makes the test binary a child's checkpoint client (see
// TestMain): "checkpoint", or "put:STATE".
const childClientEnv = "EXECKIND_TEST_CHILD_CLIENT"

// childClient calls the socket of its environment as mode says and
// returns the exit code of `immortald checkpoint`: 0, 3 fenced, 1 other.
func childClient(mode string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var err error
	if state, ok := strings.CutPrefix(mode, "put:"); ok {
		err = childapi.PutState(ctx, []byte(state))
	} else {
		err = childapi.Checkpoint(ctx)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, childapi.ErrFenced):
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// socket waits for the checkpoint socket of l's hold, made 0600 (so
// served), and returns its path.
func (l *life) socket(t *testing.T) string {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(l.root, "job-*", childapi.SocketName)); len(m) == 1 {
			if fi, err := os.Stat(m[0]); err == nil && fi.Mode().Perm() == 0o600 {
				return m[0]
			}
		}
	}
	t.Fatalf("no checkpoint socket of mode 0600 under %s; log:\n%s", l.root, l.log)
	return ""
}

// waitFile waits for file and returns its content.
func waitFile(t *testing.T, file string) string {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if b, err := os.ReadFile(file); err == nil {
			return string(b)
		}
	}
	t.Fatalf("no file %s", file)
	return ""
}

// A child that checkpoints through the socket: when its call returns 0 the
// handle has the state already (the periodic copy is an hour away), for
// the state file as it is (POST) and for a state sent (PUT, which also
// replaces the file); the final copy after a graceful stop does not write
// the same bytes again.
func TestSyncCheckpointFromChild(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	out := t.TempDir()
	l := run(t, ctx, `cd "$IMMORTALD_STATE_DIR" || exit 9
[ "$IMMORTALD_CHECKPOINT_SOCKET" = "$PWD/checkpoint.sock" ] || { echo "socket $IMMORTALD_CHECKPOINT_SOCKET" >&2; exit 9; }
printf one > s.tmp && mv s.tmp state
`+childClientEnv+`=checkpoint "$CLIENT"; echo $? > "$OUT/rc1"
while [ ! -e "$OUT/go" ]; do sleep 0.02; done
`+childClientEnv+`=put:two "$CLIENT"; echo "$? $(cat state)" > "$OUT/rc2"
exec sleep 1000`, nil, func(c *execkind.Config, o *execkind.Options) {
		c.Env = map[string]string{"CLIENT": os.Args[0], "OUT": out}
		o.CheckpointInterval = time.Hour
	})
	if rc := waitFile(t, filepath.Join(out, "rc1")); rc != "0\n" {
		t.Fatalf("POST: exit %q; log:\n%s", rc, l.log)
	}
	if c := l.h.Checkpoints(); len(c) != 1 || string(c[0]) != "one" {
		t.Fatalf("checkpoints when the call returned: %q, want [one]", c)
	}
	if err := os.WriteFile(filepath.Join(out, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if rc := waitFile(t, filepath.Join(out, "rc2")); rc != "0 two\n" {
		t.Fatalf("PUT: exit and state file %q, want 0 two; log:\n%s", rc, l.log)
	}
	if c := l.h.Checkpoints(); len(c) != 2 || string(c[1]) != "two" {
		t.Fatalf("checkpoints when the call returned: %q, want [one two]", c)
	}
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if c := l.h.Checkpoints(); len(c) != 2 {
		t.Fatalf("checkpoints %q after the stop: the final copy wrote the synced state again", c)
	}
}

// After a synchronous checkpoint, the periodic copy does not write the
// same bytes again.
func TestPeriodicCopySkipsSyncedState(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	l := run(t, ctx, `exec sleep 1000`, []byte("old"), nil)
	c := childapi.New(l.socket(t), 7)
	if err := c.PutState(context.Background(), []byte("synced")); err != nil {
		t.Fatal(err)
	}
	if err := c.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // many intervals of 20ms
	if got := l.h.Checkpoints(); len(got) != 1 || string(got[0]) != "synced" {
		t.Fatalf("checkpoints %q, want [synced] once", got)
	}
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A token that is not the hold's is fenced (409); a request without one, a
// wrong method, a state over the limit are refused; nothing is written.
func TestSyncCheckpointRefusals(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	l := run(t, ctx, `printf x > "$IMMORTALD_STATE_DIR/state"; exec sleep 1000`, nil, func(_ *execkind.Config, o *execkind.Options) {
		o.CheckpointInterval = time.Hour
	})
	sock := l.socket(t)
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	defer hc.CloseIdleConnections()
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{http.MethodPost, childapi.PathCheckpoint, "8", http.StatusConflict},
		{http.MethodPut, childapi.PathState, "6", http.StatusConflict},
		{http.MethodPost, childapi.PathCheckpoint, "", http.StatusBadRequest},
		{http.MethodGet, childapi.PathCheckpoint, "7", http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequest(tc.method, "http://x"+tc.path, strings.NewReader("body"))
		if tc.token != "" {
			req.Header.Set(childapi.HeaderFencingToken, tc.token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s with token %q: %d, want %d", tc.method, tc.path, tc.token, resp.StatusCode, tc.want)
		}
	}
	if err := childapi.New(sock, 8).Checkpoint(context.Background()); !errors.Is(err, childapi.ErrFenced) {
		t.Errorf("Checkpoint with another token: %v, want ErrFenced", err)
	}
	big := make([]byte, workload.MaxStateBytes+1)
	if err := childapi.New(sock, 7).PutState(context.Background(), big); !errors.Is(err, childapi.ErrStateTooLarge) {
		t.Errorf("PutState over the limit: %v, want ErrStateTooLarge", err)
	}
	if c := l.h.Checkpoints(); len(c) != 0 {
		t.Errorf("checkpoints %q after refused requests", c)
	}
	cancel(workload.ErrStopped)
	if err := l.result(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A synchronous checkpoint blocked on etcd when the hold expires is fenced;
// the kill is not held up by it; after Run the socket is gone.
func TestSyncCheckpointFencedAtExpiry(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	pidfile := filepath.Join(t.TempDir(), "pid")
	l := run(t, ctx, `echo $$ > `+pidfile+`; exec sleep 1000`, nil, nil)
	pid := readPid(t, pidfile)
	sock := l.socket(t)
	c := childapi.New(sock, 7)
	l.h.Block(true)
	done := make(chan error, 1)
	go func() { done <- c.PutState(context.Background(), []byte("late")) }()
	// The file is replaced before the checkpoint, which blocks.
	for waitFile(t, filepath.Join(filepath.Dir(sock), "state")) != "late" {
		time.Sleep(10 * time.Millisecond)
	}
	l.h.Expire()
	if err := l.result(t); !errors.Is(err, workload.ErrDeadline) {
		t.Fatalf("Run: %v, want ErrDeadline", err)
	}
	waitGone(t, pid)
	select {
	case err := <-done:
		if !errors.Is(err, childapi.ErrFenced) {
			t.Fatalf("a call in flight at the expiry: %v, want ErrFenced", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a call in flight at the expiry did not return")
	}
	if err := c.Checkpoint(context.Background()); !errors.Is(err, childapi.ErrUnavailable) {
		t.Fatalf("a call after Run: %v, want ErrUnavailable (no socket)", err)
	}
	if n := len(l.h.Checkpoints()); n != 0 {
		t.Fatalf("%d checkpoints", n)
	}
}

// A state root too long for the socket's path fails the hold with an error
// naming --state-dir; CheckStateRoot says so before any hold.
func TestStateRootTooLongForSocket(t *testing.T) {
	root := filepath.Join(t.TempDir(), strings.Repeat("r", 100))
	if err := execkind.CheckStateRoot(root); err == nil || !strings.Contains(err.Error(), "--state-dir") {
		t.Fatalf("CheckStateRoot(%d bytes): %v, want an error naming --state-dir", len(root), err)
	}
	if err := execkind.CheckStateRoot(t.TempDir()); err != nil {
		t.Fatalf("CheckStateRoot of a short root: %v", err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	l := run(t, ctx, `exec sleep 1000`, nil, func(_ *execkind.Config, o *execkind.Options) { o.StateRoot = root })
	if err := l.result(t); err == nil || !strings.Contains(err.Error(), "--state-dir") {
		t.Fatalf("Run: %v, want an error naming --state-dir", err)
	}
	if st := l.h.Statuses(); len(st) != 1 || !strings.Contains(st[0].Error, "--state-dir") {
		t.Fatalf("statuses %+v, want the error", st)
	}
}
