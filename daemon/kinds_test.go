package daemon_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/age"
	"github.com/immortald/immortald/workload/execkind"
)

func writeConfig(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The same kinds in YAML, JSON and TOML give the same config, with env
// names in their case and defaults filled in by New.
func TestLoadKinds(t *testing.T) {
	files := map[string]string{
		"c.yaml": `id: m1
kinds:
  counter:
    command: ["sh", "-c", "exec counter"]
    env: {COUNTER_LOG: /var/log/counter.log}
    stop_grace: 2s
    restart: always
  quiet:
    command: [/bin/true]
`,
		"c.json": `{"id":"m1","kinds":{"counter":{"command":["sh","-c","exec counter"],"env":{"COUNTER_LOG":"/var/log/counter.log"},"stop_grace":"2s","restart":"always"},"quiet":{"command":["/bin/true"]}}}`,
		"c.toml": `id = "m1"
[kinds.counter]
command = ["sh", "-c", "exec counter"]
env = {COUNTER_LOG = "/var/log/counter.log"}
stop_grace = "2s"
restart = "always"
[kinds.quiet]
command = ["/bin/true"]
`,
	}
	for name, text := range files {
		t.Run(name, func(t *testing.T) {
			kinds, err := daemon.LoadKinds(writeConfig(t, name, text))
			if err != nil {
				t.Fatal(err)
			}
			m, err := daemon.New(daemon.Config{ID: "m1", Kinds: kinds, StateDir: t.TempDir()})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if got := m.KindNames(); !slices.Equal(got, []string{"age", "counter", "quiet"}) {
				t.Fatalf("kinds %q, want age, counter and quiet", got)
			}
			c := m.Config().Kinds["counter"]
			if !filepath.IsAbs(c.Command[0]) || c.Command[2] != "exec counter" || c.Env["COUNTER_LOG"] != "/var/log/counter.log" ||
				c.StopGrace != 2*time.Second || c.Restart != execkind.RestartAlways {
				t.Errorf("counter = %+v", c)
			}
			q := m.Config().Kinds["quiet"]
			if q.StopGrace != execkind.DefaultStopGrace || q.Restart != execkind.DefaultRestart {
				t.Errorf("quiet = %+v, want the defaults", q)
			}
			if kinds["counter"].Restart != "always" || kinds["quiet"].Restart != "" {
				t.Errorf("New changed the caller's map: %+v", kinds)
			}
			if k := m.Kinds()["counter"]; k.StopGrace != 2*time.Second || k.New == nil {
				t.Errorf("workload kind %+v", k)
			}
		})
	}
	t.Run("no kinds", func(t *testing.T) {
		kinds, err := daemon.LoadKinds(writeConfig(t, "c.yaml", "id: m1\n"))
		if err != nil || len(kinds) != 0 {
			t.Fatalf("LoadKinds = %v, %v; want none", kinds, err)
		}
	})
	t.Run("default state dir", func(t *testing.T) {
		m, err := daemon.New(daemon.Config{ID: "m7"})
		if err != nil || m.Config().StateDir != filepath.Join(os.TempDir(), "immortald-m7") {
			t.Fatalf("state dir %q, %v", m.Config().StateDir, err)
		}
	})
}

// Bad kinds are refused with the setting and the rule named.
func TestBadKinds(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		want       []string
	}{
		{"not a map", "kinds: 5\n", []string{"kinds: want a map"}},
		{"bad name", "kinds:\n  Counter:\n    command: [/bin/true]\n", []string{"kinds.Counter", "lower-case"}},
		{"age declared", "kinds:\n  age:\n    command: [/bin/true]\n", []string{"kinds.age", "built in"}},
		{"no command", "kinds:\n  c:\n    restart: never\n", []string{"kinds.c.command", "non-empty"}},
		{"empty command", "kinds:\n  c:\n    command: []\n", []string{"kinds.c.command", "non-empty"}},
		{"program not found", "kinds:\n  c:\n    command: [no-such-program-anywhere]\n", []string{"kinds.c.command", "not found on PATH"}},
		{"relative path", "kinds:\n  c:\n    command: [./prog]\n", []string{"kinds.c.command", "absolute path"}},
		{"unknown field", "kinds:\n  c:\n    command: [/bin/true]\n    comand: x\n", []string{"kinds.c", `unknown field "comand"`}},
		{"number in env", "kinds:\n  c:\n    command: [/bin/true]\n    env: {PORT: 80}\n", []string{"kinds.c", "string"}},
		{"member variable in env", "kinds:\n  c:\n    command: [/bin/true]\n    env: {IMMORTALD_LIFE: x}\n", []string{"kinds.c.env", "IMMORTALD_LIFE"}},
		{"bad stop grace", "kinds:\n  c:\n    command: [/bin/true]\n    stop_grace: soon\n", []string{"kinds.c.stop_grace", `"soon"`, "duration"}},
		{"stop grace as a number", "kinds:\n  c:\n    command: [/bin/true]\n    stop_grace: 2\n", []string{"kinds.c.stop_grace", "duration"}},
		{"zero stop grace", "kinds:\n  c:\n    command: [/bin/true]\n    stop_grace: 0s\n", []string{"kinds.c.stop_grace", "positive"}},
		{"stop grace too long", "kinds:\n  c:\n    command: [/bin/true]\n    stop_grace: 1h\n", []string{"kinds.c.stop_grace", "5m0s"}},
		{"bad restart", "kinds:\n  c:\n    command: [/bin/true]\n    restart: sometimes\n", []string{"kinds.c.restart", "always, on-failure or never"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kinds, err := daemon.LoadKinds(writeConfig(t, "c.yaml", tt.yaml))
			if err == nil {
				_, err = daemon.New(daemon.Config{ID: "m1", Kinds: kinds})
			}
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tt.want)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q, want it to contain %q", err, s)
				}
			}
		})
	}
	if _, err := daemon.LoadKinds(writeConfig(t, "c.ini", "x=1")); err == nil || !strings.Contains(err.Error(), "unsupported type") {
		t.Errorf("LoadKinds of an .ini file = %v", err)
	}
}

// Go kinds of an embedding program join the member's kinds; a clash with
// the built-in kind, a command kind or another Go kind is refused.
func TestGoKinds(t *testing.T) {
	run := func() workload.Runner { return age.Runner{} }
	m, err := daemon.New(daemon.Config{ID: "m1", GoKinds: []workload.Kind{{Name: "seq", New: run}},
		Kinds: map[string]execkind.Config{"c": {Command: []string{"/bin/true"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.KindNames(); !slices.Equal(got, []string{"age", "c", "seq"}) {
		t.Fatalf("kinds %q, want age, c and seq", got)
	}
	if k := m.Kinds()["seq"]; k.New == nil || m.Kinds()["age"].New != nil {
		t.Fatalf("kinds %+v: want seq with its New, age without", m.Kinds())
	}
	for _, tt := range []struct {
		name string
		kind []workload.Kind
		want string
	}{
		{"age", []workload.Kind{{Name: "age", New: run}}, "built in"},
		{"command kind", []workload.Kind{{Name: "c", New: run}}, "command kind"},
		{"twice", []workload.Kind{{Name: "s", New: run}, {Name: "s", New: run}}, "given twice"},
		{"bad name", []workload.Kind{{Name: "S", New: run}}, "lower-case"},
	} {
		_, err := daemon.New(daemon.Config{ID: "m1", GoKinds: tt.kind, Kinds: map[string]execkind.Config{"c": {Command: []string{"/bin/true"}}}})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}
