package registry_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
)

func TestStatus(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t, "/immortals/")
	ctx := context.Background()
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

	// A keyspace next door that must never show.
	mustPut(t, cli, "/other/lives/Stranger", "")
	mustPut(t, cli, "/immortals/livesX", "")

	type want struct {
		state       string
		ageMS       int64
		incarnation int64
		holder      string
		checkpoint  bool // CheckpointTime is set
		labels      map[string]string
		errHas      []string // substrings of Error; none means Error is ""
	}
	tests := []struct {
		name  string
		setup func(t *testing.T) (lifeID int64) // writes the keys of the life named name
		want  want
	}{
		{
			name: "Running",
			setup: func(t *testing.T) int64 {
				id := mustPut(t, cli, keys.Life("Running"), "")
				e := mustPut(t, cli, keys.Election("Running")+"/694d8f3a2b1c0e07", "m1")
				mustPut(t, cli, keys.Age("Running"), string(registry.AgeRecord{LifeID: id, AgeMS: 5500, Incarnation: 3, Holder: "m1", HolderRev: e, Time: at}.Marshal()))
				return id
			},
			want: want{state: registry.StateRunning, ageMS: 5500, incarnation: 3, holder: "m1", checkpoint: true},
		},
		{
			name: "RunningFirstCandidate",
			setup: func(t *testing.T) int64 {
				id := mustPut(t, cli, keys.Life("RunningFirstCandidate"), "")
				// The key with the lower create revision leads, whatever its lease part.
				e := mustPut(t, cli, keys.Election("RunningFirstCandidate")+"/ffff", "m1")
				mustPut(t, cli, keys.Election("RunningFirstCandidate")+"/0000", "m2")
				mustPut(t, cli, keys.Age("RunningFirstCandidate"), string(registry.AgeRecord{LifeID: id, AgeMS: 1000, Incarnation: 1, Holder: "m1", HolderRev: e, Time: at}.Marshal()))
				return id
			},
			want: want{state: registry.StateRunning, ageMS: 1000, incarnation: 1, holder: "m1", checkpoint: true},
		},
		{
			name: "RecordOfAFollower",
			setup: func(t *testing.T) int64 {
				id := mustPut(t, cli, keys.Life("RecordOfAFollower"), "")
				mustPut(t, cli, keys.Election("RecordOfAFollower")+"/aaaa", "m1")
				e2 := mustPut(t, cli, keys.Election("RecordOfAFollower")+"/bbbb", "m2")
				mustPut(t, cli, keys.Age("RecordOfAFollower"), string(registry.AgeRecord{LifeID: id, AgeMS: 2000, Incarnation: 2, Holder: "m2", HolderRev: e2, Time: at}.Marshal()))
				return id
			},
			want: want{state: registry.StateWaiting, ageMS: 2000, incarnation: 2, checkpoint: true},
		},
		{
			name: "WaitingWithAge",
			setup: func(t *testing.T) int64 {
				id := mustPut(t, cli, keys.Life("WaitingWithAge"), "")
				mustPut(t, cli, keys.Age("WaitingWithAge"), string(registry.AgeRecord{LifeID: id, AgeMS: 61999, Incarnation: 4, Holder: "gone", HolderRev: 3, Time: at}.Marshal()))
				return id
			},
			want: want{state: registry.StateWaiting, ageMS: 61999, incarnation: 4, checkpoint: true},
		},
		{
			name: "WaitingNew",
			setup: func(t *testing.T) int64 {
				return mustPut(t, cli, keys.Life("WaitingNew"), "")
			},
			want: want{state: registry.StateWaiting},
		},
		{
			name: "Labelled",
			setup: func(t *testing.T) int64 {
				return mustPut(t, cli, keys.Life("Labelled"), `{"labels":{"team":"a","tier":"1"}}`)
			},
			want: want{state: registry.StateWaiting, labels: map[string]string{"team": "a", "tier": "1"}},
		},
		{
			name: "bad name",
			setup: func(t *testing.T) int64 {
				return mustPut(t, cli, keys.Life("bad name"), "")
			},
			want: want{state: registry.StateInvalid, errHas: []string{"white space"}},
		},
		{
			name: "BadOptions",
			setup: func(t *testing.T) int64 {
				return mustPut(t, cli, keys.Life("BadOptions"), `{"lables":{}}`)
			},
			want: want{state: registry.StateInvalid, errHas: []string{`unknown field "lables"`}},
		},
		{
			name: "CorruptAge",
			setup: func(t *testing.T) int64 {
				id := mustPut(t, cli, keys.Life("CorruptAge"), "")
				mustPut(t, cli, keys.Election("CorruptAge")+"/aaaa", "m1")
				mustPut(t, cli, keys.Age("CorruptAge"), "garbage")
				return id
			},
			want: want{state: registry.StateWaiting, errHas: []string{"/immortals/ages/CorruptAge", "does not parse"}},
		},
		{
			name: "Quarantined",
			setup: func(t *testing.T) int64 {
				id := mustPut(t, cli, keys.Life("Quarantined"), "")
				mustPut(t, cli, keys.Age("Quarantined"), string(registry.AgeRecord{LifeID: id, AgeMS: 3000, Incarnation: 1, Holder: "m1", HolderRev: 2, Time: at}.Marshal()))
				mustPut(t, cli, keys.Quarantine("Quarantined"), "garbage")
				return id
			},
			want: want{state: registry.StateWaiting, ageMS: 3000, incarnation: 1, checkpoint: true, errHas: []string{"/immortals/quarantine/Quarantined"}},
		},
		{
			name: "CorruptAndQuarantined",
			setup: func(t *testing.T) int64 {
				id := mustPut(t, cli, keys.Life("CorruptAndQuarantined"), "")
				mustPut(t, cli, keys.Age("CorruptAndQuarantined"), `{"life_id":0}`)
				mustPut(t, cli, keys.Quarantine("CorruptAndQuarantined"), "garbage")
				return id
			},
			want: want{state: registry.StateWaiting, errHas: []string{"does not parse", "; ", "/immortals/quarantine/CorruptAndQuarantined"}},
		},
		{
			name: "Reborn",
			setup: func(t *testing.T) int64 {
				old := mustPut(t, cli, keys.Life("Reborn"), "")
				mustDelete(t, cli, keys.Life("Reborn"))
				id := mustPut(t, cli, keys.Life("Reborn"), "")
				// The old life's holder still leads and its record is there:
				// neither its age nor its holder belongs to the new life.
				e := mustPut(t, cli, keys.Election("Reborn")+"/aaaa", "m1")
				mustPut(t, cli, keys.Age("Reborn"), string(registry.AgeRecord{LifeID: old, AgeMS: 9000, Incarnation: 5, Holder: "m1", HolderRev: e, Time: at}.Marshal()))
				return id
			},
			want: want{state: registry.StateWaiting},
		},
	}

	ids := make(map[string]int64)
	for _, tt := range tests {
		ids[tt.name] = tt.setup(t)
	}
	check := func(t *testing.T, name string, w want, st registry.Status) {
		t.Helper()
		if st.Name != name || st.LifeID != ids[name] {
			t.Errorf("name %q life id %d, want %q and %d", st.Name, st.LifeID, name, ids[name])
		}
		if st.State != w.state {
			t.Errorf("state %q, want %q (error %q)", st.State, w.state, st.Error)
		}
		if st.AgeMS != w.ageMS || st.Age != w.ageMS/1000 {
			t.Errorf("age %d s (%d ms), want %d s (%d ms)", st.Age, st.AgeMS, w.ageMS/1000, w.ageMS)
		}
		if st.Incarnation != w.incarnation {
			t.Errorf("incarnation %d, want %d", st.Incarnation, w.incarnation)
		}
		if st.Holder != w.holder {
			t.Errorf("holder %q, want %q", st.Holder, w.holder)
		}
		switch {
		case w.checkpoint && (st.CheckpointTime == nil || !st.CheckpointTime.Equal(at)):
			t.Errorf("checkpoint time %v, want %v", st.CheckpointTime, at)
		case !w.checkpoint && st.CheckpointTime != nil:
			t.Errorf("checkpoint time %v, want none", st.CheckpointTime)
		}
		if !equalMaps(st.Labels, w.labels) {
			t.Errorf("labels %v, want %v", st.Labels, w.labels)
		}
		if len(w.errHas) == 0 && st.Error != "" {
			t.Errorf("error %q, want none", st.Error)
		}
		for _, s := range w.errHas {
			if !strings.Contains(st.Error, s) {
				t.Errorf("error %q, want it to contain %q", st.Error, s)
			}
		}
	}

	all, err := registry.ListStatus(ctx, cli, keys)
	if err != nil {
		t.Fatalf("ListStatus: %v", err)
	}
	var names, wantNames []string
	byName := make(map[string]registry.Status)
	for _, st := range all {
		names = append(names, st.Name)
		byName[st.Name] = st
	}
	for _, tt := range tests {
		wantNames = append(wantNames, tt.name)
	}
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		t.Fatalf("ListStatus names = %q, want %q (sorted, this keyspace only)", names, wantNames)
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := registry.GetStatus(ctx, cli, keys, tt.name)
			if err != nil {
				t.Fatalf("GetStatus: %v", err)
			}
			t.Run("GetStatus", func(t *testing.T) { check(t, tt.name, tt.want, st) })
			t.Run("ListStatus", func(t *testing.T) { check(t, tt.name, tt.want, byName[tt.name]) })
		})
	}
}

