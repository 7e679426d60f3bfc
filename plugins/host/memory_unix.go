//go:build unix

package host

import (
	"syscall"

	"github.com/tetratelabs/wazero/experimental"
)

// mmapAllocator backs each instance's linear memory with its own anonymous
// mapping: the whole maximum is reserved up front (no access, no swap
// reservation) and made accessible as the guest grows it. Growing never
// copies (wazero's default appends to a Go slice, copying the whole memory
// in one non-preemptible memmove per growth), and Free unmaps the memory, so
// no guest byte stays in the process after an instance is closed: the kernel
// zero-fills pages before it hands them out again.
type mmapAllocator struct{}

func (mmapAllocator) Allocate(_, max uint64) experimental.LinearMemory {
	b, err := syscall.Mmap(-1, 0, int(max), syscall.PROT_NONE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		// No address space for the reservation (or max is 0): a Go slice,
		// cleared before it is dropped.
		return &sliceMemory{}
	}
	return &mmapMemory{b: b}
}

type mmapMemory struct {
	b    []byte
	size uint64 // bytes made accessible
}

func (m *mmapMemory) Reallocate(size uint64) []byte {
	if size > uint64(len(m.b)) {
		return nil
	}
	if size == 0 {
		return []byte{}
	}
	if size > m.size {
		if err := syscall.Mprotect(m.b[m.size:size], syscall.PROT_READ|syscall.PROT_WRITE); err != nil {
			return nil
		}
		m.size = size
	}
	return m.b[:size:size]
}

// sliceMemory is the fallback: a Go slice grown by copying.
type sliceMemory struct{ b []byte }

func (m *sliceMemory) Reallocate(size uint64) []byte {
	if n := int(size) - len(m.b); n > 0 {
		m.b = append(m.b, make([]byte, n)...)
	}
	return m.b[:size]
}

func (m *sliceMemory) Free() {
	for len(m.b) > 0 { // in 1 MiB pieces: a preemption point between each
		k := min(len(m.b), 1<<20)
		clear(m.b[:k])
		m.b = m.b[k:]
	}
}

func (m *mmapMemory) Free() {
	if m.b != nil {
		_ = syscall.Munmap(m.b)
		m.b = nil
	}
}

// memoryAllocator is the allocator instances use; nil means wazero's own.
var memoryAllocator experimental.MemoryAllocator = mmapAllocator{}

// unmapsOnClose: closing an instance returns its memory to the kernel, so
// the host need not clear it first.
const unmapsOnClose = true
