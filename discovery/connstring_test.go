package discovery

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// secret is the password used by the tests; no error may contain it.
const secret = "s3cr%2Ft-P%40ss"

func TestIsSRV(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"postgresql+srv://u:p@db.example.com/db", true},
		{"POSTGRESQL+SRV://db.example.com/db", true},
		{"aws+srv://svc.ns/db", true},
		{"AWS+Srv://svc.ns/db", true},
		{"postgresql://h/db", false},
		{"postgres://h/db", false},
		{"host=h dbname=db", false},
		{"host=h options='-c x=postgresql+srv://y'", false},
		{"postgresql+srv:/db.example.com", false},
		{"", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, IsSRV(tt.in), tt.in)
	}
}

func TestSRVName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string // substring of the error; "" for success
	}{
		{name: "postgresql", in: "postgresql+srv://u:" + secret + "@name.example.com/db", want: "_name._postgresql.example.com"},
		{name: "upper case scheme", in: "PostgreSQL+SRV://name.example.com/db", want: "_name._postgresql.example.com"},
		{name: "no user", in: "postgresql+srv://primary.db.internal", want: "_primary._postgresql.db.internal"},
		{name: "trailing dot", in: "postgresql+srv://name.example.com./db", want: "_name._postgresql.example.com"},
		{name: "query without path", in: "postgresql+srv://name.example.com?sslmode=disable", want: "_name._postgresql.example.com"},
		{name: "aws", in: "aws+srv://u:" + secret + "@svc.namespace/db?sslmode=require", want: "svc.namespace"},
		{name: "aws single label", in: "aws+srv://svc/db", want: "svc"},
		{name: "aws trailing dot", in: "aws+srv://svc.ns./db", want: "svc.ns."},
		{name: "query only", in: "aws+srv://svc.ns?sslmode=disable", want: "svc.ns"},

		{name: "no dot", in: "postgresql+srv://u:" + secret + "@localhost/db", wantErr: "no dot"},
		{name: "port", in: "postgresql+srv://u:" + secret + "@name.example.com:5432/db", wantErr: "port"},
		{name: "aws port", in: "aws+srv://svc.ns:5432/db", wantErr: "port"},
		{name: "several hosts", in: "postgresql+srv://u:" + secret + "@a.example.com,b.example.com/db", wantErr: "several hosts"},
		{name: "no host", in: "postgresql+srv://u:" + secret + "@/db", wantErr: "no host"},
		{name: "empty", in: "aws+srv://", wantErr: "no host"},
		{name: "ipv6", in: "postgresql+srv://[::1]/db", wantErr: "IP address"},
		{name: "ipv4", in: "postgresql+srv://127.0.0.1/db", wantErr: "IP address"},
		{name: "bad name", in: "postgresql+srv://na%20me.example.com/db", wantErr: "not a valid DNS name"},
		{name: "empty label", in: "postgresql+srv://name..example.com/db", wantErr: "not a valid DNS name"},
		{name: "leading dot", in: "postgresql+srv://.example.com/db", wantErr: "not a valid DNS name"},
		{name: "long label", in: "aws+srv://" + strings.Repeat("a", 64) + ".ns/db", wantErr: "not a valid DNS name"},
		{name: "plain url", in: "postgresql://u:" + secret + "@h/db", wantErr: "scheme"},
		{name: "keyword value", in: "host=h password=" + secret, wantErr: "scheme"},
		{name: "password with slash", in: "postgresql+srv://u:pa/ss@name.example.com/db", wantErr: "port"},
		{name: "raw at in password", in: "postgresql+srv://u:pa@ss@name.example.com/db", wantErr: "not a valid DNS name"},
		{name: "fragment", in: "postgresql+srv://name.example.com#x", wantErr: "not a valid DNS name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SRVName(tt.in)
			if tt.wantErr == "" {
				require.NoError(t, err)
				assert.Equal(t, tt.want, got)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidURL)
			assert.Contains(t, err.Error(), tt.wantErr)
			assertNoSecret(t, err)

			_, perr := Placeholder(tt.in)
			if IsSRV(tt.in) {
				require.Error(t, perr)
				assertNoSecret(t, perr)
			}
			_, serr := NewSource(tt.in, nil)
			if IsSRV(tt.in) {
				require.ErrorIs(t, serr, ErrInvalidURL)
				assertNoSecret(t, serr)
			}
		})
	}
}