func TestGetStatusNoLife(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t, "/immortals/")
	ctx := context.Background()

	// Leftovers of an ended life, and a life in another keyspace.
	mustPut(t, cli, keys.Age("Ended"), string(registry.AgeRecord{LifeID: 1, AgeMS: 1, Incarnation: 1}.Marshal()))
	mustPut(t, cli, keys.Election("Ended")+"/aaaa", "m1")
	mustPut(t, cli, "/other/lives/Elsewhere", "")
	// A life whose name starts with the asked one.
	mustPut(t, cli, keys.Life("Adamant"), "")

	tests := []struct {
		name string
		life string
	}{
		{name: "never requested", life: "Nobody"},
		{name: "ended", life: "Ended"},
		{name: "other keyspace", life: "Elsewhere"},
		{name: "prefix of another life", life: "Adam"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := registry.GetStatus(ctx, cli, keys, tt.life)
			if !errors.Is(err, registry.ErrNoLife) {
				t.Fatalf("GetStatus(%q) = %+v, %v; want ErrNoLife", tt.life, st, err)
			}
			if !strings.Contains(err.Error(), tt.life) {
				t.Fatalf("GetStatus(%q) error %q does not name the life", tt.life, err)
			}
		})
	}
	t.Run("empty name", func(t *testing.T) {
		if _, err := registry.GetStatus(ctx, cli, keys, ""); err == nil {
			t.Fatal("GetStatus(\"\") = nil error")
		}
	})
	t.Run("empty list", func(t *testing.T) {
		empty := mustKeys(t, "/empty/")
		all, err := registry.ListStatus(ctx, cli, empty)
		if err != nil || all == nil || len(all) != 0 {
			t.Fatalf("ListStatus of an empty keyspace = %#v, %v; want an empty, non-nil list", all, err)
		}
	})
}
