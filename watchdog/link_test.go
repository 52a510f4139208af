package watchdog

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestReadReport(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		leases  []int64
		closing bool
	}{
		{name: "nothing", in: ""},
		{name: "one lease", in: "lease 1f\n", leases: []int64{0x1f}},
		{name: "sessions in order, then closing", in: "lease 1\nlease 2a\nclosing\n", leases: []int64{1, 0x2a}, closing: true},
		{name: "a cut last line still counts", in: "lease 3\nlease 4", leases: []int64{3, 4}},
		{name: "unknown lines and bad leases are skipped", in: "hello\nlease zz\nlease 0\nlease\nlease 5\n", leases: []int64{5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var told []int64
			rep := readReport(strings.NewReader(tt.in), func(id int64) { told = append(told, id) })
			if !slices.Equal(rep.leases, tt.leases) || !slices.Equal(told, tt.leases) {
				t.Errorf("leases %x (told %x), want %x", rep.leases, told, tt.leases)
			}
			if rep.closing != tt.closing {
				t.Errorf("closing %v, want %v", rep.closing, tt.closing)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // substring of the error; empty: valid
	}{
		{name: "defaults", change: func(*Config) {}},
		{name: "negative TTL", change: func(c *Config) { c.LeaseTTL = -time.Second }, want: "lease TTL (-1s)"},
		{name: "max below min", change: func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Second, 500*time.Millisecond }, want: "(500ms) is below the minimum (1s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Path: "/bin/true"}
			tt.change(&c)
			_, err := New(c)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("New = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
