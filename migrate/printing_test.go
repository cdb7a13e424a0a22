package migrate_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/migrate"
)

const secret = "s3cr3t-Pw0rd"

// A Config never shows its URL's password, whatever prints it.
func TestConfigNeverShowsPassword(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"postgres://app:" + secret + "@db.example:5432/orders?sslmode=require",
		"host=db.example user=app password=" + secret + " dbname=orders",
		"postgres://app@db.example/orders?password=" + secret,
	} {
		cfg := migrate.Config{Mode: migrate.ModeOnly, URL: url, Lock: migrate.LockTable,
			LockTimeout: 30 * time.Second, Timeout: time.Minute}
		var printed []string
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%d", "%x", "%20v"} {
			printed = append(printed, fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, &cfg))
		}
		printed = append(printed, cfg.String(), fmt.Sprint(cfg), fmt.Sprintln(cfg),
			fmt.Sprintf("%v", struct{ C migrate.Config }{cfg}), fmt.Sprintf("%+v", []migrate.Config{cfg}))
		for _, v := range []any{cfg, &cfg, struct{ C migrate.Config }{cfg}, map[string]migrate.Config{"m": cfg}} {
			b, err := json.Marshal(v)
			require.NoError(t, err)
			printed = append(printed, string(b))
		}
		var logged bytes.Buffer
		logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logged), zap.DebugLevel))
		logger.Info("config", zap.Any("any", cfg), zap.Stringer("stringer", cfg), zap.Reflect("reflect", cfg))
		printed = append(printed, logged.String())

		for _, p := range printed {
			assert.NotContains(t, p, secret, "url %q", url)
		}
		// The rest is all there.
		assert.Contains(t, cfg.String(), "db.example")
		assert.Contains(t, cfg.String(), "mode only")
		assert.Contains(t, cfg.String(), "lock table")
		var back map[string]any
		b, err := json.Marshal(cfg)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, &back))
		assert.Equal(t, "only", back["Mode"])
		assert.Contains(t, back["URL"], "db.example")
	}
	assert.Contains(t, fmt.Sprint(migrate.Config{}), "(the instance's)")
}

// A bad migration URL, or one that cannot be reached, fails without
// showing its password.
func TestMigrationURLErrorsHidePassword(t *testing.T) {
	t.Run("bad URL", func(t *testing.T) {
		t.Setenv(sprocketspg.EnvURL, "postgres://u@127.0.0.1:1/default")
		t.Setenv(migrate.EnvURL, "app:"+secret+"@db.example")
		err := newAppErr(t, sprocketspg.Module, migrate.Migrations(basicFS)).Err()
		require.Error(t, err)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
		assert.Contains(t, err.Error(), "POSTGRES_MIGRATION_URL")
		assert.NotContains(t, err.Error(), secret)
	})
	t.Run("unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		closed := ln.Addr().String()
		require.NoError(t, ln.Close())
		t.Setenv(sprocketspg.EnvURL, fxtest_helpers.NewDatabase(t))
		t.Setenv(migrate.EnvURL, "postgres://app:"+secret+"@"+closed+"/db?sslmode=disable&connect_timeout=2")
		app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS))
		began := time.Now()
		err = app.Start(ctxT(t))
		require.Error(t, err)
		t.Logf("failed after %s: %v", time.Since(began).Round(time.Millisecond), err)
		assert.Less(t, time.Since(began), 15*time.Second)
		assert.NotContains(t, err.Error(), secret)
	})
}