func TestPlaceholder(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{
			name: "postgresql",
			in:   "postgresql+srv://us%40er:" + secret + "@name.example.com/db?sslmode=require&application_name=a%20b",
			want: "postgresql://us%40er:" + secret + "@name.example.com/db?sslmode=require&application_name=a%20b",
		},
		{name: "aws", in: "AWS+SRV://u@svc.ns./db", want: "postgresql://u@svc.ns/db"},
		{name: "no path", in: "postgresql+srv://name.example.com", want: "postgresql://name.example.com"},
		{name: "plain url", in: "postgres://u:p@h:1/db", want: "postgres://u:p@h:1/db"},
		{name: "keyword value", in: "host=h dbname=db", want: "host=h dbname=db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Placeholder(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			if IsSRV(tt.in) {
				_, err := pgconn.ParseConfig(got)
				require.NoError(t, err)
			}
		})
	}
}

func TestPlaceholderParses(t *testing.T) {
	ph, err := Placeholder("postgresql+srv://app%2Fuser:" + secret + "@name.example.com/orders?sslmode=disable&application_name=svc")
	require.NoError(t, err)
	cfg, err := pgconn.ParseConfig(ph)
	require.NoError(t, err)
	assert.Equal(t, "app/user", cfg.User)
	assert.Equal(t, "s3cr/t-P@ss", cfg.Password)
	assert.Equal(t, "orders", cfg.Database)
	assert.Equal(t, "svc", cfg.RuntimeParams["application_name"])
}

