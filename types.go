package sprocketspg

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// ErrHStoreMissing is returned when Config.HStore is set but the
// connected database has no hstore type (CREATE EXTENSION hstore).
var ErrHStoreMissing = errors.New("hstore type not found: run CREATE EXTENSION hstore in the database")

// registerTypes adjusts a new connection's type map to the Config's
// toggles. Only HStore costs a round trip (the extension's OID differs from
// database to database); the others are local.
func registerTypes(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	m := conn.TypeMap()
	if cfg.UUID {
		register(m, "uuid", pgtype.UUIDOID, "_uuid", pgtype.UUIDArrayOID, googleUUIDCodec{})
	} else {
		register(m, "uuid", pgtype.UUIDOID, "_uuid", pgtype.UUIDArrayOID, stringUUIDCodec{})
	}
	if !cfg.JSON {
		register(m, "json", pgtype.JSONOID, "_json", pgtype.JSONArrayOID,
			&jsonTextCodec{Codec: lookupCodec(m, pgtype.JSONOID)})
		register(m, "jsonb", pgtype.JSONBOID, "_jsonb", pgtype.JSONBArrayOID,
			&jsonTextCodec{Codec: lookupCodec(m, pgtype.JSONBOID), jsonb: true})
	}
	if cfg.HStore {
		var oid, arrayOID uint32
		err := conn.QueryRow(ctx,
			"SELECT t.oid, t.typarray FROM pg_catalog.pg_type t WHERE t.oid = to_regtype('hstore')",
		).Scan(&oid, &arrayOID)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrHStoreMissing
		}
		if err != nil {
			return fmt.Errorf("look up hstore type: %w", err)
		}
		register(m, "hstore", oid, "_hstore", arrayOID, plainHstoreCodec{})
	}
	return nil
}

func register(m *pgtype.Map, name string, oid uint32, arrayName string, arrayOID uint32, codec pgtype.Codec) {
	t := &pgtype.Type{Name: name, OID: oid, Codec: codec}
	m.RegisterType(t)
	if arrayOID != 0 {
		m.RegisterType(&pgtype.Type{Name: arrayName, OID: arrayOID, Codec: &pgtype.ArrayCodec{ElementType: t}})
	}
}

func lookupCodec(m *pgtype.Map, oid uint32) pgtype.Codec {
	t, _ := m.TypeForOID(oid)
	return t.Codec
}

// googleUUIDCodec decodes uuid values to uuid.UUID. Encoding and scanning
// into typed targets stay with pgx's codec, which already handles
// uuid.UUID through its [16]byte form.
type googleUUIDCodec struct{ pgtype.UUIDCodec }

func (c googleUUIDCodec) DecodeValue(m *pgtype.Map, oid uint32, format int16, src []byte) (any, error) {
	v, err := c.UUIDCodec.DecodeValue(m, oid, format, src)
	if v == nil || err != nil {
		return v, err
	}
	return uuid.UUID(v.([16]byte)), nil
}

// stringUUIDCodec decodes uuid values to their canonical string form.
type stringUUIDCodec struct{ pgtype.UUIDCodec }

func (c stringUUIDCodec) DecodeValue(m *pgtype.Map, oid uint32, format int16, src []byte) (any, error) {
	v, err := c.UUIDCodec.DecodeValue(m, oid, format, src)
	if v == nil || err != nil {
		return v, err
	}
	return uuid.UUID(v.([16]byte)).String(), nil
}

// jsonTextCodec returns json and jsonb values as the JSON text, undecoded.
// Everything but DecodeValue is delegated to pgx's codec, so encoding
// parameters and scanning into structs behave as in plain pgx.
type jsonTextCodec struct {
	pgtype.Codec
	jsonb bool
}

func (c *jsonTextCodec) DecodeValue(_ *pgtype.Map, _ uint32, format int16, src []byte) (any, error) {
	if src == nil {
		return nil, nil
	}
	if c.jsonb && format == pgtype.BinaryFormatCode {
		if len(src) == 0 || src[0] != 1 {
			return nil, fmt.Errorf("decode jsonb: unknown binary format version")
		}
		src = src[1:]
	}
	return string(src), nil
}

// PlanScan sends scans into *any (which is how pgx fills arrays of json
// for Values) through DecodeValue, so array elements stay text too; pgx's
// own codec would unmarshal them.
func (c *jsonTextCodec) PlanScan(m *pgtype.Map, oid uint32, format int16, target any) pgtype.ScanPlan {
	if _, ok := target.(*any); ok {
		return jsonTextScanPlan{codec: c, format: format}
	}
	return c.Codec.PlanScan(m, oid, format, target)
}

type jsonTextScanPlan struct {
	codec  *jsonTextCodec
	format int16
}

func (p jsonTextScanPlan) Scan(src []byte, target any) error {
	v, err := p.codec.DecodeValue(nil, 0, p.format, src)
	if err != nil {
		return err
	}
	*target.(*any) = v
	return nil
}

// plainHstoreCodec decodes hstore values to map[string]*string rather than
// pgtype.Hstore, so callers need not import pgtype to use them.
type plainHstoreCodec struct{ pgtype.HstoreCodec }

func (c plainHstoreCodec) DecodeValue(m *pgtype.Map, oid uint32, format int16, src []byte) (any, error) {
	v, err := c.HstoreCodec.DecodeValue(m, oid, format, src)
	if v == nil || err != nil {
		return v, err
	}
	return map[string]*string(v.(pgtype.Hstore)), nil
}
