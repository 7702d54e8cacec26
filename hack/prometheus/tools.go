//go:build tools

// Pins the prometheus command in this module's requirements.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
