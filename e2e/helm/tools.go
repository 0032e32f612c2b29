//go:build tools

// Package tools records the helm command built by e2e/build-helm.sh so that
// `go mod tidy` keeps its dependencies in go.sum. Nothing here is linked into
// the operator.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
