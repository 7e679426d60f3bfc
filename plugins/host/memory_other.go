//go:build !unix

package host

import "github.com/tetratelabs/wazero/experimental"

// memoryAllocator is nil: wazero's own allocator (a Go slice).
var memoryAllocator experimental.MemoryAllocator

// unmapsOnClose is false: the host clears guest memory before closing.
const unmapsOnClose = false
