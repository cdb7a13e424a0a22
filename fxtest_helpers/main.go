package fxtest_helpers

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// RunTests runs a test binary's tests, stops the server the helpers
// started, and then checks that no goroutine was left behind (with
// goleak); it returns the exit code. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(fxtest_helpers.RunTests(m)) }
//
// The leak check comes only after the server is stopped, since its
// process is watched by a goroutine for as long as it runs, and only when
// the tests passed, so that a failure is not buried under leak reports.
func RunTests(m *testing.M) int {
	code := m.Run()
	if err := Shutdown(); err != nil {
		fmt.Fprintln(os.Stderr, "stop test postgres:", err)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}
