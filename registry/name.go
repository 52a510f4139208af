package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode"
	"unicode/utf8"
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
}

// MaxOptionsBytes is the largest request value accepted. Every member keeps
// every request's options in memory, and `ls` reads them all; labels need
// far less.
const MaxOptionsBytes = 8 << 10

// ParseOptions decodes a request value. Empty (or only white space) means
// default options. A value over MaxOptionsBytes is an error, unread.
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
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return Options{}, fmt.Errorf("options: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Options{}, errors.New("options: trailing data after the JSON object")
	}
	return o, nil
}
