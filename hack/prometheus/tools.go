//go:build tools

// Pins the prometheus and promtool commands in this module's requirements.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
