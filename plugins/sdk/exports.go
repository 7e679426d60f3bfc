//go:build wasip1

package sdk

import "unsafe"

//go:wasmexport qkd_abi_version
func qkdABIVersion() int32 { return 1 }

//go:wasmexport qkd_alloc
func qkdAlloc(size int32) int32 {
	b := alloc(size)
	return int32(uintptr(unsafe.Pointer(unsafe.SliceData(b[:cap(b)]))))
}

func view(ptr, n int32) []byte {
	if n <= 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n)
}

//go:wasmexport qkd_new
func qkdNew(role, paramsPtr, paramsLen, seedPtr, seedLen int32) int32 {
	return newInstance(role, view(paramsPtr, paramsLen), view(seedPtr, seedLen))
}

//go:wasmexport qkd_step
func qkdStep(inPtr, inLen, peerPtr, peerLen, flags int32) int32 {
	return step(view(inPtr, inLen), view(peerPtr, peerLen), flags&1 == 1)
}

//go:wasmexport qkd_result_ptr
func qkdResultPtr() int32 {
	if len(result) == 0 {
		return 0
	}
	return int32(uintptr(unsafe.Pointer(unsafe.SliceData(result))))
}

//go:wasmexport qkd_result_len
func qkdResultLen() int32 { return int32(len(result)) }
