package listen_test

import (
	"os"
	"testing"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

func TestMain(m *testing.M) { os.Exit(fxtest_helpers.RunTests(m)) }
