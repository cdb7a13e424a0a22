//go:build readme

// Package cloud is the module in which README.md's snippets for AWS RDS IAM
// and Cloud SQL are compiled (see readme_test.go's module directive): it
// requires the cloud SDKs that sprocketspg itself does not depend on. This
// file keeps them required when go mod tidy runs here; nothing builds it.
package cloud

import (
	_ "cloud.google.com/go/cloudsqlconn"
	_ "github.com/aws/aws-sdk-go-v2/config"
	_ "github.com/aws/aws-sdk-go-v2/feature/rds/auth"
	_ "github.com/jackc/pgx/v5/pgxpool"
	_ "go.uber.org/fx"

	_ "github.com/sprockets/sprocketspg"
)
