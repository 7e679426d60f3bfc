//go:build !unix

package devstream

import "time"

// cpuTime is not measured here.
func cpuTime() time.Duration { return 0 }
