package cli_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/immortald/immortald/workload/execkind/childapi"
)

// fakeMember answers checkpoint requests on a unix socket with the status
// in code, and records the last request.
type fakeMember struct {
	mu                  sync.Mutex
	code                int
	method, path, token string
	body                string
}

func (f *fakeMember) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.method, f.path, f.token, f.body = r.Method, r.URL.Path, r.Header.Get(childapi.HeaderFencingToken), string(b)
	w.WriteHeader(f.code)
	if f.code == http.StatusOK {
		_ = json.NewEncoder(w).Encode(childapi.Result{Bytes: len(b), FencingToken: 7})
	} else {
		_ = json.NewEncoder(w).Encode(childapi.ErrorBody{Error: "the member says no"})
	}
}

func (f *fakeMember) set(code int) { f.mu.Lock(); f.code = code; f.mu.Unlock() }
func (f *fakeMember) last() (method, path, token, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.method, f.path, f.token, f.body
}

// `immortald checkpoint` as a life's child runs it: exit 0 once applied,
// 3 fenced, 1 for another failure (saying whether retrying is safe), 2 when
// not run by a life; --stdin sends stdin as the new state.
func TestCheckpointCommand(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeMember{code: http.StatusOK}
	srv := &http.Server{Handler: f}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	t.Setenv(childapi.EnvCheckpointSocket, "")
	t.Setenv(childapi.EnvFencingToken, "")
	if r := execute(t, "checkpoint"); r.code != 2 || !r.oneLineErr() || !strings.Contains(r.stderr, childapi.EnvCheckpointSocket) {
		t.Fatalf("checkpoint without a life: %+v, want exit 2 naming %s", r, childapi.EnvCheckpointSocket)
	}
	t.Setenv(childapi.EnvCheckpointSocket, sock)
	t.Setenv(childapi.EnvFencingToken, "7")

	if r := execute(t, "checkpoint"); r.code != 0 || r.stderr != "" {
		t.Fatalf("checkpoint: %+v, want exit 0 and nothing on stderr", r)
	}
	if m, p, tok, _ := f.last(); m != http.MethodPost || p != childapi.PathCheckpoint || tok != "7" {
		t.Fatalf("request %s %s token %q, want POST %s token 7", m, p, tok, childapi.PathCheckpoint)
	}

	in, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.WriteString("new state"); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	stdin := os.Stdin
	os.Stdin = in
	r := execute(t, "checkpoint", "--stdin")
	os.Stdin = stdin
	in.Close()
	if r.code != 0 {
		t.Fatalf("checkpoint --stdin: %+v", r)
	}
	if m, p, _, body := f.last(); m != http.MethodPut || p != childapi.PathState || body != "new state" {
		t.Fatalf("request %s %s body %q, want PUT %s with stdin", m, p, body, childapi.PathState)
	}

	for _, tc := range []struct {
		status, code int
		want         string
	}{
		{http.StatusConflict, 3, "fenced"},
		{http.StatusServiceUnavailable, 1, "retrying is safe"},
		{http.StatusRequestEntityTooLarge, 1, "will not help"},
		{http.StatusBadRequest, 1, "will not help"},
	} {
		f.set(tc.status)
		r := execute(t, "checkpoint")
		if r.code != tc.code || !r.oneLineErr() || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "the member says no") {
			t.Errorf("checkpoint answered %d: %+v, want exit %d and one line with %q", tc.status, r, tc.code, tc.want)
		}
		t.Logf("answered %d: %s", tc.status, strings.TrimSpace(r.stderr))
	}

	t.Setenv(childapi.EnvCheckpointSocket, filepath.Join(t.TempDir(), "none.sock"))
	if r := execute(t, "checkpoint"); r.code != 1 || !r.oneLineErr() || !strings.Contains(r.stderr, "retrying is safe") {
		t.Errorf("checkpoint with no member on the socket: %+v, want exit 1, retrying is safe", r)
	}
}
