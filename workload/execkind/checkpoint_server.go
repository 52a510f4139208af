package execkind

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/execkind/childapi"
)

// maxDirPrefix bounds the part of a state directory's name taken from the
// life's name, so that the checkpoint socket's path stays short.
const maxDirPrefix = 16

// CheckStateRoot reports, as an error naming --state-dir, when the
// checkpoint socket of a hold under the state root root could be longer
// than a unix socket path may be (childapi.MaxSocketPath bytes): the
// longest is root/<16 bytes of the name>-<10 digits>/checkpoint.sock.
func CheckStateRoot(root string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return fmt.Errorf("--state-dir %s: %w", root, err)
	}
	return checkSocketPath(filepath.Join(abs, strings.Repeat("x", maxDirPrefix+1+10), childapi.SocketName))
}

// socketPath is the checkpoint socket of the state directory dir.
func socketPath(dir string) string { return filepath.Join(dir, childapi.SocketName) }

func checkSocketPath(p string) error {
	if len(p) > childapi.MaxSocketPath {
		return fmt.Errorf("the checkpoint socket %s is %d bytes long, over the limit of %d bytes of a unix socket path: give the member a shorter --state-dir",
			p, len(p), childapi.MaxSocketPath)
	}
	return nil
}

// checkpointServer serves the synchronous checkpoints of one Run (the
// protocol is package childapi's) on a unix socket in its state directory.
// Requests go through the checkpointer's semaphore, so they are ordered
// with the periodic copy, and never hold up the Run loop: the loop's copy
// is skipped while a request holds it, and requests end at the hold's
// expiry or when the server closes.
type checkpointServer struct {
	h      workload.Handle
	ck     *checkpointer
	srv    *http.Server
	done   chan struct{} // closed when Serve returned
	cancel context.CancelFunc
	closed atomic.Bool
}

// serveCheckpoints listens on the socket of the state directory dir (which
// is 0700; the socket is made 0600) and serves until close. Request
// contexts end when h expires or the server closes; ctx's cancellation
// alone (a graceful stop) does not end them: the member still holds the
// life during the stop grace, so a child may checkpoint on SIGTERM.
func serveCheckpoints(ctx context.Context, h workload.Handle, ck *checkpointer, dir string) (*checkpointServer, error) {
	path := socketPath(dir)
	if err := checkSocketPath(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("checkpoint socket: %w", err)
	}
	base, cancel := untilExpired(context.WithoutCancel(ctx), h)
	s := &checkpointServer{h: h, ck: ck, done: make(chan struct{}), cancel: cancel}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+childapi.PathCheckpoint, func(w http.ResponseWriter, r *http.Request) {
		if s.authorized(w, r) {
			s.sync(w, r, nil)
		}
	})
	mux.HandleFunc("PUT "+childapi.PathState, s.putState)
	s.srv = &http.Server{
		Handler:           mux,
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(h.Logger().Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// close ends the server: requests in flight end and answer fenced (unless
// their checkpoint was applied already), new ones are refused. It returns
// once the handlers have returned, or after a second.
func (s *checkpointServer) close() {
	s.closed.Store(true)
	s.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		_ = s.srv.Close()
	}
	<-s.done
}

// fenced reports whether the hold can no longer checkpoint: it expired, or
// its Run is returning.
func (s *checkpointServer) fenced() bool {
	if s.closed.Load() {
		return true
	}
	select {
	case <-s.h.Expired():
		return true
	default:
		return false
	}
}

// authorized answers the request and reports false unless it carries this
// hold's fencing token and the hold is not fenced.
func (s *checkpointServer) authorized(w http.ResponseWriter, r *http.Request) bool {
	v := r.Header.Get(childapi.HeaderFencingToken)
	token, err := strconv.ParseInt(v, 10, 64)
	switch {
	case err != nil:
		answer(w, http.StatusBadRequest, fmt.Sprintf("header %s: %q is not a fencing token: send $%s", childapi.HeaderFencingToken, v, childapi.EnvFencingToken))
	case token != s.h.FencingToken():
		answer(w, http.StatusConflict, fmt.Sprintf("fencing token %d is not this hold's: a newer holder may run the life", token))
	case s.fenced():
		s.answerFenced(w)
	default:
		return true
	}
	return false
}

func (s *checkpointServer) answerFenced(w http.ResponseWriter) {
	answer(w, http.StatusConflict, fmt.Sprintf("the hold of fencing token %d ended: this member no longer holds the life", s.h.FencingToken()))
}

// putState reads the body (at most workload.MaxStateBytes) and syncs it.
func (s *checkpointServer) putState(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, workload.MaxStateBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		answer(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("state over the limit of %d bytes: nothing written", workload.MaxStateBytes))
		return
	case err != nil:
		answer(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	if body == nil {
		body = []byte{}
	}
	s.sync(w, r, body)
}

// sync checkpoints the state file as it is (put nil) or replaced by put,
// holding the checkpointer's semaphore, and answers once etcd applied it.
func (s *checkpointServer) sync(w http.ResponseWriter, r *http.Request, put []byte) {
	ctx := r.Context()
	if err := s.ck.lock(ctx); err != nil {
		s.answerErr(w, err)
		return
	}
	defer s.ck.unlock()
	if s.fenced() {
		s.answerFenced(w)
		return
	}
	b := put
	if put != nil {
		if err := childapi.WriteState(s.ck.file, put); err != nil {
			answer(w, http.StatusInternalServerError, "cannot replace the state file: "+err.Error())
			return
		}
	} else {
		var err error
		if b, err = s.ck.read(); err != nil {
			answer(w, http.StatusInternalServerError, "cannot read the state file: "+err.Error())
			return
		}
	}
	if err := s.ck.syncLocked(ctx, b); err != nil {
		s.answerErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(childapi.Result{Bytes: len(b), FencingToken: s.h.FencingToken()})
}

// answerErr answers a checkpoint that failed with err.
func (s *checkpointServer) answerErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, workload.ErrFenced) || s.fenced():
		s.answerFenced(w)
	case errors.Is(err, workload.ErrStateTooLarge):
		answer(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("state over the limit of %d bytes: not checkpointed; the last good checkpoint is kept", workload.MaxStateBytes))
	default:
		answer(w, http.StatusServiceUnavailable, "etcd did not confirm the checkpoint: "+err.Error()+"; retrying is safe")
	}
}

func answer(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(childapi.ErrorBody{Error: msg})
}

// syncLocked checkpoints b for a synchronous request; k.sem must be held.
// Bytes equal to the last state applied (or restored) are not written
// again: etcd holds them already. The status change it causes (a state
// refused, or one that clears the refusal) is left in k.note for the Run
// loop, which owns the status.
func (k *checkpointer) syncLocked(ctx context.Context, b []byte) error {
	sum := sha256.Sum256(b)
	switch sum {
	case k.last:
		return nil
	case k.tried:
		return workload.ErrStateTooLarge
	}
	refusal, err := k.apply(ctx, b, sum)
	if err == nil || refusal != "" {
		k.note = &refusal
	}
	return err
}
