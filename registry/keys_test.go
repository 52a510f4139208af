package registry_test

import (
	"testing"

	"github.com/immortald/immortald/registry"
)

func TestNewKeys(t *testing.T) {
	tests := []struct {
		name    string
		prefix  string
		wantErr bool
	}{
		{name: "default", prefix: registry.DefaultPrefix},
		{name: "root", prefix: "/"},
		{name: "nested", prefix: "/team/a/immortals/"},
		{name: "empty", prefix: "", wantErr: true},
		{name: "no trailing slash", prefix: "/immortals", wantErr: true},
		{name: "trailing space", prefix: "/immortals/ ", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := registry.NewKeys(tt.prefix)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewKeys(%q) = %q, nil; want an error", tt.prefix, k.Prefix())
				}
				return
			}
			if err != nil {
				t.Fatalf("NewKeys(%q) = %v", tt.prefix, err)
			}
			if k.Prefix() != tt.prefix {
				t.Fatalf("Prefix() = %q, want %q", k.Prefix(), tt.prefix)
			}
		})
	}
}

func TestKeysLayout(t *testing.T) {
	k := mustKeys(t, "/p/")
	tests := []struct {
		name string
		got  string
		want string
	}{
		{name: "lives", got: k.Lives(), want: "/p/lives/"},
		{name: "life", got: k.Life("Adam"), want: "/p/lives/Adam"},
		{name: "elections", got: k.Elections(), want: "/p/elections/"},
		{name: "election", got: k.Election("Adam"), want: "/p/elections/Adam"},
		{name: "ages", got: k.Ages(), want: "/p/ages/"},
		{name: "age", got: k.Age("Adam"), want: "/p/ages/Adam"},
		{name: "quarantines", got: k.Quarantines(), want: "/p/quarantine/"},
		{name: "quarantine", got: k.Quarantine("Adam"), want: "/p/quarantine/Adam"},
		{name: "states", got: k.States(), want: "/p/states/"},
		{name: "state", got: k.State("Adam"), want: "/p/states/Adam"},
		{name: "state quarantines", got: k.StateQuarantines(), want: "/p/quarantine-states/"},
		{name: "state quarantine", got: k.StateQuarantine("Adam"), want: "/p/quarantine-states/Adam"},
		{name: "children", got: k.Children(), want: "/p/children/"},
		{name: "child", got: k.Child("Adam"), want: "/p/children/Adam"},
		{name: "members", got: k.Members(), want: "/p/members/"},
		{name: "member", got: k.Member("m1"), want: "/p/members/m1"},
		{name: "name of a life", got: registry.NameOf(k.Lives(), "/p/lives/Adam"), want: "Adam"},
		{name: "name of an age", got: registry.NameOf(k.Ages(), "/p/ages/Eve"), want: "Eve"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

// states/ is the last section: StatusWatch's watch ends where it starts,
// so every section a status derives from must sort before it, and no
// section but states/ may sort at or after it.
func TestStatesIsTheLastSection(t *testing.T) {
	k := mustKeys(t, "/p/")
	for _, sec := range []string{k.Lives(), k.Elections(), k.Ages(), k.Quarantines(), k.StateQuarantines(),
		k.Children(), k.Heartbeats(), k.Members()} {
		if sec >= k.States() {
			t.Errorf("section %q sorts at or after %q: StatusWatch would not see it", sec, k.States())
		}
	}
}

func TestElectionName(t *testing.T) {
	k := mustKeys(t, "/immortals/")
	tests := []struct {
		name     string
		key      string
		wantName string
		wantOK   bool
	}{
		{name: "candidate", key: "/immortals/elections/Adam/694d8f3a2b1c0e07", wantName: "Adam", wantOK: true},
		{name: "unicode name", key: "/immortals/elections/Ädam/1", wantName: "Ädam", wantOK: true},
		{name: "name with a space", key: "/immortals/elections/a b/1", wantName: "a b", wantOK: true},
		{name: "no lease part", key: "/immortals/elections/Adam", wantOK: false},
		{name: "empty name", key: "/immortals/elections//694d", wantOK: false},
		{name: "the prefix itself", key: "/immortals/elections/", wantOK: false},
		{name: "another section", key: "/immortals/lives/Adam/694d", wantOK: false},
		{name: "another keyspace", key: "/other/elections/Adam/694d", wantOK: false},
		{name: "empty", key: "", wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := k.ElectionName(tt.key)
			if ok != tt.wantOK || got != tt.wantName {
				t.Fatalf("ElectionName(%q) = %q, %v; want %q, %v", tt.key, got, ok, tt.wantName, tt.wantOK)
			}
		})
	}
}

func mustKeys(tb testing.TB, prefix string) registry.Keys {
	tb.Helper()
	k, err := registry.NewKeys(prefix)
	if err != nil {
		tb.Fatalf("NewKeys(%q): %v", prefix, err)
	}
	return k
}
