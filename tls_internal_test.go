package sprocketspg

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/internal/pgserver"
)

// noEnv is an environment without PG variables.
func noEnv(string) string { return "" }

// tlsConfig is a Config for url with the TLS fields of fields set.
func tlsConfig(url string, fields ...string) Config {
	c := Config{URL: url}
	for i := 0; i+1 < len(fields); i += 2 {
		switch fields[i] {
		case "sslmode":
			c.SSLMode = fields[i+1]
		case "sslrootcert":
			c.SSLRootCert = fields[i+1]
		case "sslcert":
			c.SSLCert = fields[i+1]
		case "sslkey":
			c.SSLKey = fields[i+1]
		}
	}
	return c
}

func TestTLSFilesNilWithoutFieldsOrFiles(t *testing.T) {
	for _, url := range []string{
		"postgres://u:s3cret@h/db",
		"postgres://u@h/db?sslmode=verify-full",
		"postgresql+srv://u@svc.example.com/db?sslmode=require",
		"host=h dbname=db sslmode=require",
	} {
		tf, err := buildTLSFiles(Config{URL: url}, "", noEnv)
		require.NoError(t, err, url)
		assert.Nil(t, tf, url)
		assert.Equal(t, url, tf.connString(url), "a nil tlsFiles leaves the string alone")
		assert.NoError(t, tf.beforeConnect(context.Background(), &pgx.ConnConfig{}))
	}
}

func TestTLSFilesNeededForAFieldOrAFile(t *testing.T) {
	for _, cfg := range []Config{
		tlsConfig("postgres://h/db", "sslmode", "require"),
		tlsConfig("postgres://h/db?sslrootcert=/ca.crt"),
		tlsConfig("host=h sslcert=/c.crt sslkey=/c.key"),
	} {
		tf, err := buildTLSFiles(cfg, "", noEnv)
		require.NoError(t, err, cfg.URL)
		assert.NotNil(t, tf, cfg.URL)
	}
}

