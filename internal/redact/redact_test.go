package redact

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestConnString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"postgres://u:pw@h:5432/db", "postgres://u:xxxxx@h:5432/db"},
		{"postgresql://u@h/db", "postgresql://u@h/db"},
		{"postgresql://u:@h/db", "postgresql://u:xxxxx@h/db"},
		{"postgresql://u:p%40ss@h1:1,h2:2/db?sslmode=require", "postgresql://u:xxxxx@h1:1,h2:2/db?sslmode=require"},
		{"postgresql://h/db?password=pw&sslmode=disable", "postgresql://h/db?password=xxxxx&sslmode=disable"},
		{"postgresql://h/db?sslpassword=pw", "postgresql://h/db?sslpassword=xxxxx"},
		{"postgresql+srv://u:pw@name.example.com/db", "postgresql+srv://u:xxxxx@name.example.com/db"},
		{"aws+srv://u:pw@svc.ns/db", "aws+srv://u:xxxxx@svc.ns/db"},
		{"host=h password=pw dbname=d", "host=h password=xxxxx dbname=d"},
		{"host=h password = pw dbname=d", "host=h password=xxxxx dbname=d"},
		{"host=h password='p w\\'x' dbname=d", "host=h password=xxxxx dbname=d"},
		{"host=h PASSWORD=pw", "host=h PASSWORD=xxxxx"},
		{"postgresql://u:pw@h:notaport/db", "postgresql://u:xxxxx@h:notaport/db"},
		{"postgresql://u:pw@h:bad/db?password=pw2", "postgresql://u:xxxxx@h:bad/db?password=xxxxx"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			assert.Equal(t, tt.want, ConnString(tt.in))
		})
	}
}

func TestPassword(t *testing.T) {
	assert.Equal(t, "p@ss", Password("postgresql://u:p%40ss@h/db"))
	assert.Equal(t, "pw2", Password("postgresql://u@h/db?password=pw2"))
	assert.Equal(t, "", Password("postgresql://u@h/db"))
	assert.Equal(t, "pw", Password("host=h password=pw"))
	assert.Equal(t, "p w'x", Password(`host=h password='p w\'x'`))
	assert.Equal(t, "", Password("host=h"))
}

func TestError(t *testing.T) {
	base := errors.New("dial postgres://u:hunter%2022@h/db failed, pw hunter 22 and hunter+22")
	err := Error(fmt.Errorf("wrapped: %w", base), "hunter 22", "")
	assert.Equal(t, "wrapped: dial postgres://u:xxxxx@h/db failed, pw xxxxx and xxxxx", err.Error())
	assert.ErrorIs(t, err, base)
	assert.Nil(t, Error(nil, "x"))
	assert.Same(t, base, Error(base))
	assert.Same(t, base, Error(base, ""))
}
