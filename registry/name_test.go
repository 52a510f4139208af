package registry_test

import (
	"strings"
	"testing"

	"github.com/immortald/immortald/registry"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr string // substring of the error; "" means valid
	}{
		{name: "plain", in: "Adam"},
		{name: "digits and punctuation", in: "life-1_2.3:x@y"},
		{name: "unicode letters", in: "Ädam-日本語-Ωμέγα"},
		{name: "dots inside", in: "a..b"},
		{name: "128 bytes", in: strings.Repeat("a", 128)},
		{name: "128 bytes of multibyte runes", in: strings.Repeat("é", 64)},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "129 bytes", in: strings.Repeat("a", 129), wantErr: "129 bytes"},
		{name: "130 bytes of multibyte runes", in: strings.Repeat("é", 65), wantErr: "130 bytes"},
		{name: "slash", in: "a/b", wantErr: `'/'`},
		{name: "only slash", in: "/", wantErr: `'/'`},
		{name: "space", in: "bad name", wantErr: "white space"},
		{name: "tab", in: "a\tb", wantErr: "white space"},
		{name: "newline", in: "a\n", wantErr: "white space"},
		{name: "carriage return", in: "a\rb", wantErr: "white space"},
		{name: "no-break space", in: "a\u00a0b", wantErr: "white space"},
		{name: "NUL", in: "a\x00b", wantErr: "control character U+0000"},
		{name: "escape", in: "\x1b[31m", wantErr: "control character U+001B"},
		{name: "DEL", in: "a\x7f", wantErr: "control character U+007F"},
		{name: "C1 control", in: "a\u0090", wantErr: "control character U+0090"},
		{name: "zero-width space", in: "Ad\u200bam", wantErr: "format character U+200B at byte 2"},
		{name: "byte-order mark", in: "\ufeffAdam", wantErr: "format character U+FEFF at byte 0"},
		{name: "right-to-left override", in: "Adam\u202egpj.exe", wantErr: "format character U+202E"},
		{name: "zero-width joiner", in: "a\u200db", wantErr: "format character U+200D"},
		{name: "soft hyphen", in: "Ad\u00adam", wantErr: "format character U+00AD"},
		{name: "invalid UTF-8", in: "a\xffb", wantErr: "UTF-8"},
		{name: "truncated UTF-8", in: "\xc3", wantErr: "UTF-8"},
		{name: "dot", in: ".", wantErr: "not allowed"},
		{name: "dot dot", in: "..", wantErr: "not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := registry.ValidateName(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateName(%q) = %v, want nil", tt.in, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateName(%q) = nil, want an error containing %q", tt.in, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateName(%q) = %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]string // labels
		wantErr string            // substring; "" means valid
	}{
		{name: "empty", in: ""},
		{name: "white space", in: " \t\n "},
		{name: "empty object", in: "{}"},
		{name: "empty object in white space", in: "\n {} \n"},
		{name: "labels", in: `{"labels":{"a":"b"}}`, want: map[string]string{"a": "b"}},
		{name: "unknown field", in: `{"labls":{"a":"b"}}`, wantErr: `unknown field "labls"`},
		{name: "array", in: `[]`, wantErr: "JSON object"},
		{name: "string", in: `"x"`, wantErr: "JSON object"},
		{name: "null", in: `null`, wantErr: "JSON object"},
		{name: "not JSON", in: `not json`, wantErr: "JSON object"},
		{name: "broken object", in: `{"labels":`, wantErr: "options"},
		{name: "labels of the wrong type", in: `{"labels":["a"]}`, wantErr: "options"},
		{name: "trailing object", in: `{} {}`, wantErr: "trailing data"},
		{name: "trailing garbage", in: `{}x`, wantErr: "trailing data"},
		{name: "labels at the size limit", in: `{"labels":{"a":"` + strings.Repeat("x", registry.MaxOptionsBytes-len(`{"labels":{"a":""}}`)) + `"}}`,
			want: map[string]string{"a": strings.Repeat("x", registry.MaxOptionsBytes-len(`{"labels":{"a":""}}`))}},
		{name: "labels over the size limit", in: `{"labels":{"a":"` + strings.Repeat("x", 1<<20) + `"}}`, wantErr: "over the limit of 8192"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := registry.ParseOptions([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseOptions(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				if o.Labels != nil {
					t.Fatalf("ParseOptions(%q) returned labels %v with its error", tt.in, o.Labels)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseOptions(%q) = %v, want nil", tt.in, err)
			}
			if !equalMaps(o.Labels, tt.want) {
				t.Fatalf("ParseOptions(%q).Labels = %v, want %v", tt.in, o.Labels, tt.want)
			}
		})
	}
}

func TestParseLife(t *testing.T) {
	tests := []struct {
		name  string
		life  string
		value string
		valid bool
	}{
		{name: "valid", life: "Adam", value: `{"labels":{"team":"a"}}`, valid: true},
		{name: "bad name", life: "bad name", value: "", valid: false},
		{name: "bad options", life: "Adam", value: "[]", valid: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := registry.ParseLife(tt.life, 7, 9, []byte(tt.value))
			if l.Name != tt.life || l.ID != 7 || l.ModRevision != 9 {
				t.Fatalf("ParseLife = %+v, want name %q, id 7, mod revision 9", l, tt.life)
			}
			if l.Valid() != tt.valid {
				t.Fatalf("ParseLife(%q, %q).Valid() = %v (err %v), want %v", tt.life, tt.value, l.Valid(), l.Err, tt.valid)
			}
		})
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