func TestTLSFilesRefusesAURLThatSaysOtherwise(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      Config
		prefix   string
		variable string
		says     string
	}{
		{"sslmode", tlsConfig("postgres://u:s3cret@h/db?sslmode=disable", "sslmode", "verify-full"),
			"", "POSTGRES_SSLMODE", `POSTGRES_URL's sslmode says "disable"`},
		{"ssl=true is sslmode=require", tlsConfig("postgres://u:s3cret@h/db?ssl=true", "sslmode", "verify-full"),
			"", "POSTGRES_SSLMODE", `POSTGRES_URL's sslmode says "require"`},
		{"named instance", tlsConfig("postgres://u:s3cret@h/db?sslrootcert=/etc/old.crt", "sslrootcert", "/etc/new.crt"),
			"ORDERS_", "ORDERS_POSTGRES_SSLROOTCERT", `ORDERS_POSTGRES_URL's sslrootcert says "/etc/old.crt"`},
		{"keyword/value", tlsConfig("host=h password='s3cret' sslcert=/a.crt sslkey=/a.key", "sslcert", "/b.crt", "sslkey", "/a.key"),
			"", "POSTGRES_SSLCERT", `POSTGRES_URL's sslcert says "/a.crt"`},
		{"SRV URL", tlsConfig("postgresql+srv://u:s3cret@svc.example.com/db?sslkey=%2Fa.key&sslcert=/a.crt", "sslkey", "/b.key"),
			"", "POSTGRES_SSLKEY", `POSTGRES_URL's sslkey says "/a.key"`},
		{"last occurrence counts", tlsConfig("aws+srv://u:s3cret@svc.ns/db?sslmode=verify-full&sslmode=allow", "sslmode", "verify-full"),
			"", "POSTGRES_SSLMODE", `POSTGRES_URL's sslmode says "allow"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tf, err := buildTLSFiles(tc.cfg, tc.prefix, noEnv)
			require.Error(t, err)
			assert.Nil(t, tf)
			assert.ErrorIs(t, err, ErrInvalidConfig)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tc.variable, ce.Variable)
			assert.Contains(t, err.Error(), tc.says)
			assert.NotContains(t, err.Error(), "s3cret")
		})
	}
}

func TestTLSFilesReportsEveryConflict(t *testing.T) {
	_, err := buildTLSFiles(tlsConfig("postgres://h/db?sslmode=disable&sslrootcert=/a",
		"sslmode", "verify-full", "sslrootcert", "/b"), "", noEnv)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "POSTGRES_SSLMODE")
	assert.Contains(t, err.Error(), "POSTGRES_SSLROOTCERT")
}

func TestTLSFilesAcceptsAURLThatAgrees(t *testing.T) {
	tf, err := buildTLSFiles(tlsConfig("postgres://h/db?sslmode=verify-full&sslrootcert=&sslcert=/c",
		"sslmode", "verify-full", "sslrootcert", "/ca", "sslcert", "/c", "sslkey", "/k"), "", noEnv)
	require.NoError(t, err, "an empty value in the URL says nothing")
	assert.Equal(t, tlsSetting{value: "/ca", from: "POSTGRES_SSLROOTCERT"}, tf.rootCert)
	assert.Equal(t, tlsSetting{value: "/c", from: "POSTGRES_SSLCERT"}, tf.cert)
}

func TestTLSFilesValidatesSSLMode(t *testing.T) {
	_, err := buildTLSFiles(tlsConfig("postgres://h/db", "sslmode", "verify_full"), "ORDERS_", noEnv)
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "ORDERS_POSTGRES_SSLMODE", ce.Variable)
	assert.Equal(t, "verify_full", ce.Value)
	assert.Contains(t, ce.Reason, "verify-ca, verify-full")

	_, err = buildTLSFiles(tlsConfig("postgres://u:s3cret@h/db?sslmode=bogus&sslrootcert=/ca"), "", noEnv)
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "POSTGRES_URL", ce.Variable)
	assert.Contains(t, ce.Reason, `sslmode "bogus"`)
	assert.NotContains(t, err.Error(), "s3cret")
}

func TestTLSFilesNeedsCertificateAndKeyTogether(t *testing.T) {
	_, err := buildTLSFiles(tlsConfig("postgres://h/db", "sslcert", "/c.crt"), "", noEnv)
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "POSTGRES_SSLCERT", ce.Variable)
	assert.Contains(t, ce.Reason, "POSTGRES_SSLKEY")

	_, err = buildTLSFiles(tlsConfig("postgres://u:s3cret@h/db?sslkey=/c.key"), "", noEnv)
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "POSTGRES_URL", ce.Variable)
	assert.Contains(t, ce.Reason, "POSTGRES_SSLCERT")
	assert.NotContains(t, err.Error(), "s3cret")
}

func TestTLSFilesLayers(t *testing.T) {
	env := map[string]string{"PGSSLROOTCERT": "/env/ca", "PGSSLMODE": "verify-ca", "PGSSLSNI": "0"}
	getenv := func(k string) string { return env[k] }

	tf, err := buildTLSFiles(tlsConfig("postgres://h/db?sslrootcert=/url/ca", "sslmode", "require"), "", getenv)
	require.NoError(t, err)
	assert.Equal(t, tlsSetting{value: "require", from: "POSTGRES_SSLMODE"}, tf.mode, "Config first")
	assert.Equal(t, tlsSetting{value: "/url/ca", from: "the sslrootcert of POSTGRES_URL"}, tf.rootCert, "then the URL")
	assert.False(t, tf.sni, "PGSSLSNI=0")

	tf, err = buildTLSFiles(tlsConfig("postgres://h/db?sslsni=1", "sslcert", "/c", "sslkey", "/k"), "", getenv)
	require.NoError(t, err)
	assert.Equal(t, tlsSetting{value: "/env/ca", from: "PGSSLROOTCERT"}, tf.rootCert, "then libpq's variables")
	assert.Equal(t, tlsSetting{value: "verify-ca", from: "PGSSLMODE"}, tf.mode)
	assert.True(t, tf.sni, "the URL's sslsni before PGSSLSNI")

	tf, err = buildTLSFiles(tlsConfig("postgres://h/db?sslrootcert=", "sslmode", "require"), "", getenv)
	require.NoError(t, err)
	assert.Equal(t, tlsSetting{value: "", from: "the sslrootcert of POSTGRES_URL"}, tf.rootCert,
		"an empty value in the URL hides the variable, as for pgx")

	tf, err = buildTLSFiles(tlsConfig("postgres://h/db", "sslrootcert", "system", "sslmode", "require"), "", noEnv)
	require.NoError(t, err)
	assert.Equal(t, "verify-full", tf.mode.value, "the system's CAs check host names, as pgx does")
}

func TestTLSFilesConnString(t *testing.T) {
	for _, tc := range []struct {
		name, raw, want string
		cfg             []string
	}{
		{
			name: "URL",
			raw:  "postgres://u:p%40ss@h1:5432,h2:5433/db?application_name=x&sslmode=require&sslrootcert=/ca&connect_timeout=5",
			cfg:  []string{"sslmode", "require"},
			want: "postgres://u:p%40ss@h1:5432,h2:5433/db?application_name=x&connect_timeout=5&sslmode=require&sslrootcert=&sslcert=&sslkey=",
		},
		{
			name: "URL without a query",
			raw:  "postgres://u@h/db",
			cfg:  []string{"sslrootcert", "/ca"},
			want: "postgres://u@h/db?sslmode=prefer&sslrootcert=&sslcert=&sslkey=",
		},
		{
			name: "a ? and & in the password",
			raw:  "postgresql://u:a?b&c@h/db?sslcert=/c&sslkey=/k&options=-c%20x%3Dy",
			want: "postgresql://u:a?b&c@h/db?options=-c%20x%3Dy&sslmode=prefer&sslrootcert=&sslcert=&sslkey=",
		},
		{
			name: "SRV URL",
			raw:  "postgresql+srv://u:s3cret@svc.example.com/db?sslmode=verify-full&sslrootcert=%2Fca",
			want: "postgresql+srv://u:s3cret@svc.example.com/db?sslmode=verify-full&sslrootcert=&sslcert=&sslkey=",
		},
		{
			name: "ssl=true",
			raw:  "postgres://h/db?ssl=true&sslrootcert=/ca",
			want: "postgres://h/db?sslmode=require&sslrootcert=&sslcert=&sslkey=",
		},
		{
			name: "keyword/value",
			raw:  `host=h password='a b\' c'  sslrootcert = '/my dir/ca.crt' dbname=db sslmode=verify-ca`,
			want: `host=h password='a b\' c'  dbname=db sslmode=verify-ca sslrootcert='' sslcert='' sslkey=''`,
		},
		{
			name: "keyword/value, the TLS settings last",
			raw:  `host=h sslcert=/c sslkey=/k`,
			want: `host=h sslmode=prefer sslrootcert='' sslcert='' sslkey=''`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tf, err := buildTLSFiles(tlsConfig(tc.raw, tc.cfg...), "", noEnv)
			require.NoError(t, err)
			require.NotNil(t, tf)
			got := tf.connString(tc.raw)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestTLSFilesConnStringMakesPgxReadNoFile(t *testing.T) {
	// Every file named here is missing; pgx would fail to read it.
	t.Setenv("PGSSLROOTCERT", "/nonexistent/env-ca.crt")
	t.Setenv("HOME", t.TempDir())
	raw := "postgres://u:s3cret@127.0.0.1:5432/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt&sslcert=/nonexistent/c.crt&sslkey=/nonexistent/c.key"
	_, err := pgx.ParseConfig(raw)
	require.Error(t, err, "pgx reads the files when it parses")

	tf, err := newTLSFiles(Config{URL: raw}, "")
	require.NoError(t, err)
	cc, err := pgx.ParseConfig(tf.connString(raw))
	require.NoError(t, err)
	assert.Equal(t, "s3cret", cc.Password)
	assert.Equal(t, "db", cc.Database)
	for k := range cc.RuntimeParams {
		assert.NotContains(t, k, "ssl")
	}
}

// testPKI is a CA with a server and a client certificate in files.
type testPKI struct {
	ca                *pgserver.CA
	dir               string
	caFile            string
	certFile, keyFile string
	serverPEM         []byte
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	ca, err := pgserver.NewCA("test CA")
	require.NoError(t, err)
	dir := t.TempDir()
	p := testPKI{ca: ca, dir: dir, caFile: filepath.Join(dir, "ca.crt"),
		certFile: filepath.Join(dir, "client.crt"), keyFile: filepath.Join(dir, "client.key")}
	require.NoError(t, os.WriteFile(p.caFile, ca.CertPEM(), 0o644))
	p.writeClient(t, "app")
	server, err := ca.IssueServer("127.0.0.1", "db.example.com")
	require.NoError(t, err)
	p.serverPEM = server.CertPEM
	return p
}

// writeClient replaces the client certificate files with a new pair for
// role and returns its serial.
func (p testPKI) writeClient(t *testing.T, role string) string {
	t.Helper()
	pair, err := p.ca.IssueClient(role)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p.certFile, pair.CertPEM, 0o644))
	require.NoError(t, os.WriteFile(p.keyFile, pair.KeyPEM, 0o600))
	return pair.Serial
}

// serverState is the connection state of a handshake with the server
// certificate of p.
func (p testPKI) serverState(t *testing.T) tls.ConnectionState {
	t.Helper()
	block, _ := pem.Decode(p.serverPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
}

// connConfigFor parses raw as the pool would, through connString, and
// runs beforeConnect on it.
func connConfigFor(t *testing.T, cfg Config) (*pgx.ConnConfig, error) {
	t.Helper()
	tf, err := buildTLSFiles(cfg, "", noEnv)
	require.NoError(t, err)
	require.NotNil(t, tf)
	cc, err := pgx.ParseConfig(tf.connString(cfg.URL))
	require.NoError(t, err)
	return cc, tf.beforeConnect(context.Background(), cc)
}

// attempt is one host and TLS config pgx will try, in order.
type attempt struct {
	host string
	tls  bool
}

func attempts(cc *pgx.ConnConfig) []attempt {
	out := []attempt{{cc.Host, cc.TLSConfig != nil}}
	for _, f := range cc.Fallbacks {
		out = append(out, attempt{f.Host, f.TLSConfig != nil})
	}
	return out
}

func TestTLSFilesBeforeConnectBuildsTheAttemptsOfEachMode(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	url := "postgres://u@h1:5432,h2:5433/db"
	for _, tc := range []struct {
		mode string
		want []attempt
	}{
		{"disable", []attempt{{"h1", false}, {"h2", false}}},
		{"allow", []attempt{{"h1", false}, {"h1", true}, {"h2", false}, {"h2", true}}},
		{"prefer", []attempt{{"h1", true}, {"h1", false}, {"h2", true}, {"h2", false}}},
		{"require", []attempt{{"h1", true}, {"h2", true}}},
		{"verify-ca", []attempt{{"h1", true}, {"h2", true}}},
		{"verify-full", []attempt{{"h1", true}, {"h2", true}}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			cc, err := connConfigFor(t, tlsConfig(url, "sslmode", tc.mode, "sslrootcert", p.caFile,
				"sslcert", p.certFile, "sslkey", p.keyFile))
			require.NoError(t, err)
			assert.Equal(t, tc.want, attempts(cc))
			assert.Equal(t, uint16(5433), cc.Fallbacks[len(cc.Fallbacks)-1].Port)
			for _, f := range append([]*tls.Config{cc.TLSConfig}, fallbackTLS(cc)...) {
				if f == nil {
					continue
				}
				assert.Len(t, f.Certificates, 1, "the client certificate")
				assert.NotNil(t, f.RootCAs)
				// require with a root certificate verifies as verify-ca.
				assert.Equal(t, tc.mode != "allow" && tc.mode != "prefer", f.VerifyConnection != nil)
			}
		})
	}
}

func fallbackTLS(cc *pgx.ConnConfig) []*tls.Config {
	var out []*tls.Config
	for _, f := range cc.Fallbacks {
		out = append(out, f.TLSConfig)
	}
	return out
}

func TestTLSFilesVerifyFullChecksEachHostsName(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	cc, err := connConfigFor(t, tlsConfig("postgres://u@127.0.0.1:5432,db.example.com:5433,other.example.com:5434/db",
		"sslmode", "verify-full", "sslrootcert", p.caFile))
	require.NoError(t, err)
	configs := append([]*tls.Config{cc.TLSConfig}, fallbackTLS(cc)...)
	require.Len(t, configs, 3)
	assert.Equal(t, "127.0.0.1", configs[0].ServerName)
	assert.Equal(t, "db.example.com", configs[1].ServerName)
	assert.Empty(t, configs[0].Certificates, "no client certificate was set")

	state := p.serverState(t)
	assert.NoError(t, configs[0].VerifyConnection(state), "the IP SAN")
	assert.NoError(t, configs[1].VerifyConnection(state), "the DNS SAN")
	err = configs[2].VerifyConnection(state)
	require.Error(t, err, "a name the certificate does not hold")
	assert.Contains(t, err.Error(), "other.example.com")
	var hostErr x509.HostnameError
	assert.ErrorAs(t, err, &hostErr)
}

func TestTLSFilesVerifyCAIgnoresTheName(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	for _, mode := range []string{"verify-ca", "require"} {
		cc, err := connConfigFor(t, tlsConfig("postgres://u@other.example.com/db", "sslmode", mode, "sslrootcert", p.caFile))
		require.NoError(t, err)
		assert.NoError(t, cc.TLSConfig.VerifyConnection(p.serverState(t)), mode)
	}
	cc, err := connConfigFor(t, tlsConfig("postgres://u@other.example.com/db", "sslmode", "require"))
	require.NoError(t, err)
	assert.Nil(t, cc.TLSConfig.VerifyConnection, "require without a root certificate checks nothing")
	assert.True(t, cc.TLSConfig.InsecureSkipVerify)
}

func TestTLSFilesWrongCANamesTheFile(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	other := newTestPKI(t)
	cc, err := connConfigFor(t, tlsConfig("postgres://u@127.0.0.1/db", "sslmode", "verify-full", "sslrootcert", other.caFile))
	require.NoError(t, err)
	err = cc.TLSConfig.VerifyConnection(p.serverState(t))
	require.Error(t, err)
	var unknown x509.UnknownAuthorityError
	assert.ErrorAs(t, err, &unknown)
	assert.Contains(t, err.Error(), "POSTGRES_SSLROOTCERT")
	assert.Contains(t, err.Error(), other.caFile)
}

func TestTLSFilesReadsTheFilesForEachConnection(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	cfg := tlsConfig("postgres://u@127.0.0.1/db", "sslmode", "verify-full", "sslrootcert", p.caFile,
		"sslcert", p.certFile, "sslkey", p.keyFile)
	tf, err := buildTLSFiles(cfg, "", noEnv)
	require.NoError(t, err)
	base, err := pgx.ParseConfig(tf.connString(cfg.URL))
	require.NoError(t, err)

	serial := func() string {
		cc := base.Copy()
		require.NoError(t, tf.beforeConnect(context.Background(), cc))
		leaf, err := x509.ParseCertificate(cc.TLSConfig.Certificates[0].Certificate[0])
		require.NoError(t, err)
		return leaf.SerialNumber.String()
	}
	first := serial()
	second := p.writeClient(t, "app")
	assert.NotEqual(t, first, second)
	assert.Equal(t, second, serial(), "the new pair, without a new pool")
}

func TestTLSFilesFileErrorsNameTheFileAndTheVariable(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	missing := filepath.Join(p.dir, "missing.crt")
	_, err := connConfigFor(t, tlsConfig("postgres://u@h/db", "sslmode", "verify-full", "sslrootcert", missing))
	require.Error(t, err)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.ErrorIs(t, err, ErrTLSFiles)
	assert.Equal(t, `postgres TLS files unusable: read POSTGRES_SSLROOTCERT "`+missing+`": no such file or directory`, err.Error())

	_, err = connConfigFor(t, tlsConfig("postgres://u@h/db?sslrootcert="+missing, "sslmode", "verify-full"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the sslrootcert of POSTGRES_URL")

	// Under disable no file is read at all.
	_, err = connConfigFor(t, tlsConfig("postgres://u@h/db", "sslmode", "disable", "sslrootcert", missing))
	require.NoError(t, err)
}

func TestTLSFilesKeyErrorsHoldNoKey(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	// Base64 that pem decodes, and that is no key.
	secret := base64.StdEncoding.EncodeToString([]byte("SECRET key material that must never be printed"))
	write := func(name, content string) string {
		path := filepath.Join(p.dir, name)
		require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
		return path
	}
	for _, tc := range []struct {
		name, key, want string
	}{
		{"not PEM", write("plain.key", secret), "no PEM key in it"},
		{"not a key", write("bad.key", "-----BEGIN PRIVATE KEY-----\n"+secret+"\n-----END PRIVATE KEY-----\n"), "load the client certificate"},
		{"encrypted", write("enc.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"+secret+"\n-----END ENCRYPTED PRIVATE KEY-----\n"), "encrypted"},
		{"legacy encrypted", write("legacy.key", "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00000000000000000000000000000000\n\n"+secret+"\n-----END EC PRIVATE KEY-----\n"), "encrypted"},
		{"another certificate's", func() string {
			other := newTestPKI(t)
			return other.keyFile
		}(), "private key does not match public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := connConfigFor(t, tlsConfig("postgres://u@h/db", "sslmode", "require",
				"sslcert", p.certFile, "sslkey", tc.key))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "POSTGRES_SSLKEY")
			assert.Contains(t, err.Error(), tc.key)
			key, _ := os.ReadFile(tc.key)
			for _, line := range strings.Split(string(key), "\n") {
				if len(line) > 16 && !strings.HasPrefix(line, "-----") {
					assert.NotContains(t, err.Error(), line)
				}
			}
		})
	}
}

func TestTLSFilesUseLibpqsDefaultFiles(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	p := newTestPKI(t)
	dir := filepath.Join(home, ".postgresql")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Rename(p.caFile, filepath.Join(dir, "root.crt")))
	require.NoError(t, os.Rename(p.certFile, filepath.Join(dir, "postgresql.crt")))
	require.NoError(t, os.Rename(p.keyFile, filepath.Join(dir, "postgresql.key")))

	cc, err := connConfigFor(t, tlsConfig("postgres://u@other.example.com/db", "sslmode", "require"))
	require.NoError(t, err)
	require.NotNil(t, cc.TLSConfig.VerifyConnection, "a root.crt makes require verify, as in libpq")
	assert.NoError(t, cc.TLSConfig.VerifyConnection(p.serverState(t)))
	assert.Len(t, cc.TLSConfig.Certificates, 1)

	// sslcertmode=disable reads no client certificate.
	cc, err = connConfigFor(t, tlsConfig("postgres://u@h/db?sslcertmode=disable", "sslmode", "require"))
	require.NoError(t, err)
	assert.Empty(t, cc.TLSConfig.Certificates)
}

func TestTLSFilesRebuildAttemptsOfResolvedHosts(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	tf, err := buildTLSFiles(tlsConfig("postgresql+srv://u@svc.example.com/db", "sslmode", "verify-full",
		"sslrootcert", p.caFile), "", noEnv)
	require.NoError(t, err)
	// What an SRV answer parsed under another sslmode leaves in cc.
	cc, err := pgx.ParseConfig("host=a.example.com,b.example.com,/tmp port=5432,5433,5432 user=u sslmode=prefer")
	require.NoError(t, err)
	require.NoError(t, tf.beforeConnect(context.Background(), cc))
	assert.Equal(t, []attempt{{"a.example.com", true}, {"b.example.com", true}, {"/tmp", false}}, attempts(cc),
		"one verified attempt per host; none over TLS for a Unix socket")
	assert.Equal(t, "b.example.com", cc.Fallbacks[0].TLSConfig.ServerName)
}

func TestTLSFilesDirectNegotiation(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	p := newTestPKI(t)
	cc, err := connConfigFor(t, tlsConfig("postgres://u@h/db?sslnegotiation=direct", "sslrootcert", p.caFile))
	require.NoError(t, err)
	assert.Equal(t, []attempt{{"h", true}}, attempts(cc), "prefer becomes require, as in pgx")
	assert.Equal(t, []string{"postgresql"}, cc.TLSConfig.NextProtos)
}

func TestTLSFilesErrorsAreConfigErrors(t *testing.T) {
	_, err := buildTLSFiles(tlsConfig("host=h password='s3cret", "sslmode", "require"), "", noEnv)
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrInvalidConfig))
	assert.Contains(t, err.Error(), "POSTGRES_URL")
	assert.Contains(t, err.Error(), "no closing quote")
	assert.NotContains(t, err.Error(), "s3cret", "a string that does not parse is not quoted")
}
