package main

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// TestRunWithNothingConfigured is what `go run ./examples/basic` does on a
// fresh machine: no POSTGRES_URL, so a throwaway server is started.
func TestRunWithNothingConfigured(t *testing.T) {
	t.Setenv("POSTGRES_URL", "")
	core, logs := observer.New(zapcore.InfoLevel)
	logger := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))

	require.NoError(t, run(logger))

	require.Equal(t, 1, logs.FilterMessage("POSTGRES_URL is unset: started a throwaway PostgreSQL for this run").Len())
	require.Equal(t, 1, logs.FilterMessage("connected to postgres").Len())
	require.Equal(t, 3, logs.FilterMessage("query done").Len())
	require.Equal(t, 1, logs.FilterMessage("duplicate insert refused, as the original answered with 409 Conflict").Len())
	status := logs.FilterMessage("status").All()
	require.Len(t, status, 1)
	require.Equal(t, true, status[0].ContextMap()["available"])
}
