//go:build unix

package host

import (
	"sync"
	"syscall"

	"github.com/tetratelabs/wazero/experimental"
)

// mmapAllocator backs each instance's linear memory with its own anonymous
// mapping: the whole maximum is reserved up front (no access, no swap
// reservation) and made accessible as the guest grows it. Growing never
// copies (wazero's default appends to a Go slice, copying the whole memory
// in one non-preemptible memmove per growth).
//
// When an instance is closed its memory is cleared, in pieces the Go
// scheduler can preempt between, and the mapping kept for the next instance
// (up to poolBytes of cleared pages in all): a session creates an instance
// per step, and pages the kernel has to fault in afresh cost far more than
// clearing the few megabytes a step touches. Larger memories are unmapped.
// Either way no guest byte outlives its instance.
type mmapAllocator struct{}

const poolBytes = 64 << 20

var pool struct {
	sync.Mutex
	free  []*mmapMemory
	bytes uint64 // accessible bytes held in free
}

func (mmapAllocator) Allocate(_, max uint64) experimental.LinearMemory {
	pool.Lock()
	for i := len(pool.free) - 1; i >= 0; i-- {
		if m := pool.free[i]; uint64(len(m.b)) == max {
			pool.free = append(pool.free[:i], pool.free[i+1:]...)
			pool.bytes -= m.size
			pool.Unlock()
			return m
		}
	}
	pool.Unlock()
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
	size uint64 // bytes made accessible (the rest is PROT_NONE)
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

func (m *mmapMemory) Free() {
	if m.b == nil {
		return
	}
	pool.Lock()
	keep := pool.bytes+m.size <= poolBytes
	if keep {
		pool.bytes += m.size // reserved now, so concurrent Frees respect the bound
	}
	pool.Unlock()
	if !keep {
		_ = syscall.Munmap(m.b)
		m.b = nil
		return
	}
	clearInPieces(m.b[:m.size])
	pool.Lock()
	pool.free = append(pool.free, m)
	pool.Unlock()
}

// clearInPieces zeroes b a megabyte at a time: a preemption point between
// pieces.
func clearInPieces(b []byte) {
	for len(b) > 0 {
		k := min(len(b), 1<<20)
		clear(b[:k])
		b = b[k:]
	}
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
	clearInPieces(m.b)
	m.b = nil
}

// memoryAllocator is the allocator instances use; nil means wazero's own.
var memoryAllocator experimental.MemoryAllocator = mmapAllocator{}

// unmapsOnClose: closing an instance clears or unmaps its memory, so the
// host need not clear it first.
const unmapsOnClose = true