func TestRewrite(t *testing.T) {
	const pg = "postgresql+srv://user:" + secret + "@db.example.com/app"
	tests := []struct {
		name    string
		in      string
		records []Record
		want    string
		wantErr error
	}{
		{
			name:    "one record",
			in:      pg,
			records: []Record{{Target: "pg1.example.com.", Port: 5432}},
			want:    "postgresql://user:" + secret + "@pg1.example.com:5432/app",
		},
		{
			name: "every host keeps its port",
			in:   pg,
			records: []Record{
				{Target: "pg1.example.com.", Port: 5432, Priority: 1},
				{Target: "pg2.example.com.", Port: 6543, Priority: 2},
			},
			want: "postgresql://user:" + secret + "@pg1.example.com:5432,pg2.example.com:6543/app",
		},
		{
			name:    "percent-encoded user and password and params kept",
			in:      "postgresql+srv://us%40er%3Aname:p%40%2F%3F%23%25x@db.example.com/my%20db?sslmode=verify-full&target_session_attrs=read-write&application_name=a%20b&options=-c%20x%3Dy",
			records: []Record{{Target: "pg1.example.com.", Port: 5432}},
			want:    "postgresql://us%40er%3Aname:p%40%2F%3F%23%25x@pg1.example.com:5432/my%20db?sslmode=verify-full&target_session_attrs=read-write&application_name=a%20b&options=-c%20x%3Dy",
		},
		{
			name:    "no userinfo no path",
			in:      "postgresql+srv://db.example.com",
			records: []Record{{Target: "pg1.example.com", Port: 5432}},
			want:    "postgresql://pg1.example.com:5432",
		},
		{
			name:    "query without path",
			in:      "postgresql+srv://db.example.com?sslmode=disable",
			records: []Record{{Target: "pg1.example.com", Port: 5432}},
			want:    "postgresql://pg1.example.com:5432?sslmode=disable",
		},
		{
			name:    "user only",
			in:      "aws+srv://user@svc.ns/db",
			records: []Record{{Target: "10.0.0.1", Port: 5432}},
			want:    "postgresql://user@10.0.0.1:5432/db",
		},
		{
			name: "ip targets",
			in:   pg,
			records: []Record{
				{Target: "::1", Port: 5432, Priority: 1},
				{Target: "127.0.0.1.", Port: 5433, Priority: 2},
				{Target: "2001:db8::5", Port: 5434, Priority: 3},
			},
			want: "postgresql://user:" + secret + "@[::1]:5432,127.0.0.1:5433,[2001:db8::5]:5434/app",
		},
		{
			name: "duplicates dropped, case and trailing dot ignored",
			in:   pg,
			records: []Record{
				{Target: "pg1.example.com.", Port: 5432},
				{Target: "PG1.example.com", Port: 5432},
				{Target: "pg1.example.com", Port: 5433},
				{Target: "pg1.example.com.", Port: 5432, Priority: 9},
			},
			want: "postgresql://user:" + secret + "@pg1.example.com:5432,pg1.example.com:5433/app",
		},
		{
			name: "priority ascending then weight descending then name then port",
			in:   pg,
			records: []Record{
				{Target: "d.example.com.", Port: 1, Priority: 20, Weight: 0},
				{Target: "c.example.com.", Port: 1, Priority: 10, Weight: 5},
				{Target: "b.example.com.", Port: 2, Priority: 10, Weight: 50},
				{Target: "b.example.com.", Port: 1, Priority: 10, Weight: 50},
				{Target: "a.example.com.", Port: 1, Priority: 10, Weight: 5},
			},
			want: "postgresql://user:" + secret + "@b.example.com:1,b.example.com:2,a.example.com:1,c.example.com:1,d.example.com:1/app",
		},
		{
			name: "aws three records of mixed priority and weight",
			in:   "aws+srv://user:" + secret + "@svc.namespace/db?sslmode=require",
			records: []Record{
				{Target: "low-weight.namespace.", Port: 5432, Priority: 1, Weight: 10},
				{Target: "backup.namespace.", Port: 5433, Priority: 2, Weight: 100},
				{Target: "high-weight.namespace.", Port: 5434, Priority: 1, Weight: 90},
			},
			want: "postgresql://user:" + secret + "@high-weight.namespace:5434,low-weight.namespace:5432,backup.namespace:5433/db?sslmode=require",
		},
		{
			name: "dot target means no service",
			in:   pg,
			records: []Record{
				{Target: ".", Port: 0},
				{Target: "pg1.example.com.", Port: 5432, Priority: 5},
			},
			want: "postgresql://user:" + secret + "@pg1.example.com:5432/app",
		},
		{
			name:    "underscore and digits",
			in:      pg,
			records: []Record{{Target: "_x-1.9example.com", Port: 65535}},
			want:    "postgresql://user:" + secret + "@_x-1.9example.com:65535/app",
		},
		{name: "no records", in: pg, wantErr: ErrNoRecords},
		{name: "only dot target", in: pg, records: []Record{{Target: ".", Port: 5432}}, wantErr: ErrNoRecords},
		{name: "port zero", in: pg, records: []Record{{Target: "pg1.example.com.", Port: 0}}, wantErr: ErrInvalidTarget},
		{name: "empty target", in: pg, records: []Record{{Target: "", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "path and query injection", in: pg, records: []Record{{Target: "evil.com/x?", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "userinfo injection", in: pg, records: []Record{{Target: "a@b", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "host list injection", in: pg, records: []Record{{Target: "h,i", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "port injection", in: pg, records: []Record{{Target: "h:1", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "fragment injection", in: pg, records: []Record{{Target: "h#x", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "percent injection", in: pg, records: []Record{{Target: "h%2F", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "bracket injection", in: pg, records: []Record{{Target: "[h]", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "space", in: pg, records: []Record{{Target: "h i", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "escaped dns label", in: pg, records: []Record{{Target: `a\@b.example.com.`, Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "empty label", in: pg, records: []Record{{Target: "a..b", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "two trailing dots", in: pg, records: []Record{{Target: "a.b..", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "ipv6 zone", in: pg, records: []Record{{Target: "fe80::1%eth0", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "label over 63", in: pg, records: []Record{{Target: strings.Repeat("a", 64) + ".example.com", Port: 5432}}, wantErr: ErrInvalidTarget},
		{name: "name over 253", in: pg, records: []Record{{Target: strings.Repeat(strings.Repeat("a", 63)+".", 4), Port: 5432}}, wantErr: ErrInvalidTarget},
		{
			name:    "one bad target spoils the answer",
			in:      pg,
			records: []Record{{Target: "pg1.example.com", Port: 5432}, {Target: "x/y", Port: 5432, Priority: 9}},
			wantErr: ErrInvalidTarget,
		},
		{name: "not srv", in: "postgresql://user:" + secret + "@h/db", records: []Record{{Target: "h", Port: 1}}, wantErr: ErrInvalidURL},
		{name: "malformed srv", in: "postgresql+srv://user:" + secret + "@h:1/db", records: []Record{{Target: "h", Port: 1}}, wantErr: ErrInvalidURL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Rewrite(tt.in, tt.records)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				assertNoSecret(t, err)
				if !errors.Is(err, ErrInvalidURL) {
					name, nerr := SRVName(tt.in)
					require.NoError(t, nerr)
					assert.Contains(t, err.Error(), name, "the error names the SRV name")
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			_, err = pgconn.ParseConfig(got)
			require.NoError(t, err, "pgx parses the result")
		})
	}
}

func TestRewriteLongestValidName(t *testing.T) {
	// 63+1+63+1+63+1+61 = 253 bytes, the longest valid name.
	target := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	require.Len(t, target, 253)
	got, err := Rewrite("aws+srv://svc.ns/db", []Record{{Target: target + ".", Port: 5432}})
	require.NoError(t, err)
	assert.Equal(t, "postgresql://"+target+":5432/db", got)

	_, err = Rewrite("aws+srv://svc.ns/db", []Record{{Target: target + "d", Port: 5432}})
	assert.ErrorIs(t, err, ErrInvalidTarget)
}

func TestRewriteDoesNotReorderInput(t *testing.T) {
	records := []Record{
		{Target: "b.example.com", Port: 1, Priority: 2},
		{Target: "a.example.com", Port: 1, Priority: 1},
	}
	_, err := Rewrite("aws+srv://svc.ns/db", records)
	require.NoError(t, err)
	assert.Equal(t, "b.example.com", records[0].Target)
}

// TestRewriteVerifyFullServerNames checks that under sslmode=verify-full
// every host is verified against its own name, the SRV target.
func TestRewriteVerifyFullServerNames(t *testing.T) {
	got, err := Rewrite("postgresql+srv://user:"+secret+"@db.example.com/app?sslmode=verify-full", []Record{
		{Target: "pg2.example.com.", Port: 5433, Priority: 2},
		{Target: "pg1.example.com.", Port: 5432, Priority: 1},
		{Target: "10.1.2.3.", Port: 5434, Priority: 3},
	})
	require.NoError(t, err)

	cfg, err := pgconn.ParseConfig(got)
	require.NoError(t, err)
	assert.Equal(t, "pg1.example.com", cfg.Host)
	assert.Equal(t, uint16(5432), cfg.Port)
	require.NotNil(t, cfg.TLSConfig)
	assert.Equal(t, "pg1.example.com", cfg.TLSConfig.ServerName)
	assert.Equal(t, "s3cr/t-P@ss", cfg.Password)

	type hostName struct {
		host       string
		port       uint16
		serverName string
	}
	// The first host is the config itself; the others are its fallbacks.
	fallbacks := []hostName{{cfg.Host, cfg.Port, cfg.TLSConfig.ServerName}}
	for _, fb := range cfg.Fallbacks {
		require.NotNil(t, fb.TLSConfig, fb.Host)
		fallbacks = append(fallbacks, hostName{fb.Host, fb.Port, fb.TLSConfig.ServerName})
	}
	assert.Equal(t, []hostName{
		{"pg1.example.com", 5432, "pg1.example.com"},
		{"pg2.example.com", 5433, "pg2.example.com"},
		{"10.1.2.3", 5434, "10.1.2.3"},
	}, fallbacks)
}

// assertNoSecret fails the test when err's message holds the test password,
// raw or percent-decoded.
func assertNoSecret(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, s := range []string{secret, "s3cr/t-P@ss", "s3cr"} {
		assert.NotContains(t, msg, s, "error holds the password")
	}
}
