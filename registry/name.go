package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode"
	"unicode/utf8"

	"github.com/immortald/immortald/workload"
)

// MaxNameBytes is the longest life name accepted.
const MaxNameBytes = 128

// ValidateName reports why name cannot be a life name, or nil. A name must
// be a safe single path segment: 1 to 128 bytes of valid UTF-8, without "/",
// white space, control characters or format characters, and not "." or "..".
// Format characters (Unicode category Cf: zero-width spaces and joiners, the
// byte-order mark, bidirectional overrides and isolates, the soft hyphen)
// are invisible or reorder text, so two names with and without them would
// look the same in `ls` and in logs.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("name is empty")
	case len(name) > MaxNameBytes:
		return fmt.Errorf("name is %d bytes long, over the limit of %d", len(name), MaxNameBytes)
	case !utf8.ValidString(name):
		return errors.New("name is not valid UTF-8")
	case name == "." || name == "..":
		return fmt.Errorf("name %q is not allowed", name)
	}
	for i, r := range name {
		switch {
		case r == '/':
			return fmt.Errorf("name contains %q at byte %d", r, i)
		case unicode.IsSpace(r):
			return fmt.Errorf("name contains white space at byte %d", i)
		case unicode.IsControl(r):
			return fmt.Errorf("name contains control character %U at byte %d", r, i)
		case unicode.Is(unicode.Cf, r):
			return fmt.Errorf("name contains invisible format character %U at byte %d", r, i)
		case r == utf8.RuneError:
			return fmt.Errorf("name contains the replacement character %U at byte %d", r, i)
		}
	}
	return nil
}

// Options are the settings a user may attach to a life in its request value.
// The value is empty or a JSON object; unknown fields are rejected.
type Options struct {
	// Labels are free-form key/value pairs shown by `immortald ls`.
	Labels map[string]string `json:"labels,omitempty"`
	// Kind names what the life runs: a kind the members declare in their
	// config (see package workload). "" is the built-in kind "age".
	Kind string `json:"kind,omitempty"`
}

// KindName is the life's kind, workload.AgeKind when none is named.
func (o Options) KindName() string {
	if o.Kind == "" {
		return workload.AgeKind
	}
	return o.Kind
}

// commandFields are fields that would name a program or its input. A
// request never carries them: anyone who may write to lives/ would own
// every member.
var commandFields = []string{"command", "cmd", "args", "argv", "env", "environment", "program", "exec", "executable", "path", "binary", "shell", "script", "entrypoint"}

// MaxOptionsBytes is the largest request value accepted. Every member keeps
// every request's options in memory, and `ls` reads them all; labels need
// far less.
const MaxOptionsBytes = 8 << 10

// ParseOptions decodes a request value. Empty (or only white space) means
// default options. A value over MaxOptionsBytes is an error, unread; so are
// unknown fields, a field that names a command (see commandFields) and a
// kind that breaks workload.ValidateKindName. Whether any member runs the
// kind is not checked here: see Status.
func ParseOptions(value []byte) (Options, error) {
	var o Options
	if len(value) > MaxOptionsBytes {
		return o, fmt.Errorf("options are %d bytes, over the limit of %d", len(value), MaxOptionsBytes)
	}
	if len(bytes.TrimSpace(value)) == 0 {
		return o, nil
	}
	if bytes.TrimSpace(value)[0] != '{' {
		return o, errors.New("options must be empty or a JSON object")
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(value, &fields) == nil {
		for _, f := range commandFields {
			if _, ok := fields[f]; ok {
				return o, fmt.Errorf("options: field %q is not allowed: a request cannot carry a command: name a kind that members declare in their config", f)
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return Options{}, fmt.Errorf("options: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Options{}, errors.New("options: trailing data after the JSON object")
	}
	if o.Kind != "" {
		if err := workload.ValidateKindName(o.Kind); err != nil {
			return Options{}, fmt.Errorf("options: %w", err)
		}
	}
	return o, nil
}
