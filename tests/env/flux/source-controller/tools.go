//go:build tools

// Package tools pins Flux's source-controller command for `go mod tidy -e`; it is never compiled.
package tools

import (
	_ "github.com/fluxcd/source-controller"
)
