package workload_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/age"
	"github.com/immortald/immortald/workload/workloadtest"
)

func TestValidateKindName(t *testing.T) {
	for _, ok := range []string{"age", "counter", "a", "job-2", "a" + strings.Repeat("b", 62)} {
		if err := workload.ValidateKindName(ok); err != nil {
			t.Errorf("ValidateKindName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "Counter", "2job", "-x", "a_b", "a b", "a/b", "a" + strings.Repeat("b", 63), "çount"} {
		if err := workload.ValidateKindName(bad); err == nil {
			t.Errorf("ValidateKindName(%q) = nil, want an error", bad)
		}
	}
}

func TestKindValidate(t *testing.T) {
	if err := age.Kind().Validate(); err != nil {
		t.Fatalf("age kind: %v", err)
	}
	if age.Kind().New != nil {
		t.Error("the age kind has a New: it must run nothing but the age")
	}
	if err := (workload.Kind{Name: "x"}).Validate(); err != nil {
		t.Errorf("a kind without New (its age alone): %v", err)
	}
	if err := (workload.Kind{Name: "x", New: func() workload.Runner { return age.Runner{} }, StopGrace: -time.Second}).Validate(); err == nil {
		t.Error("a negative stop grace validated")
	}
}

func TestAgeRunsUntilStopped(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() { done <- age.Runner{}.Run(ctx, workloadtest.New("Adam", nil, nil)) }()
	select {
	case err := <-done:
		t.Fatalf("age Run returned before its context ended: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel(workload.ErrStopped)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("age Run after a graceful stop: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("age Run did not return after its context ended")
	}
}
