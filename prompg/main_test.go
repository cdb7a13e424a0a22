package prompg_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := fxtest_helpers.Shutdown(); err != nil {
		fmt.Fprintln(os.Stderr, "stop test postgres:", err)
		code = 1
	}
	// Only after Shutdown: the test server's process is watched by a
	// goroutine for as long as it runs.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
