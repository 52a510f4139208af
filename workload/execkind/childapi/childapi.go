// Package childapi is the child's side of the synchronous checkpoint of the
// process contract (package workload/execkind): the protocol's names, used
// by the member's server and by `immortald checkpoint`, and a small client.
//
// While a member holds a life of a command kind, it serves HTTP on a unix
// socket in the life's state directory, named by the environment variable
// EnvCheckpointSocket. Every request carries the holder's fencing token
// (EnvFencingToken) in the header HeaderFencingToken. Routes:
//
//   - POST PathCheckpoint: checkpoint the state file
//     ($IMMORTALD_STATE_DIR/state) as it is now.
//   - PUT PathState: replace the state file with the request body
//     (atomically: a temporary file in the state directory, then a rename)
//     and checkpoint it.
//
// Both answer once etcd applied the write (or it needed none: the bytes are
// those of the last checkpoint the member applied), with 200 and a Result
// in JSON. Errors are an ErrorBody in JSON with the status: 409 fenced (a
// token that is not this hold's, a hold that expired or ended: the child
// should stop), 413 a state over workload.MaxStateBytes (nothing written),
// 503 etcd did not apply the write (retrying is safe), 400 a bad request.
//
// Guarantee: after a 200 the state is what the next holder of the life
// restores, unless a newer checkpoint replaced it.
package childapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
)

// The protocol's names.
const (
	// EnvCheckpointSocket names the environment variable holding the
	// absolute path of the socket.
	EnvCheckpointSocket = "IMMORTALD_CHECKPOINT_SOCKET"
	// EnvFencingToken names the environment variable holding the holder's
	// fencing token (a decimal int64).
	EnvFencingToken = "IMMORTALD_FENCING_TOKEN"
	// SocketName is the socket's file name in the state directory.
	SocketName = "checkpoint.sock"
	// MaxSocketPath is the longest path of a unix socket, in bytes
	// (sun_path less its NUL).
	MaxSocketPath = 107
	// HeaderFencingToken carries the fencing token in every request.
	HeaderFencingToken = "Immortald-Fencing-Token"
	// PathCheckpoint is POSTed to checkpoint the state file as it is.
	PathCheckpoint = "/checkpoint"
	// PathState is PUT with the new state as the body.
	PathState = "/state"
)

// Result is the JSON body of a 200.
type Result struct {
	// Bytes is the size of the state checkpointed.
	Bytes int `json:"bytes"`
	// FencingToken is the holder's token the write was fenced by.
	FencingToken int64 `json:"fencing_token"`
}

// ErrorBody is the JSON body of an error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

// Errors of Client's calls, to test with errors.Is; the error's text adds
// the member's message.
var (
	// ErrFenced: this holder no longer holds the life (or the token is not
	// its holder's); nothing was or will be applied. The child should stop.
	ErrFenced = errors.New("checkpoint fenced: this holder no longer holds the life; the child should stop")
	// ErrStateTooLarge: the state is over workload.MaxStateBytes; nothing
	// was written, and retrying the same state will not help.
	ErrStateTooLarge = errors.New("state too large: not checkpointed (retrying the same state will not help)")
	// ErrUnavailable: the write was not confirmed (etcd's error, a timeout,
	// no answer from the member); it may or may not have been applied, and
	// retrying with the same or a newer state is safe.
	ErrUnavailable = errors.New("checkpoint not confirmed (retrying is safe)")
	// ErrNotALife: EnvCheckpointSocket or EnvFencingToken is not set (or the
	// token is not a number): the process is not run by a life.
	ErrNotALife = errors.New(EnvCheckpointSocket + " and " + EnvFencingToken + " must be set: run by a life of a command kind")
)

// Client calls the checkpoint socket of one hold. Its methods may be called
// concurrently.
type Client struct {
	token string
	hc    *http.Client
}

// New returns a client of the socket at path, sending token.
func New(path string, token int64) *Client {
	var d net.Dialer
	return &Client{
		token: strconv.FormatInt(token, 10),
		hc: &http.Client{Transport: &http.Transport{
			DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", path) },
			DisableKeepAlives: true, // a call now and then: no idle connection left behind
		}},
	}
}

// FromEnv returns a client of the socket and token in the environment, or
// ErrNotALife.
func FromEnv() (*Client, error) {
	path, token := os.Getenv(EnvCheckpointSocket), os.Getenv(EnvFencingToken)
	if path == "" || token == "" {
		return nil, ErrNotALife
	}
	t, err := strconv.ParseInt(token, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w (%s=%q)", ErrNotALife, EnvFencingToken, token)
	}
	return New(path, t), nil
}

// Checkpoint checkpoints the state file as it is now (POST PathCheckpoint)
// and returns once etcd applied it. Errors: ErrFenced, ErrStateTooLarge,
// ErrUnavailable (retrying is safe), or another (a bad request).
func (c *Client) Checkpoint(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, PathCheckpoint, nil)
}

// PutState replaces the state file with state and checkpoints it (PUT
// PathState), returning once etcd applied it. Errors as Checkpoint's; after
// ErrUnavailable the file holds state, which the member's periodic copy
// will checkpoint.
func (c *Client) PutState(ctx context.Context, state []byte) error {
	return c.call(ctx, http.MethodPut, PathState, state)
}

// Checkpoint is FromEnv().Checkpoint(ctx).
func Checkpoint(ctx context.Context) error {
	c, err := FromEnv()
	if err != nil {
		return err
	}
	return c.Checkpoint(ctx)
}

// PutState is FromEnv().PutState(ctx, state).
func PutState(ctx context.Context, state []byte) error {
	c, err := FromEnv()
	if err != nil {
		return err
	}
	return c.PutState(ctx, state)
}

func (c *Client) call(ctx context.Context, method, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://immortald"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set(HeaderFencingToken, c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var eb ErrorBody
	if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
		eb.Error = http.StatusText(resp.StatusCode)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusConflict:
		return fmt.Errorf("%w: %s", ErrFenced, eb.Error)
	case http.StatusRequestEntityTooLarge:
		return fmt.Errorf("%w: %s", ErrStateTooLarge, eb.Error)
	case http.StatusServiceUnavailable:
		return fmt.Errorf("%w: %s", ErrUnavailable, eb.Error)
	}
	if resp.StatusCode == http.StatusBadRequest {
		return fmt.Errorf("checkpoint refused: bad request: %s (retrying the same request will not help)", eb.Error)
	}
	return fmt.Errorf("checkpoint failed: the member answered %d: %s", resp.StatusCode, eb.Error)
}

// WriteState replaces the state file at path with b atomically, as the
// process contract asks a child to write it: a temporary file in the same
// directory, then a rename over path, so that no checkpoint reads it torn.
func WriteState(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
