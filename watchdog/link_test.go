package watchdog

import (
	"os"
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
			rep := readReport(strings.NewReader(tt.in), func(id int64) { told = append(told, id) }, nil)
			if !slices.Equal(rep.leases, tt.leases) || !slices.Equal(told, tt.leases) {
				t.Errorf("leases %x (told %x), want %x", rep.leases, told, tt.leases)
			}
			if rep.closing != tt.closing {
				t.Errorf("closing %v, want %v", rep.closing, tt.closing)
			}
		})
	}
}

// A member's work deadlines reach the watchdog in order, 0 disarming it;
// lines that do not parse are skipped. Link.Deadline sends only changes.
func TestDeadlines(t *testing.T) {
	var got []int64
	_ = readReport(strings.NewReader("deadline 5\ndeadline x\ndeadline -3\nlease 1\ndeadline 0\ndeadline 9\n"), nil, func(ns int64) { got = append(got, ns) })
	if want := []int64{5, 0, 9}; !slices.Equal(got, want) {
		t.Fatalf("deadlines %v, want %v", got, want)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{f: w}
	d := time.Now().Add(time.Second)
	l.Deadline(d, true)
	l.Deadline(d, true) // unchanged: not sent again
	l.Deadline(time.Time{}, false)
	_ = w.Close()
	got = nil
	_ = readReport(r, nil, func(ns int64) { got = append(got, ns) })
	if len(got) != 2 || got[1] != 0 {
		t.Fatalf("sent %v, want one deadline, then 0", got)
	}
	if ahead := time.Duration(got[0] - monoNow()); ahead <= 0 || ahead > time.Second {
		t.Fatalf("the deadline sent is %s from now, want within the second ahead", ahead)
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
