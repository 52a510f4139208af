package supervisor

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(memberEnv) != "" {
		runMember() // TestWorkChildDiesWithItsMember: this process is a member
	}
	goleak.VerifyTestMain(m)
}
