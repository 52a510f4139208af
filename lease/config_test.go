package lease_test

import (
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/lease"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     lease.Config
		wantErr []string // substrings of the error; none means valid
	}{
		{name: "default 5s", cfg: lease.Config{TTL: 5 * time.Second, Margin: time.Second}},
		{name: "floor 2s", cfg: lease.Config{TTL: 2 * time.Second, Margin: lease.DefaultMargin(2 * time.Second)}},
		{name: "margin just below half", cfg: lease.Config{TTL: 4 * time.Second, Margin: 2*time.Second - time.Nanosecond}},
		{name: "TTL 1s", cfg: lease.Config{TTL: time.Second, Margin: 250 * time.Millisecond}, wantErr: []string{"(1s)", "2s"}},
		{name: "TTL 0", cfg: lease.Config{Margin: time.Second}, wantErr: []string{"(0s)", "2s"}},
		{name: "TTL not whole seconds", cfg: lease.Config{TTL: 2500 * time.Millisecond, Margin: 250 * time.Millisecond}, wantErr: []string{"2.5s", "whole seconds"}},
		{name: "margin half the TTL", cfg: lease.Config{TTL: 4 * time.Second, Margin: 2 * time.Second}, wantErr: []string{"margin (2s)", "(4s)"}},
		{name: "margin over the TTL", cfg: lease.Config{TTL: 4 * time.Second, Margin: 5 * time.Second}, wantErr: []string{"margin (5s)", "(4s)"}},
		{name: "margin 0", cfg: lease.Config{TTL: 5 * time.Second}, wantErr: []string{"margin (0s)"}},
		{name: "negative margin", cfg: lease.Config{TTL: 5 * time.Second, Margin: -time.Second}, wantErr: []string{"margin (-1s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error containing %q", tt.wantErr)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Validate() = %q, want it to contain %q", err, s)
				}
			}
		})
	}
}
