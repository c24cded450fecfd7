//go:build tools

// Package tools pins Flux's kustomize-controller command for `go mod tidy -e`; it is never compiled.
package tools

import (
	_ "github.com/fluxcd/kustomize-controller"
)
