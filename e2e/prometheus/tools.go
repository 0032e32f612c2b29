//go:build tools

// Package tools records the prometheus and promtool commands built by
// e2e/build-prometheus.sh so that `go mod tidy` keeps their dependencies in
// go.sum. Nothing here is linked into the operator.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
