// A plugin that implements the exports itself and returns garbage results.
package main

import "unsafe"

var (
	buf     = make([]byte, 1<<16)
	garbage = []byte("\x07\xff\xffthis is not a result blob at all, just bytes")
)

//go:wasmexport qkd_abi_version
func abiVersion() int32 { return 1 }

//go:wasmexport qkd_alloc
func alloc(n int32) int32 { return int32(uintptr(unsafe.Pointer(&buf[0]))) }

//go:wasmexport qkd_new
func newInst(role, pp, pl, sp, sl int32) int32 { return 0 }

//go:wasmexport qkd_step
func step(ip, il, pp, pl, flags int32) int32 { return 0 }

//go:wasmexport qkd_result_ptr
func resultPtr() int32 { return int32(uintptr(unsafe.Pointer(&garbage[0]))) }

//go:wasmexport qkd_result_len
func resultLen() int32 { return int32(len(garbage)) }

func main() {}
