//go:build tools

// Package tools pins the Traefik command for `go mod tidy`; it is never compiled.
package tools

import (
	_ "github.com/traefik/traefik/v3/cmd/traefik"
)
