package registry_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/registry"
)

func TestParseAgeRecord(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    registry.AgeRecord
		wantErr string // substring; "" means valid
	}{
		{
			name: "good",
			in:   `{"life_id":12,"age_ms":381500,"incarnation":3,"holder":"m1","holder_rev":40,"time":"2024-05-06T07:08:09.5Z"}`,
			want: registry.AgeRecord{LifeID: 12, AgeMS: 381500, Incarnation: 3, Holder: "m1", HolderRev: 40,
				Time: time.Date(2024, 5, 6, 7, 8, 9, 5e8, time.UTC)},
		},
		{
			name: "age zero",
			in:   `{"life_id":1,"age_ms":0,"incarnation":1,"holder":"m1","holder_rev":2,"time":"2024-05-06T07:08:09Z"}`,
			want: registry.AgeRecord{LifeID: 1, Incarnation: 1, Holder: "m1", HolderRev: 2, Time: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)},
		},
		{name: "garbage", in: `garbage`, wantErr: "invalid character"},
		{name: "empty", in: ``, wantErr: "corrupt"},
		{name: "array", in: `[1,2]`, wantErr: "corrupt"},
		{name: "age of the wrong type", in: `{"life_id":1,"age_ms":"5","incarnation":1}`, wantErr: "corrupt"},
		{name: "life id 0", in: `{"life_id":0,"age_ms":5,"incarnation":1}`, wantErr: "life_id 0"},
		{name: "life id missing", in: `{"age_ms":5,"incarnation":1}`, wantErr: "life_id 0"},
		{name: "negative life id", in: `{"life_id":-3,"age_ms":5,"incarnation":1}`, wantErr: "life_id -3"},
		{name: "negative age", in: `{"life_id":1,"age_ms":-1,"incarnation":1}`, wantErr: "age_ms -1"},
		{name: "incarnation 0", in: `{"life_id":1,"age_ms":5,"incarnation":0}`, wantErr: "incarnation 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := registry.ParseAgeRecord([]byte(tt.in))
			if tt.wantErr != "" {
				if !errors.Is(err, registry.ErrCorrupt) {
					t.Fatalf("ParseAgeRecord(%q) error = %v, want ErrCorrupt", tt.in, err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseAgeRecord(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
				}
				if got != (registry.AgeRecord{}) {
					t.Fatalf("ParseAgeRecord(%q) returned %+v with its error, want the zero record", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAgeRecord(%q) = %v", tt.in, err)
			}
			if !sameRecord(got, tt.want) {
				t.Fatalf("ParseAgeRecord(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestAgeRecordMarshalRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		rec  registry.AgeRecord
	}{
		{name: "fresh", rec: registry.AgeRecord{LifeID: 1, Incarnation: 1, Holder: "m1", HolderRev: 2, Time: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}},
		{name: "old and local time", rec: registry.AgeRecord{LifeID: 1 << 40, AgeMS: 86_400_123, Incarnation: 99, Holder: "pod-7f9c", HolderRev: 1<<40 + 5,
			Time: time.Date(2024, 1, 2, 3, 4, 5, 123456789, time.FixedZone("X", 3600))}},
		{name: "unicode holder", rec: registry.AgeRecord{LifeID: 3, AgeMS: 999, Incarnation: 2, Holder: "hôte-日本", HolderRev: 4, Time: time.Unix(1700000000, 0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.rec.Marshal()
			got, err := registry.ParseAgeRecord(b)
			if err != nil {
				t.Fatalf("ParseAgeRecord(Marshal()) = %v; bytes %s", err, b)
			}
			if !sameRecord(got, tt.rec) {
				t.Fatalf("round trip = %+v, want %+v; bytes %s", got, tt.rec, b)
			}
		})
	}
}

func TestMemberRecordMarshal(t *testing.T) {
	m := registry.MemberRecord{ID: "m1", Address: ":8080", Version: "dev", Started: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), Lives: 3}
	got := string(m.Marshal())
	for _, field := range []string{`"id":"m1"`, `"address":":8080"`, `"version":"dev"`, `"started":"2024-01-02T03:04:05Z"`, `"lives":3`} {
		if !strings.Contains(got, field) {
			t.Errorf("MemberRecord.Marshal() = %s, want it to contain %s", got, field)
		}
	}
}

func TestMemberRecordPID(t *testing.T) {
	m := registry.MemberRecord{ID: "m1", PID: 4242}
	if got := string(m.Marshal()); !strings.Contains(got, `"pid":4242`) {
		t.Errorf("MemberRecord.Marshal() = %s, want it to contain \"pid\":4242", got)
	}
	// A record of a member from before the pid field still parses, with pid 0.
	var old registry.MemberRecord
	if err := json.Unmarshal([]byte(`{"id":"m0","address":":8080","version":"v0","started":"2024-01-02T03:04:05Z","lives":2}`), &old); err != nil {
		t.Fatalf("old record: %v", err)
	}
	if old.ID != "m0" || old.Lives != 2 || old.PID != 0 {
		t.Errorf("old record parsed as %+v, want id m0, lives 2, pid 0", old)
	}
}

// sameRecord compares records, times by instant.
func sameRecord(a, b registry.AgeRecord) bool {
	ta, tb := a.Time, b.Time
	a.Time, b.Time = time.Time{}, time.Time{}
	return a == b && ta.Equal(tb)
}
