package pgserver

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// childEnvVar switches the test binary into the helper process of
// TestLocalDiesWithParent.
const childEnvVar = "PGSERVER_TEST_ORPHAN_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnvVar) == "1" {
		os.Exit(runOrphanChild())
	}
	goleak.VerifyTestMain(m)
}

// runOrphanChild starts a server, reports it on stdout and waits to be
// killed.
func runOrphanChild() int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := Start(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l := s.b.(*localServer)
	fmt.Printf("%d %s\n", l.proc.cmd.Process.Pid, l.dir)
	select {}
}
