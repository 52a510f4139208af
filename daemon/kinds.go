package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"sigs.k8s.io/yaml"

	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/age"
	"github.com/immortald/immortald/workload/execkind"
)

// KindsKey is the config file key that declares a member's command kinds:
//
//	kinds:
//	  counter:
//	    command: ["/usr/local/bin/counter", "--fast"]
//	    env: {COUNTER_LOG: /var/log/counter.log}
//	    stop_grace: 2s          # SIGTERM, then SIGKILL after this (default 10s, at most 5m)
//	    restart: on-failure     # always | on-failure (default) | never
//
// Kinds are read from the file alone (not from flags or the environment),
// and read by LoadKinds rather than viper, which folds keys to lower case:
// environment variable names are case-sensitive.
const KindsKey = "kinds"

// kindFile is one kind as written in the config file.
type kindFile struct {
	Command   []string          `json:"command"`
	Env       map[string]string `json:"env"`
	StopGrace json.RawMessage   `json:"stop_grace"`
	Restart   string            `json:"restart"`
}

// LoadKinds reads the kinds section of the config file at path (YAML, JSON
// or TOML, by its extension, as viper reads it). A file without the section
// has no kinds. Each kind is parsed strictly (an unknown field is an error)
// but not validated: New validates. Errors name the file and the setting.
func LoadKinds(path string) (map[string]execkind.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var top map[string]any
	switch ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), ".")); ext {
	case "yaml", "yml", "json":
		err = yaml.Unmarshal(b, &top)
	case "toml":
		err = toml.Unmarshal(b, &top)
	default:
		return nil, fmt.Errorf("config file %s: unsupported type %q: want .yaml, .yml, .json or .toml", path, ext)
	}
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	section, ok := top[KindsKey]
	if !ok || section == nil {
		return nil, nil
	}
	raw, ok := section.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("config file %s: %s: want a map of kind names to kinds", path, KindsKey)
	}
	out := make(map[string]execkind.Config, len(raw))
	for name, v := range raw {
		setting := KindsKey + "." + name
		js, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %s: %w", path, setting, err)
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		var kf kindFile
		if err := dec.Decode(&kf); err != nil {
			return nil, fmt.Errorf("config file %s: %s: %v (fields: command, a list of strings; env, a map of strings; stop_grace, a duration such as 2s; restart)", path, setting, err)
		}
		c := execkind.Config{Command: kf.Command, Env: kf.Env, Restart: kf.Restart}
		if len(kf.StopGrace) > 0 && string(kf.StopGrace) != "null" {
			var s string
			if json.Unmarshal(kf.StopGrace, &s) != nil {
				return nil, fmt.Errorf("config file %s: %s.stop_grace %s: want a duration such as 2s", path, setting, kf.StopGrace)
			}
			if c.StopGrace, err = time.ParseDuration(s); err != nil {
				return nil, fmt.Errorf("config file %s: %s.stop_grace %q: want a duration such as 2s", path, setting, s)
			}
			if c.StopGrace == 0 {
				c.StopGrace = -1 // an explicit 0 is refused by validateKinds, not taken as the default
			}
		}
		out[name] = c
	}
	return out, nil
}

// validateKinds checks the names and settings of kinds, filling in their
// defaults (see execkind.Config.Validate). Errors name the setting.
func validateKinds(kinds map[string]execkind.Config) error {
	for _, name := range slices.Sorted(maps.Keys(kinds)) {
		setting := KindsKey + "." + name
		if name == workload.AgeKind {
			return fmt.Errorf("%s: the kind %q is built in and cannot be declared", setting, name)
		}
		if err := workload.ValidateKindName(name); err != nil {
			return fmt.Errorf("%s: %w", setting, err)
		}
		c := kinds[name]
		if c.StopGrace == -1 {
			return fmt.Errorf("%s.stop_grace (0s): must be positive, at most %s (default %s)", setting, execkind.MaxStopGrace, execkind.DefaultStopGrace)
		}
		if err := c.Validate(); err != nil {
			return fmt.Errorf("%s.%w", setting, err)
		}
		kinds[name] = c
	}
	return nil
}

// validateGoKinds checks the Go kinds of an embedding program: valid
// names, distinct, neither the built-in kind nor a command kind.
func validateGoKinds(goKinds []workload.Kind, kinds map[string]execkind.Config) error {
	seen := make(map[string]bool, len(goKinds))
	for _, k := range goKinds {
		if err := k.Validate(); err != nil {
			return fmt.Errorf("Go kind: %w", err)
		}
		switch _, isCmd := kinds[k.Name]; {
		case k.Name == workload.AgeKind:
			return fmt.Errorf("Go kind %q: the kind is built in", k.Name)
		case isCmd:
			return fmt.Errorf("Go kind %q: a command kind of the config has the same name", k.Name)
		case seen[k.Name]:
			return fmt.Errorf("Go kind %q: given twice", k.Name)
		}
		seen[k.Name] = true
	}
	return nil
}

// Kinds returns the kinds this member runs, by name: the built-in age kind,
// each command kind of its config, whose state directories are made under
// Config.StateDir and whose state files are read every checkpoint
// interval, and each Go kind (Config.GoKinds).
func (m *Main) Kinds() map[string]workload.Kind { return m.kinds(nil) }

// kinds is Kinds, the command kinds telling obs (if not nil) of their
// children's exits and restarts.
func (m *Main) kinds(obs execkind.Observer) map[string]workload.Kind {
	out := map[string]workload.Kind{workload.AgeKind: age.Kind()}
	for name, c := range m.cfg.Kinds {
		out[name] = execkind.Kind(name, c, execkind.Options{StateRoot: m.cfg.StateDir, CheckpointInterval: m.cfg.CheckpointInterval, Logger: m.log, Observer: obs})
	}
	for _, k := range m.cfg.GoKinds {
		out[k.Name] = k
	}
	return out
}

// KindNames returns the sorted names of the kinds this member runs, age
// included: what its member record lists.
func (m *Main) KindNames() []string { return slices.Sorted(maps.Keys(m.Kinds())) }
