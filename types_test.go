package sprocketspg_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

const knownUUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"

func TestUUIDToggle(t *testing.T) {
	const q = "SELECT $1::uuid AS u, ARRAY[$1::uuid, NULL] AS us, NULL::uuid AS n"

	t.Run("on", func(t *testing.T) {
		pool, _ := newPool(t, func(c *sprocketspg.Config) { c.UUID = true })
		res, err := pool.Execute(ctxT(t), q, knownUUID)
		require.NoError(t, err)
		assert.Equal(t, uuid.MustParse(knownUUID), res.Row["u"])
		assert.Equal(t, []any{uuid.MustParse(knownUUID), nil}, res.Row["us"])
		assert.Nil(t, res.Row["n"])

		// uuid.UUID works as a parameter and as a scan target too.
		var back uuid.UUID
		require.NoError(t, pool.QueryRow(ctxT(t), "SELECT $1::uuid", uuid.MustParse(knownUUID)).Scan(&back))
		assert.Equal(t, knownUUID, back.String())
	})

	t.Run("off", func(t *testing.T) {
		pool, _ := newPool(t, func(c *sprocketspg.Config) { c.UUID = false })
		res, err := pool.Execute(ctxT(t), q, knownUUID)
		require.NoError(t, err)
		assert.Equal(t, knownUUID, res.Row["u"])
		assert.Equal(t, []any{knownUUID, nil}, res.Row["us"])
		assert.Nil(t, res.Row["n"])
	})
}

func TestJSONToggle(t *testing.T) {
	const q = `SELECT '{"a": [1, "x"]}'::json AS j, '{"b": true}'::jsonb AS jb,
		ARRAY['{"c": 1}'::jsonb] AS jbs, NULL::jsonb AS n`

	t.Run("on", func(t *testing.T) {
		pool, _ := newPool(t, func(c *sprocketspg.Config) { c.JSON = true })
		res, err := pool.Execute(ctxT(t), q)
		require.NoError(t, err)
		assert.Equal(t, map[string]any{"a": []any{float64(1), "x"}}, res.Row["j"])
		assert.Equal(t, map[string]any{"b": true}, res.Row["jb"])
		assert.Equal(t, []any{map[string]any{"c": float64(1)}}, res.Row["jbs"])
		assert.Nil(t, res.Row["n"])
	})

	t.Run("off", func(t *testing.T) {
		pool, _ := newPool(t, func(c *sprocketspg.Config) { c.JSON = false })
		res, err := pool.Execute(ctxT(t), q)
		require.NoError(t, err)
		assert.Equal(t, `{"a": [1, "x"]}`, res.Row["j"])
		assert.Equal(t, `{"b": true}`, res.Row["jb"])
		assert.Equal(t, []any{`{"c": 1}`}, res.Row["jbs"])
		assert.Nil(t, res.Row["n"])

		// Typed scans and JSON parameters still work as in plain pgx.
		var v struct{ B bool }
		require.NoError(t, pool.QueryRow(ctxT(t), "SELECT $1::jsonb", map[string]any{"B": true}).Scan(&v))
		assert.True(t, v.B)
	})
}

func TestHStoreToggle(t *testing.T) {
	t.Run("on", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema("CREATE EXTENSION hstore"))
		cfg := testConfig(url)
		cfg.HStore = true
		pool, err := sprocketspg.New(ctxT(t), cfg)
		require.NoError(t, err)
		defer pool.Close()

		one, two := "1", "two words"
		in := map[string]*string{"a": &one, "b": &two, "nothing": nil}
		res, err := pool.Execute(ctxT(t), "SELECT $1::hstore AS h, ARRAY[$1::hstore] AS hs", in)
		require.NoError(t, err)
		assert.Equal(t, in, res.Row["h"])
		assert.Equal(t, []any{in}, res.Row["hs"])

		res, err = pool.Execute(ctxT(t), `SELECT 'k=>v, "n"=>NULL'::hstore AS h`)
		require.NoError(t, err)
		h, ok := res.Row["h"].(map[string]*string)
		require.True(t, ok, "%T", res.Row["h"])
		require.NotNil(t, h["k"])
		assert.Equal(t, "v", *h["k"])
		assert.Contains(t, h, "n")
		assert.Nil(t, h["n"])
	})

	t.Run("on without the extension", func(t *testing.T) {
		cfg := testConfig(fxtest_helpers.NewDatabase(t))
		cfg.HStore = true
		cfg.ConnectionTimeout = time.Second
		_, err := sprocketspg.New(ctxT(t), cfg)
		require.Error(t, err)
		assert.ErrorIs(t, err, sprocketspg.ErrHStoreMissing)
		assert.Contains(t, err.Error(), "CREATE EXTENSION hstore")
	})

	t.Run("off leaves hstore to pgx", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema("CREATE EXTENSION hstore"))
		pool, err := sprocketspg.New(ctxT(t), testConfig(url))
		require.NoError(t, err)
		defer pool.Close()
		res, err := pool.Execute(ctxT(t), `SELECT 'k=>v'::hstore AS h`)
		require.NoError(t, err)
		_, isMap := res.Row["h"].(map[string]*string)
		assert.False(t, isMap, "hstore is unregistered when the toggle is off")
	})
}

func TestWithPoolConfigComposesAfterConnect(t *testing.T) {
	var calls atomic.Int32
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.MinPoolSize = 2 },
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) {
			pc.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
				calls.Add(1)
				_, err := conn.Exec(ctx, "SET application_name = 'composed'")
				return err
			}
		}))
	res, err := pool.Execute(ctxT(t), "SELECT current_setting('application_name') AS app, $1::uuid AS u", knownUUID)
	require.NoError(t, err)
	assert.Equal(t, "composed", res.Row["app"])
	assert.IsType(t, uuid.UUID{}, res.Row["u"], "the pool's own type registration still runs")
	assert.GreaterOrEqual(t, calls.Load(), int32(2))

	_, err = sprocketspg.New(ctxT(t), testConfig(fxtest_helpers.NewDatabase(t)),
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) {
			pc.AfterConnect = func(context.Context, *pgx.Conn) error { return errors.New("refused by hook") }
		}))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "refused by hook")
}
